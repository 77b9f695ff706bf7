"""Hard negatives for the contrastive stage: mined with a dense model from a rank window, or with
BM25 when there is no model yet; cached beside the pairs under a key of what produced them.

A mined negative is another pair's positive that the miner ranks high for the query. The
highest ranks hold many false negatives (code that does what the docstring says, written
elsewhere), so dense mining skips the first ranks (`rank_window`), drops candidates that score
above `margin` times the positive's score, and drops code equal to the positive once
whitespace is normalised. Shapes: Q queries, N documents, D embedding width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jbert.data.split import code_hash

CACHE_DIR = ".negatives"  # inside the pairs directory


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """What `dense_negatives` keeps: `negatives` per pair, drawn (seeded) from the documents
    ranked in [`rank_window[0]`, `rank_window[1]`) for the query, below `margin` times the
    positive's score."""

    negatives: int = 7
    rank_window: tuple[int, int] = (10, 100)
    margin: float = 0.95
    max_query_length: int = 64
    max_doc_length: int = 256
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.rank_window
        if not 0 <= lo < hi or hi - lo < self.negatives:
            raise ValueError(f"rank_window={self.rank_window}: need 0 <= start < end with at "
                             f"least negatives={self.negatives} ranks")


def dense_negatives(embedder: Any, pairs: Sequence[dict], cfg: MiningConfig,
                    chunk: int = 512) -> tuple[list[dict], dict[str, float]]:
    """Pairs with `negatives` mined by `embedder` (a `jbert.evaluation.embedder.Embedder`, its
    "query" / "document" prompts applied) over the positives of all `pairs`, and statistics of
    the mining."""
    docs = list(dict.fromkeys(p["positive"] for p in pairs))
    doc_index = {d: i for i, d in enumerate(docs)}
    doc_hash_N = [code_hash(d) for d in docs]
    # The model's own prompts (none for most): it ranks as it was trained to.
    d_ND = embedder.encode(docs, max_length=cfg.max_doc_length, batch_size=cfg.batch_size,
                           prompt=embedder.prompts.get("document", ""))
    q_QD = embedder.encode([p["query"] for p in pairs], max_length=cfg.max_query_length,
                           batch_size=cfg.batch_size, prompt=embedder.prompts.get("query", ""))
    rng = np.random.default_rng(cfg.seed)
    lo, hi = cfg.rank_window
    hi = min(hi, len(docs))
    out, dropped, short = [], {"same_code": 0, "above_margin": 0}, 0
    for start in range(0, len(pairs), chunk):
        s_qN = q_QD[start:start + chunk] @ d_ND.T
        top_qK = np.argsort(-s_qN, axis=1, kind="stable")[:, :hi]
        for r, top in enumerate(top_qK):
            pair = pairs[start + r]
            pos = doc_index[pair["positive"]]
            pos_score = s_qN[r, pos]
            candidates = []
            for j in top[lo:]:
                if j == pos or doc_hash_N[j] == doc_hash_N[pos]:
                    dropped["same_code"] += int(j != pos)
                elif s_qN[r, j] > cfg.margin * pos_score:
                    dropped["above_margin"] += 1
                else:
                    candidates.append(int(j))
            if len(candidates) < cfg.negatives:
                short += 1
            picked = rng.permutation(candidates)[:cfg.negatives] if candidates else []
            out.append({**pair, "negatives": [docs[j] for j in sorted(picked)]})
    stats = {"pairs": len(pairs), "documents": len(docs), "short": short,
             **{f"dropped_{k}": int(v) for k, v in dropped.items()}}
    return out, stats


def bm25_negatives(pairs: Sequence[dict], n: int) -> list[dict]:
    """Pairs with `negatives`: the n best BM25 matches for the query among the other pairs'
    positives. Pairs that already carry n negatives keep theirs."""
    from jbert.evaluation.retrieval import BM25Index

    corpus = [p["positive"] for p in pairs]
    need = [i for i, p in enumerate(pairs) if len(p.get("negatives") or ()) < n]
    out = [dict(p) for p in pairs]
    if not need:
        return out
    index = BM25Index(corpus)
    for start in range(0, len(need), 256):
        rows = need[start:start + 256]
        top_QK = index.top([pairs[i]["query"] for i in rows], n + 4)
        for i, top in zip(rows, top_QK, strict=True):
            picked = [corpus[j] for j in top if corpus[j] != pairs[i]["positive"]][:n]
            out[i]["negatives"] = picked
    return out


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def cached_bm25_negatives(pairs: Sequence[dict], n: int, source: str | os.PathLike
                          ) -> list[dict]:
    """`bm25_negatives`, kept in `<pairs dir>/.negatives/bm25-n<n>-<hash of the file>.jsonl`:
    a second run on the same pairs file reads them instead of mining again. Pairs that come
    from elsewhere (a hub name) are mined every time."""
    path = Path(source)
    file = path / "train.jsonl" if path.is_dir() else path
    if not file.is_file():
        return bm25_negatives(pairs, n)
    cache = file.parent / CACHE_DIR / f"bm25-n{n}-{_file_key(file)}.jsonl"
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
        if len(rows) == len(pairs):
            return [{**p, "negatives": negs} for p, negs in zip(pairs, rows, strict=True)]
    mined = bm25_negatives(pairs, n)
    cache.parent.mkdir(exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p["negatives"], ensure_ascii=False) + "\n"
                           for p in mined), encoding="utf-8")
    tmp.replace(cache)  # a killed run leaves no half-written cache
    return mined
