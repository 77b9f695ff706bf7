"""A teacher's embeddings of a pair split's texts, for distillation: the reading side.

`python -m train.teacher_embeddings` (`jbert.evaluation.teacher_embeddings`) writes a folder:

    teacher.json         {"format": "jbert-teacher/1", "teacher", "pairs", "split", "queries": NQ,
                          "documents": ND, "dim": D, "query_prompt", "doc_prompt",
                          "max_query_length", "max_doc_length"}
    teacher.safetensors  query_QD float16 [NQ, D], L2-normalised; query_key_Q20 uint8 [NQ, 20];
                         doc_ND float16 [ND, D]; doc_key_N20 uint8 [ND, 20]

A key is the SHA-1 digest of `text.strip().encode("utf-8")`: every distinct query has one row,
every distinct document text (positives and negatives together) one row, and readers look
texts up by key (`TeacherEmbeddings.queries(texts)`, `.docs(texts)`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jbert.errors import InputError

FORMAT = "jbert-teacher/1"
CONFIG_FILE = "teacher.json"
WEIGHTS_FILE = "teacher.safetensors"
KEY_BYTES = 20
CONFIG_FIELDS = ("format", "teacher", "pairs", "split", "queries", "documents", "dim",
                 "query_prompt", "doc_prompt", "max_query_length", "max_doc_length")


def text_key(text: str) -> bytes:
    """The 20-byte key a text is stored under: SHA-1 of the stripped text in UTF-8."""
    return hashlib.sha1(text.strip().encode("utf-8")).digest()


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """[N, 20] uint8 keys of `texts`."""
    joined = b"".join(text_key(t) for t in texts)
    return np.frombuffer(joined, np.uint8).reshape(-1, KEY_BYTES).copy()


@dataclasses.dataclass(frozen=True)
class TeacherEmbeddings:
    """A teacher folder in memory: `meta` is teacher.json, the arrays its safetensors."""

    path: Path
    meta: dict[str, Any]
    query_QD: np.ndarray
    doc_ND: np.ndarray
    query_rows: dict[bytes, int]
    doc_rows: dict[bytes, int]

    @property
    def dim(self) -> int:
        return int(self.query_QD.shape[1])

    def _lookup(self, texts: Sequence[str], rows: dict[bytes, int], table: np.ndarray,
                kind: str) -> np.ndarray:
        index = []
        for text in texts:
            row = rows.get(text_key(text))
            if row is None:
                shown = text.strip()[:80] + ("..." if len(text.strip()) > 80 else "")
                raise InputError(f"teacher {self.path}: no {kind} embedding for {shown!r} "
                                 f"(made from {self.meta.get('pairs')!r} split "
                                 f"{self.meta.get('split')!r}; embed these pairs again)")
            index.append(row)
        return table[np.asarray(index, np.int64)]

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] embeddings of these queries, float16 as stored; InputError naming
        the teacher folder and the first query it does not hold."""
        return self._lookup(texts, self.query_rows, self.query_QD, "query")

    def docs(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), D] float16 embeddings of these documents (positives or negatives)."""
        return self._lookup(texts, self.doc_rows, self.doc_ND, "document")


def _rows(keys_N20: np.ndarray) -> dict[bytes, int]:
    return {bytes(k): i for i, k in enumerate(keys_N20)}


def load_teacher(path: str | os.PathLike) -> TeacherEmbeddings:
    """Reads a teacher folder; anything missing or inconsistent is an InputError naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    root = Path(path)
    config_path, weights_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for f in (config_path, weights_path):
        if not f.is_file():
            raise InputError(f"teacher {root}: no {f.name} (python -m train.teacher_embeddings "
                             "writes it)")
    try:
        info = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{config_path}: not JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise InputError(f"{config_path}: format {found!r}, expected {FORMAT!r}")
    try:
        arrays = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise InputError(f"{weights_path}: not a readable safetensors file ({e})") from None
    want = {"query_QD": (info.get("queries"), info.get("dim")),
            "query_key_Q20": (info.get("queries"), KEY_BYTES),
            "doc_ND": (info.get("documents"), info.get("dim")),
            "doc_key_N20": (info.get("documents"), KEY_BYTES)}
    for name, shape in want.items():
        got = arrays.get(name)
        if got is None or got.shape != shape:
            raise InputError(f"{weights_path}: {name} has shape "
                             f"{None if got is None else got.shape}, teacher.json says {shape}")
    return TeacherEmbeddings(root, info, arrays["query_QD"], arrays["doc_ND"],
                             _rows(arrays["query_key_Q20"]), _rows(arrays["doc_key_N20"]))
