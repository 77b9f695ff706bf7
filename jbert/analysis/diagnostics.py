"""Retrieval diagnostics for reports: per-language metrics and similarity statistics, built on
`jbert.evaluation.retrieval` (same held-out set, same tie rule, same BM25).

Shapes: Q queries, N documents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jbert.evaluation.beir import RetrievalSet, pairs_to_sets
from jbert.evaluation.retrieval import DENSE_SPARSE, SPARSE, SYSTEMS, SetEvaluator


@dataclasses.dataclass
class RetrievalReport:
    """`metrics` {system: {metric: value}}, `per_language` {language: {system: {metric}}},
    `counts` {language: queries}, and the model's cosine similarities split into positives
    (every relevant pair), negatives (a sample of the other scores) and each query's hardest
    negative [Q]."""

    metrics: dict[str, dict[str, float]]
    per_language: dict[str, dict[str, dict[str, float]]]
    counts: dict[str, int]
    positive_sims: np.ndarray
    negative_sims: np.ndarray
    hardest_negative_sims: np.ndarray


def similarity_split(scores_QN: np.ndarray, rs: RetrievalSet, max_negatives: int = 200_000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive [relevant pairs], negatives (at most `max_negatives`, sampled), hardest negative
    [Q]) cosine similarities of one set's score matrix."""
    scores_QN = np.asarray(scores_QN, np.float64)
    doc_index = {d: j for j, d in enumerate(rs.doc_ids)}
    is_rel_QN = np.zeros(scores_QN.shape, bool)
    for i, q in enumerate(rs.query_ids):
        is_rel_QN[i, [doc_index[d] for d in rs.qrels[q]]] = True
    negatives = scores_QN[~is_rel_QN]
    if len(negatives) > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
    hardest_Q = np.where(is_rel_QN, -np.inf, scores_QN).max(axis=1)
    return scores_QN[is_rel_QN], negatives, hardest_Q


def retrieval_report(embedder: Any, pairs: Sequence[dict], *,
                     max_queries: int | None = None, max_query_length: int = 64,
                     max_doc_length: int = 256, bm25: bool = True,
                     model_name: str = "model") -> RetrievalReport:
    """Scores the held-out pairs (one set per language, `beir.pairs_to_sets`) with the
    encoder (an `Embedder`, e.g. `Embedder.from_pretrained(path)`, whose "query" and
    "document" prompts apply), BM25 and their fusion (and with a sparse head, the head and the
    model's own score), and gathers what the plots show; `metrics` are macro averages over the
    languages; the similarities are the dense cosines."""
    sets = pairs_to_sets(pairs, max_queries)
    evaluator = SetEvaluator(embedder.config, embedder.tokenizer, sets,
                             max_query_length=max_query_length, max_doc_length=max_doc_length,
                             bm25=bm25, query_prompt=embedder.prompts.get("query", ""),
                             doc_prompt=embedder.prompts.get("document", ""))
    evaluator.embedder.dense_scale = embedder.dense_scale
    dense, extra = evaluator.model_scores(evaluator.representations(embedder.model_params))
    names = {"dense": model_name, "bm25": "BM25", "rrf": "hybrid (RRF)",
             "linear": "hybrid (linear)", SPARSE: f"{model_name} (sparse head)",
             DENSE_SPARSE: f"{model_name} (dense + sparse)"}
    result = evaluator.results(dense, baselines=extra)
    metrics = {names[s]: m for s, m in result["macro"].items()}
    per_language = {lang: {names[s]: r[s] for s in (*SYSTEMS, *extra) if s in r}
                    for lang, r in result["sets"].items()}
    counts = {rs.name: len(rs.queries) for rs in sets}
    splits = [similarity_split(d, rs) for d, rs in zip(dense, sets, strict=True)]
    pos, neg, hardest = (np.concatenate(parts) for parts in zip(*splits, strict=True))
    return RetrievalReport(metrics, per_language, counts, pos, neg, hardest)
