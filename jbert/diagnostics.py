"""Retrieval diagnostics for reports: per-language metrics and similarity statistics, built on
`jbert.evaluation` (same held-out set, same tie rule, same BM25).

Shapes: Q queries, N documents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jbert.evaluation import (
    BM25Index,
    embedding_scores,
    ranks_of_relevant,
    retrieval_metrics,
    retrieval_set,
)


@dataclasses.dataclass
class RetrievalReport:
    """`metrics` {system: {metric: value}}, `per_language` {language: {system: {metric}}},
    `counts` {language: queries}, and the model's cosine similarities split into positives
    [Q], negatives (a sample of the off-diagonal scores) and each query's hardest negative [Q]."""

    metrics: dict[str, dict[str, float]]
    per_language: dict[str, dict[str, dict[str, float]]]
    counts: dict[str, int]
    positive_sims: np.ndarray
    negative_sims: np.ndarray
    hardest_negative_sims: np.ndarray


def sample_pairs(pairs: Sequence[dict], n: int | None, seed: int = 0) -> list[dict]:
    """At most `n` pairs drawn at random (file order kept): pair files are grouped by language,
    so the first n would often be one language."""
    pairs = list(pairs)
    if n is None or n >= len(pairs):
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), n, replace=False))
    return [pairs[i] for i in keep]


def similarity_split(scores_QN: np.ndarray, relevant_Q: np.ndarray, max_negatives: int = 200_000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive [Q], negatives (at most `max_negatives`, sampled), hardest negative [Q])."""
    scores_QN = np.asarray(scores_QN, np.float64)
    q = np.arange(len(relevant_Q))
    positive_Q = scores_QN[q, relevant_Q]
    is_neg_QN = np.ones(scores_QN.shape, bool)
    is_neg_QN[q, relevant_Q] = False
    negatives = scores_QN[is_neg_QN]
    if len(negatives) > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
    hardest_Q = np.where(is_neg_QN, scores_QN, -np.inf).max(axis=1)
    return positive_Q, negatives, hardest_Q


def per_language_metrics(ranks_Q: np.ndarray, languages: Sequence[str]
                         ) -> dict[str, dict[str, float]]:
    """Retrieval metrics of the queries of each language (against the whole corpus)."""
    languages = np.asarray(languages)
    return {str(lang): retrieval_metrics(ranks_Q[languages == lang])
            for lang in sorted(set(languages.tolist()))}


def retrieval_report(config: Any, params: Any, tokenizer: Any, pairs: Sequence[dict], *,
                     max_pairs: int | None = None, max_query_length: int = 64,
                     max_doc_length: int = 256, bm25: bool = True,
                     model_name: str = "model") -> RetrievalReport:
    """Scores the held-out pairs with the encoder (and BM25) and gathers what the plots show."""
    pairs = list(pairs)[:max_pairs] if max_pairs else list(pairs)
    queries, corpus, relevant_Q = retrieval_set(pairs)
    languages = [p.get("language") or "unknown" for p in pairs]
    scores = {model_name: embedding_scores(config, params, tokenizer, queries, corpus,
                                           max_query_length=max_query_length,
                                           max_doc_length=max_doc_length)}
    if bm25:
        scores["BM25"] = BM25Index(corpus).scores(queries)
    ranks = {name: ranks_of_relevant(s, relevant_Q) for name, s in scores.items()}
    metrics = {name: retrieval_metrics(r) for name, r in ranks.items()}
    by_system = {name: per_language_metrics(r, languages) for name, r in ranks.items()}
    per_language = {lang: {name: by_system[name][lang] for name in ranks}
                    for lang in by_system[model_name]}
    counts = {lang: languages.count(lang) for lang in per_language}
    pos, neg, hardest = similarity_split(scores[model_name], relevant_Q)
    return RetrievalReport(metrics, per_language, counts, pos, neg, hardest)
