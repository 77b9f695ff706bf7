"""Retrieval sets in the BEIR layout, the one CoIR and CodeSearchNet-style sets ship in:

    corpus.jsonl      {"_id", "title"?, "text"} per document
    queries.jsonl     {"_id", "text"} per query
    qrels/<split>.tsv "query-id<TAB>corpus-id<TAB>score" with a header line

A query may have several relevant documents (score > 0). Our held-out docstring/code pairs
become one set per language (`pairs_to_sets`), so one evaluator serves both. `load_named_sets`
reads the user's own sets (`contrastive.eval_sets`), either layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jbert.data.jsonl import iter_jsonl
from jbert.errors import InputError


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    """Queries against a corpus with graded relevance: `qrels[query_id][doc_id] = score`."""

    name: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]

    def __post_init__(self):
        if len(self.doc_ids) != len(self.docs) or len(self.query_ids) != len(self.queries):
            raise ValueError(f"{self.name}: ids and texts differ in number")


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict]:
    rows = []
    for where, row in iter_jsonl(path):
        missing = [k for k in fields if not isinstance(row, dict) or k not in row]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}")
        rows.append(row)
    return rows


def load_beir(path: str | os.PathLike, split: str = "test", name: str | None = None
              ) -> RetrievalSet:
    """A BEIR-layout directory; queries without a relevant document in `qrels/<split>.tsv` are
    left out, as BEIR's evaluation does."""
    root = Path(path)
    for f in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / f).is_file():
            raise FileNotFoundError(f"{root}: no {f} (a BEIR-layout directory needs "
                                    f"corpus.jsonl, queries.jsonl and qrels/{split}.tsv)")
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    qrels_path = root / "qrels" / f"{split}.tsv"
    with open(qrels_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if n == 1 and len(cols) == 3 and not cols[2].lstrip("-").isdigit():
                continue  # the header
            if len(cols) != 3 or not cols[2].lstrip("-").isdigit():
                raise InputError(f"{qrels_path}:{n}: expected query-id, corpus-id, integer score")
            if int(cols[2]) > 0:
                qrels[cols[0]][cols[1]] = int(cols[2])
    corpus = _read_jsonl(root / "corpus.jsonl", ("_id", "text"))
    doc_ids = [str(r["_id"]) for r in corpus]
    # BEIR embeds "title text" when a title is given.
    docs = [(r.get("title") or "").strip() + " " + r["text"] if r.get("title") else r["text"]
            for r in corpus]
    known = set(doc_ids)
    unknown = sorted({d for rel in qrels.values() for d in rel} - known)
    if unknown:
        raise InputError(f"{qrels_path}: {len(unknown)} corpus-id(s) not in corpus.jsonl, "
                         f"e.g. {unknown[0]!r}")
    queries = [r for r in _read_jsonl(root / "queries.jsonl", ("_id", "text"))
               if str(r["_id"]) in qrels]
    return RetrievalSet(name or root.name, doc_ids, docs, [str(r["_id"]) for r in queries],
                        [r["text"] for r in queries], dict(qrels))


def write_beir(rs: RetrievalSet, path: str | os.PathLike, split: str = "test") -> Path:
    """Writes `rs` in the BEIR layout under `path` (created); returns it."""
    root = Path(path)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, text in zip(rs.doc_ids, rs.docs, strict=True):
            f.write(json.dumps({"_id": i, "title": "", "text": text}, ensure_ascii=False) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, text in zip(rs.query_ids, rs.queries, strict=True):
            f.write(json.dumps({"_id": i, "text": text}, ensure_ascii=False) + "\n")
    with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in rs.query_ids:
            for d, score in rs.qrels[q].items():
                f.write(f"{q}\t{d}\t{score}\n")
    return root


def pairs_to_sets(pairs: Sequence[dict], max_queries: int | None = None, seed: int = 0
                  ) -> list[RetrievalSet]:
    """One set per language (`pair["language"]`, else "all"): the corpus is every distinct
    positive of that language; a query is a distinct docstring, relevant to every positive it
    describes. `max_queries`: see `sample_queries`."""
    by_language: dict[str, list[dict]] = defaultdict(list)
    for p in pairs:
        by_language[p.get("language") or "all"].append(p)
    sets = []
    for lang in sorted(by_language):
        doc_index: dict[str, str] = {}
        query_index: dict[str, str] = {}
        qrels: dict[str, dict[str, int]] = defaultdict(dict)
        for p in by_language[lang]:
            d = doc_index.setdefault(p["positive"], f"d{len(doc_index)}")
            q = query_index.setdefault(p["query"], f"q{len(query_index)}")
            qrels[q][d] = 1
        rs = RetrievalSet(lang.lower(), list(doc_index.values()), list(doc_index),
                          list(query_index.values()), list(query_index), dict(qrels))
        sets.append(sample_queries(rs, max_queries, seed))
    return sets


def load_named_sets(spec: str, max_queries: int | None = None, seed: int = 0,
                    key: str = "contrastive.eval_sets") -> dict[str, list[RetrievalSet]]:
    """`"name=path,name=path"` -> {name: its retrieval sets}: a BEIR-layout directory is one
    set (named `name`), pairs (a jsonl file, or a directory with `test.jsonl`) are their test
    split as one set per language (`pairs_to_sets`). Bad entries raise `InputError` naming
    `key` and the entry."""
    from jbert.data.pair_batches import read_pair_file

    out: dict[str, list[RetrievalSet]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, path_text = (x.strip() for x in entry.partition("="))
        if not name or not path_text or "/" in name:
            raise InputError(f"{key}: {entry!r} is not name=path")
        if name in out:
            raise InputError(f"{key}: {entry!r}: the name {name!r} is given twice")
        path = Path(path_text).expanduser()
        if not path.exists():
            raise InputError(f"{key}: {entry!r}: {path} does not exist")
        beir_files = ("corpus.jsonl", "queries.jsonl", "qrels")
        try:
            if path.is_dir() and any((path / f).exists() for f in beir_files):
                sets = [sample_queries(load_beir(path, "test", name=name), max_queries, seed)]
            elif path.is_file() or (path / "test.jsonl").is_file():
                pairs = read_pair_file(path if path.is_file() else path / "test.jsonl")
                if not pairs:
                    raise InputError(f"{path}: no pairs")
                sets = pairs_to_sets(pairs, max_queries, seed)
            else:
                raise InputError(f"{path} is neither a BEIR-layout directory (corpus.jsonl, "
                                 "queries.jsonl, qrels/test.tsv) nor pairs (a jsonl file or a "
                                 "directory with test.jsonl)")
        except (InputError, FileNotFoundError, UnicodeDecodeError) as e:
            raise InputError(f"{key}: {entry!r}: {e}") from e
        out[name] = sets
    return out


def load_evaluation_sets(pairs: str | None = None, beir: Sequence[str] = (), split: str = "test",
                         max_queries: int | None = None) -> list[RetrievalSet]:
    """`python -m train.evaluate`'s sets: the `split` of `pairs` (a dir, jsonl file or hub name)
    as one set per language, else each `beir` dir as one set; `max_queries` per set. An empty
    source raises `InputError` naming its flag (`--pairs`, `--beir`) and path."""
    from jbert.data.hub import locate
    from jbert.data.pair_batches import load_pairs

    if pairs is not None:
        what = f"--pairs {pairs}"
        rows = load_pairs(locate(pairs, what, inside=f"{split}.jsonl"), split)
        if not rows:
            raise InputError(f"{what}: no pairs in split {split!r} (empty)")
        return pairs_to_sets(rows, max_queries)
    sets = [load_beir(d, split) for d in beir]
    for d, rs in zip(beir, sets, strict=True):
        if not rs.queries:
            raise InputError(f"--beir {d}: no queries with a relevant document in "
                             f"qrels/{split}.tsv")
    return [sample_queries(rs, max_queries) for rs in sets]


def sample_queries(rs: RetrievalSet, max_queries: int | None, seed: int = 0) -> RetrievalSet:
    """`rs` with at most `max_queries` of its queries (seeded draw, order kept) and its whole
    corpus, so sampling changes the spread of the estimate, not the task."""
    if max_queries is None or len(rs.queries) <= max_queries:
        return rs
    keep = np.sort(np.random.default_rng(seed).choice(len(rs.queries), max_queries,
                                                     replace=False))
    query_ids = [rs.query_ids[i] for i in keep]
    return dataclasses.replace(rs, query_ids=query_ids, queries=[rs.queries[i] for i in keep],
                               qrels={q: rs.qrels[q] for q in query_ids})
