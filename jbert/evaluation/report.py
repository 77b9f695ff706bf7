"""A retrieval report (`train.evaluate`'s JSON): made from an encoder, baseline models and
retrieval sets (`retrieval_report`), and shown as lines a person reads: one row per system, one
column per set and the macro average, and the bootstrap intervals."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def retrieval_report(embedder: Any, sets: Sequence[Any], *,
                     baselines: Mapping[str, str | os.PathLike] | None = None, bm25: bool = True,
                     max_query_length: int = 64, max_doc_length: int = 256,
                     dims: Sequence[int] | None = None, resamples: int = 1000,
                     baseline_batch_size: int = 32,
                     baseline_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """`evaluate_retrieval`'s figures of `embedder` (an `Embedder` or None), BM25 and the
    hybrids, and of each sentence-transformers model in `baselines` ({name: folder}, run with
    its own settings, its embeddings kept under `baseline_cache`/name when given), with
    `"intervals"`: every paired bootstrap comparison `report_intervals` makes (of the model's
    own score: `dense`, or `dense+sparse` with a sparse head)."""
    from jbert.evaluation.bootstrap import report_intervals
    from jbert.evaluation.retrieval import DENSE_SPARSE, evaluate_retrieval
    from jbert.evaluation.sentence_models import baseline_scores

    result: dict[str, Any] = {}
    scores = {}
    if baselines:
        result["baselines"] = {}
        for name, path in baselines.items():
            scores[name], result["baselines"][name] = baseline_scores(
                path, sets, batch_size=baseline_batch_size,
                cache=Path(baseline_cache) / name if baseline_cache else None)
    if embedder is None and not bm25 and not baselines:
        return result
    result.update(evaluate_retrieval(embedder, sets, bm25=bm25,
                                     max_query_length=max_query_length,
                                     max_doc_length=max_doc_length, dims=dims,
                                     baselines=scores, per_query=True))
    # The model is its own score: the dense and sparse heads' sum when it has both.
    reference = DENSE_SPARSE if embedder is not None and embedder.has_sparse else "dense"
    intervals = report_intervals(result.pop("per_query"), resamples=resamples,
                                 reference=reference)
    if intervals:
        result["intervals"] = intervals
    return result


def summary_table(result: Mapping[str, Any], metric: str = "ndcg@10") -> str:
    """`metric` of every system (rows) on every set and macro-averaged (columns)."""
    systems = list(result.get("macro", {}))
    if not systems:
        return ""
    sets = list(result["sets"])
    columns = [*sets, "macro"]
    width = max(len(s) for s in [*systems, metric])
    lines = [f"{metric:<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for system in systems:
        values = [result["sets"][s].get(system, {}).get(metric) for s in sets]
        values.append(result["macro"][system][metric])
        lines.append(f"{system:<{width}}  " + "  ".join(
            f"{'-':>8}" if v is None else f"{v:8.4f}" for v in values))
    return "\n".join(lines)


def interval_lines(intervals: Mapping[str, Any]) -> list[str]:
    """One line per comparison of `intervals` (the report's "intervals" entry)."""
    if not intervals:
        return []
    head = (f"paired bootstrap over queries, macro {intervals['metric']}: difference "
            f"[{intervals['level']:.0%} interval], {intervals['resamples']} resamples, "
            f"seed {intervals['seed']}")
    rows = [f"  {name}: {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
            + ("" if c["low"] > 0 or c["high"] < 0 else "  (includes 0)")
            for name, c in intervals["comparisons"].items()]
    return [head, *rows]
