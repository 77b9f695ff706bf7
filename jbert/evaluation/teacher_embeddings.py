"""A sentence-transformers teacher's embeddings of a pair split's texts, for distillation: the
writing side of `jbert.data.teacher`'s format (see there), `python -m train.teacher_embeddings`.

Every distinct query and every distinct document text (positives and `negatives` together) is
embedded once, stripped (the text its key is made of), after the prompt of its side, truncated
at the side's max length (default: the teacher's own `max_seq_length`), L2-normalised, and
stored in float16.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jbert.data.atomic import atomic_dir, refuse_existing
from jbert.data.teacher import CONFIG_FILE, FORMAT, WEIGHTS_FILE, text_key, text_keys
from jbert.evaluation.sentence_models import DEFAULT_BATCH_SIZE, encode, load_model, max_length


def distinct_texts(texts: Iterable[str]) -> list[str]:
    """The stripped texts, one per key, in order of first appearance."""
    seen: dict[bytes, str] = {}
    for text in texts:
        seen.setdefault(text_key(text), text.strip())
    return list(seen.values())


def pair_texts(pairs: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(distinct queries, distinct documents: positives and negatives) of `pairs`."""
    queries = distinct_texts(p["query"] for p in pairs)
    docs = distinct_texts(t for p in pairs for t in (p["positive"], *(p.get("negatives") or ())))
    return queries, docs


def write_teacher(out: str | os.PathLike, model: Any, pairs: Sequence[dict], *,
                  teacher: str, pairs_name: str, split: str = "train",
                  max_query_length: int | None = None, max_doc_length: int | None = None,
                  query_prompt: str = "", doc_prompt: str = "",
                  batch_size: int = DEFAULT_BATCH_SIZE, overwrite: bool = False) -> Path:
    """Embeds `pairs`' texts with `model` (a loaded SentenceTransformer) and writes the teacher
    folder `out` whole or not at all. A teacher already in `out` is refused (FileExistsError,
    before any work) unless `overwrite`. `teacher` and `pairs_name` are recorded in
    teacher.json as given."""
    refuse_existing(out, f"--out {out}", overwrite, entries=(CONFIG_FILE, WEIGHTS_FILE))
    queries, docs = pair_texts(pairs)
    with max_length(model, max_query_length):
        query_QD = encode(model, queries, batch_size=batch_size, prompt=query_prompt)
    with max_length(model, max_doc_length):
        doc_ND = encode(model, docs, batch_size=batch_size, prompt=doc_prompt)
    meta = {"format": FORMAT, "teacher": teacher, "pairs": pairs_name, "split": split,
            "queries": len(queries), "documents": len(docs), "dim": int(query_QD.shape[1]),
            "query_prompt": query_prompt, "doc_prompt": doc_prompt,
            "max_query_length": max_query_length, "max_doc_length": max_doc_length}
    arrays = {"query_QD": query_QD.astype(np.float16), "query_key_Q20": text_keys(queries),
              "doc_ND": doc_ND.astype(np.float16), "doc_key_N20": text_keys(docs)}
    from safetensors.numpy import save_file

    with atomic_dir(out, owned=lambda name: name in (CONFIG_FILE, WEIGHTS_FILE)) as tmp:
        save_file(arrays, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return Path(out)


def embed_pairs(teacher: str | os.PathLike, pairs: Sequence[dict], out: str | os.PathLike,
                **kwargs: Any) -> Path:
    """`write_teacher` with the sentence-transformers folder at `teacher`."""
    return write_teacher(out, load_model(teacher), pairs, teacher=str(teacher), **kwargs)
