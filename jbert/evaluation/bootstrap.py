"""Paired bootstrap intervals over queries for the difference between two retrieval systems.

Two systems scored on the same queries differ by `mean(a - b)` on each set; the macro figure
averages the sets, each weighing the same. A resample draws each set's queries with replacement
(as many as the set has), so the sets keep their sizes and weights, and the macro difference of
the drawn queries is one bootstrap value. Pairing (the same drawn queries for both systems) is
what makes the interval narrow where the systems agree on which queries are hard. The interval
is the percentile interval of `resamples` such values: a 95% interval that excludes 0 says
the difference would rarely vanish were the queries drawn again from the same population (the
corpus, the model and its training stay fixed: it says nothing about training noise).

Shapes: B resamples, Q queries of a set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclasses.dataclass(frozen=True)
class Interval:
    """The macro difference `a - b` on the queries as they are, and its bootstrap interval."""

    difference: float
    low: float
    high: float
    level: float
    resamples: int
    seed: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def resampled_differences(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *,
                          resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[B] macro-averaged differences `a - b` over `resamples` draws of each set's queries.

    `a[i]`, `b[i]`: per-query values of the two systems on set i, the same queries in the same
    order. The draws come from one `np.random.default_rng(seed)`, set after set, each set's
    [B, Q] indices in one call (so a loop over resamples drawing the same indices agrees)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same number (>= 1) of sets for both systems, got {len(a)} "
                         f"and {len(b)}")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be at least 1")
    rng = np.random.default_rng(seed)
    total_B = np.zeros(resamples)
    for i, (a_Q, b_Q) in enumerate(zip(a, b, strict=True)):
        if np.ndim(a_Q) != 1 or np.shape(a_Q) != np.shape(b_Q) or not len(a_Q):
            raise ValueError(f"set {i}: per-query values of shapes {np.shape(a_Q)} and "
                             f"{np.shape(b_Q)}; need the same non-empty [Q]")
        diff_Q = np.asarray(a_Q, np.float64) - np.asarray(b_Q, np.float64)
        idx_BQ = rng.integers(0, len(diff_Q), size=(resamples, len(diff_Q)))
        total_B += diff_Q[idx_BQ].mean(axis=1)
    return total_B / len(a)


def paired_bootstrap(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
                     ) -> Interval:
    """The macro difference `a - b` (mean over sets of the mean over queries) and its
    `level` percentile interval over `resamples` paired resamples of the queries."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    diffs_B = resampled_differences(a, b, resamples=resamples, seed=seed)
    observed = float(np.mean([np.mean(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                              for x, y in zip(a, b, strict=True)]))
    low, high = np.quantile(diffs_B, [(1 - level) / 2, (1 + level) / 2])
    return Interval(observed, float(low), float(high), level, resamples, seed)


def comparison_pairs(systems: Sequence[str], reference: str = "dense",
                     fallback: str = "bm25", own: Sequence[str] = ("dense", "bm25", "rrf",
                                                                   "linear")
                     ) -> list[tuple[str, str]]:
    """The comparisons that matter among `systems`: `reference` (the model) against every other
    system; without it, every system not in `own` (the baselines) against `fallback`."""
    if reference in systems:
        return [(reference, s) for s in systems if s != reference]
    if fallback in systems:
        return [(s, fallback) for s in systems if s not in own]
    return []


def compare(per_query: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
            pairs: Sequence[tuple[str, str]], metric: str = "ndcg@10", *,
            resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = 0.95
            ) -> dict[str, Interval]:
    """{"a - b": interval of the macro `metric` difference a - b} for each pair (a, b).
    `per_query[set][system][metric]` is the [Q] array of a system on a set
    (`SetEvaluator.results(..., per_query=True)["per_query"]`); every set must hold both
    systems. One `seed` for all: each comparison draws the same queries."""
    sets = list(per_query.values())
    out = {}
    for a, b in pairs:
        missing = [n for n in (a, b) if not sets or any(n not in s for s in sets)]
        if missing:
            raise KeyError(f"system(s) {missing} not scored on every set")
        out[f"{a} - {b}"] = paired_bootstrap([s[a][metric] for s in sets],
                                             [s[b][metric] for s in sets],
                                             resamples=resamples, seed=seed, level=level)
    return out


def report_intervals(per_query: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
                     metric: str = "ndcg@10", *, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0, level: float = 0.95, reference: str = "dense"
                     ) -> dict | None:
    """A report's "intervals" entry: the `comparison_pairs` of the systems every set holds
    (`reference` against each other), each with its macro `metric` difference and interval;
    None when there is nothing to compare."""
    sets = list(per_query.values())
    systems = [s for s in (sets[0] if sets else ()) if all(s in r for r in sets)]
    pairs = comparison_pairs(systems, reference)
    if not pairs:
        return None
    found = compare(per_query, pairs, metric, resamples=resamples, seed=seed, level=level)
    return {"metric": metric, "level": level, "resamples": resamples, "seed": seed,
            "comparisons": {name: {"difference": i.difference, "low": i.low, "high": i.high}
                            for name, i in found.items()}}
