"""The demo's one-line verdict reads its interval, not just the two figures."""

import pytest

from jbert.tasks.demo import headline_line


@pytest.mark.parametrize("difference, low, high, words", [
    (0.03, 0.01, 0.05, "above BM25 by +0.030"),
    (-0.03, -0.05, -0.01, "below BM25 by -0.030"),
    (0.03, -0.01, 0.07, "within noise of BM25: +0.030"),
])
def test_headline_names_the_side_of_bm25_its_interval_is_on(difference, low, high, words):
    result = {"tuned": {"ndcg@10": 0.563}, "bm25": {"ndcg@10": 0.533}, "minutes": 9.5,
              "tuned_minus": {"bm25": {"difference": difference, "low": low, "high": high}}}
    line = headline_line(result)
    assert words in line
    assert f"[{low:+.3f}, {high:+.3f}]" in line and "0.563" in line and "0.533" in line


def test_headline_names_the_system_of_a_model_with_a_sparse_head():
    result = {"tuned_system": "dense+sparse", "tuned": {"ndcg@10": 0.700},
              "bm25": {"ndcg@10": 0.571}, "minutes": 11.0,
              "tuned_minus": {"bm25": {"difference": 0.129, "low": 0.1, "high": 0.16}}}
    assert "tuned model (dense+sparse) nDCG@10 0.700" in headline_line(result)
