"""Code retrieval evaluation: each held-out query (a docstring) against the whole held-out corpus
(every held-out code snippet), scored by an embedding model or by BM25.

One relevant document per query (its own code). A query's rank counts the documents scoring at
least as high as its relevant one, so ties never flatter a scorer (BM25 gives many zeros).
Shapes: Q queries, N documents, D embedding width.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRIC_KS = (1, 10)


def ranks_of_relevant(scores_QN: np.ndarray, relevant_Q: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant document; ties count against it."""
    scores_QN = np.asarray(scores_QN, np.float64)
    relevant_Q = np.asarray(relevant_Q)
    target_Q1 = scores_QN[np.arange(len(relevant_Q)), relevant_Q][:, None]
    return np.sum(scores_QN >= target_Q1, axis=1)


def retrieval_metrics(ranks_Q: np.ndarray, k: int = 10,
                      recall_ks: Sequence[int] = METRIC_KS) -> dict[str, float]:
    """MRR@k, nDCG@k (one relevant document: 1 / log2(rank + 1)) and recall@k from ranks."""
    ranks_Q = np.asarray(ranks_Q, np.float64)
    hit_Q = ranks_Q <= k
    out = {f"mrr@{k}": float(np.mean(np.where(hit_Q, 1.0 / ranks_Q, 0.0))),
           f"ndcg@{k}": float(np.mean(np.where(hit_Q, 1.0 / np.log2(ranks_Q + 1.0), 0.0)))}
    out.update({f"recall@{r}": float(np.mean(ranks_Q <= r)) for r in recall_ks})
    return out


# What the tables and plots report of `retrieval_metrics`, in this order.
RETRIEVAL_METRICS = ("mrr@10", "ndcg@10", "recall@1", "recall@10")


def score_metrics(scores_QN: np.ndarray, relevant_Q: np.ndarray) -> dict[str, float]:
    return retrieval_metrics(ranks_of_relevant(scores_QN, relevant_Q))


# -- the held-out set ------------------------------------------------------------------------


def retrieval_set(pairs: Sequence[dict], max_pairs: int | None = None
                  ) -> tuple[list[str], list[str], np.ndarray]:
    """(queries, corpus, relevant index per query): the corpus is every distinct positive."""
    pairs = list(pairs)[:max_pairs] if max_pairs else list(pairs)
    corpus, index = [], {}
    relevant = []
    for p in pairs:
        doc = p["positive"]
        if doc not in index:
            index[doc] = len(corpus)
            corpus.append(doc)
        relevant.append(index[doc])
    return [p["query"] for p in pairs], corpus, np.asarray(relevant, np.int64)


# -- BM25 ------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z]+|\d+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def code_tokens(text: str) -> list[str]:
    """Lower-cased words with identifiers split too (`getHTTPResponse`, `read_file` -> parts),
    keeping the whole identifier as well: the usual BM25 setup for code search."""
    out = []
    for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\d+", text):
        parts = [m.lower() for w in _WORD.findall(ident) for m in _CAMEL.findall(w)]
        out.extend(parts)
        if len(parts) > 1:
            out.append(ident.lower())
    return out


class BM25Index:
    """BM25 (bm25s, Lucene variant, k1=1.5, b=0.75) over a corpus, with code tokenisation."""

    def __init__(self, corpus: Sequence[str]):
        import logging

        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index at DEBUG
        self.size = len(corpus)
        self._retriever = bm25s.BM25()
        self._retriever.index([code_tokens(t) or ["<empty>"] for t in corpus],
                              show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """[Q, N] BM25 scores."""
        out_QN = np.zeros((len(queries), self.size), np.float32)
        for i, q in enumerate(queries):
            out_QN[i] = self._retriever.get_scores(code_tokens(q))
        return out_QN

    def top(self, queries: Sequence[str], k: int) -> np.ndarray:
        """[Q, k] indices of the best-scoring documents, best first."""
        scores_QN = self.scores(queries)
        return np.argsort(-scores_QN, axis=1, kind="stable")[:, :k]


def bm25_metrics(queries: Sequence[str], corpus: Sequence[str],
                 relevant_Q: np.ndarray) -> dict[str, float]:
    return score_metrics(BM25Index(corpus).scores(queries), relevant_Q)


def bm25_hard_negatives(pairs: Sequence[dict], n: int) -> list[dict]:
    """Pairs with `negatives`: the n best BM25 matches for the query among the other pairs'
    positives. Pairs that already carry n negatives keep theirs."""
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


# -- embedding models ------------------------------------------------------------------------


def embedding_scores(config: Any, params: Any, tokenizer: Any, queries: Sequence[str],
                     corpus: Sequence[str], *, max_query_length: int = 64,
                     max_doc_length: int = 256, batch_size: int = 64) -> np.ndarray:
    """[Q, N] cosine similarities of mean-pooled, L2-normalised embeddings."""
    from jbert.embedder import Embedder

    embedder = Embedder(config, params, tokenizer,
                        max_length=max(max_query_length, max_doc_length))
    q_QD = embedder.encode(queries, max_length=max_query_length, batch_size=batch_size)
    d_ND = embedder.encode(corpus, max_length=max_doc_length, batch_size=batch_size)
    return q_QD @ d_ND.T


def evaluate_embeddings(config: Any, params: Any, tokenizer: Any, pairs: Sequence[dict], *,
                        max_pairs: int | None = None, max_query_length: int = 64,
                        max_doc_length: int = 256, bm25: bool = False) -> dict[str, float]:
    """Retrieval metrics of an encoder on held-out pairs (`bm25_*` keys too with `bm25`)."""
    queries, corpus, relevant_Q = retrieval_set(pairs, max_pairs)
    scores_QN = embedding_scores(config, params, tokenizer, queries, corpus,
                                 max_query_length=max_query_length, max_doc_length=max_doc_length)
    out = {"queries": float(len(queries)), "corpus": float(len(corpus)),
           **score_metrics(scores_QN, relevant_Q)}
    if bm25:
        out.update({f"bm25_{k}": v for k, v in bm25_metrics(queries, corpus, relevant_Q).items()})
    return out


def load_encoder(path: str | Path) -> tuple[Any, Any, Any]:
    """(model config, encoder params, tokenizer) of an HF export dir or a jbert run dir (its
    latest checkpoint, tokenizer from the run's data dir): the untuned MLM backbone or a tuned
    model, evaluated the same way."""
    from jbert import functional
    from jbert.data.tokenizer import load_tokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: neither an HF export (config.json, model.safetensors) "
                                "nor a jbert run directory (config.json, checkpoints/)")
    if not (path / "checkpoints").is_dir():
        from jbert.hf import load_pretrained

        config, params = load_pretrained(path, head="base")
        return config, params, load_tokenizer(path)
    from jbert.export import load_run_params, run_config

    config, params, _, _ = load_run_params(path)
    return config, functional.encoder_params(params), load_tokenizer(
        Path(run_config(path).data.dir) / "tokenizer")
