"""Paired bootstrap intervals over queries (jbert/evaluation/bootstrap.py)."""

import numpy as np
import pytest

from jbert.evaluation.bootstrap import (
    compare,
    comparison_pairs,
    paired_bootstrap,
    report_intervals,
    resampled_differences,
)


def _sets(seed=0, sizes=(40, 300, 7)):
    rng = np.random.default_rng(seed)
    return [rng.uniform(size=q) for q in sizes]


def _slow_reference(a, b, resamples, seed, level):
    """One resample at a time, drawing the same indices the vectorised version draws (set after
    set, each set's [B, Q] in one call), averaging in Python."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(x), size=(resamples, len(x))) for x in a]
    values = []
    for r in range(resamples):
        per_set = []
        for x, y, idx in zip(a, b, draws, strict=True):
            per_set.append(sum(x[i] - y[i] for i in idx[r]) / len(idx[r]))
        values.append(sum(per_set) / len(per_set))
    values = sorted(values)
    observed = sum(sum(x - y) / len(x) for x, y in zip(a, b, strict=True)) / len(a)
    return observed, np.quantile(values, [(1 - level) / 2, (1 + level) / 2])


def test_matches_a_slow_reference_loop():
    a, b = _sets(0), _sets(1)
    got = paired_bootstrap(a, b, resamples=200, seed=3, level=0.9)
    observed, (low, high) = _slow_reference(a, b, 200, 3, 0.9)
    assert got.difference == pytest.approx(observed, abs=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    assert got.level == 0.9 and got.resamples == 200 and got.seed == 3


def test_a_clearly_better_system_excludes_zero_and_identical_systems_include_it():
    b = _sets(0)
    better = [np.clip(x + 0.15, 0, 1) for x in b]
    interval = paired_bootstrap(better, b)
    assert interval.low > 0.05 and interval.excludes_zero()
    assert interval.low <= interval.difference <= interval.high
    same = paired_bootstrap(b, [x.copy() for x in b])
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.excludes_zero()
    # Two systems equally good on average, each better on other queries: 0 is inside.
    rng = np.random.default_rng(5)
    swings = [rng.normal(0, 0.2, len(x)) for x in b]
    swings = [d - d.mean() for d in swings]
    tie = paired_bootstrap([x + d for x, d in zip(b, swings, strict=True)], b)
    assert tie.difference == pytest.approx(0.0, abs=1e-12) and tie.low < 0 < tie.high


def test_pairing_narrows_the_interval_when_systems_agree_on_hard_queries():
    rng = np.random.default_rng(0)
    hardness = [rng.uniform(size=200) for _ in range(3)]
    a = [h + 0.02 for h in hardness]
    b = [h + rng.normal(0, 0.01, len(h)) for h in hardness]
    interval = paired_bootstrap(a, b)
    assert interval.excludes_zero() and interval.high - interval.low < 0.01


def test_deterministic_under_its_seed_and_sets_weigh_the_same():
    a, b = _sets(0), _sets(1)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)
    # The macro difference: each set's mean difference, averaged over sets, whatever their size.
    ones = [np.ones(1000), np.ones(10)]
    zeros = [np.zeros(1000), np.zeros(10)]
    ones[1][:] = 0.0  # set 2: no difference
    assert paired_bootstrap(ones, zeros).difference == pytest.approx(0.5)
    assert np.allclose(resampled_differences(ones, zeros, resamples=50), 0.5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap([np.ones(3)], [np.ones(3), np.ones(3)])
    with pytest.raises(ValueError, match="set 0"):
        paired_bootstrap([np.ones(3)], [np.ones(4)])
    with pytest.raises(ValueError, match="set 1"):
        paired_bootstrap([np.ones(3), np.ones(0)], [np.ones(3), np.ones(0)])


def test_the_comparisons_that_matter():
    assert comparison_pairs(["dense", "bm25", "rrf", "linear", "minilm"]) == [
        ("dense", "bm25"), ("dense", "rrf"), ("dense", "linear"), ("dense", "minilm")]
    assert comparison_pairs(["bm25", "minilm", "mpnet"]) == [("minilm", "bm25"),
                                                             ("mpnet", "bm25")]
    assert comparison_pairs(["minilm"]) == []
    rng = np.random.default_rng(0)
    per_query = {name: {"dense": {"ndcg@10": rng.uniform(size=q) + 0.3},
                        "bm25": {"ndcg@10": rng.uniform(size=q)}}
                 for name, q in (("go", 50), ("python", 80))}
    found = compare(per_query, [("dense", "bm25")])
    want = paired_bootstrap([per_query[s]["dense"]["ndcg@10"] for s in ("go", "python")],
                            [per_query[s]["bm25"]["ndcg@10"] for s in ("go", "python")])
    assert found == {"dense - bm25": want} and want.excludes_zero()
    report = report_intervals(per_query, resamples=100)
    assert report["comparisons"].keys() == {"dense - bm25"}
    assert report["resamples"] == 100 and report["metric"] == "ndcg@10"
    assert report_intervals({"go": {"bm25": {"ndcg@10": np.ones(3)}}}) is None
    del per_query["python"]["bm25"]
    with pytest.raises(KeyError, match="bm25"):
        compare(per_query, [("dense", "bm25")])
