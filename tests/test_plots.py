"""Figures carry titles, labelled axes and legends, and save as PNGs."""

import json

import numpy as np
import pytest

from jbert.analysis import plots


def _check(fig, tmp_path, name):
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert axes
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        assert ax.get_legend() is not None and ax.get_legend().get_texts()
    path = plots.save(fig, tmp_path / "sub" / f"{name}.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_training_curves_one_panel_per_logged_quantity(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 5.0 / s, "accuracy": 0.1 * s, "tokens_per_s": 1e3}
               for s in range(1, 6)] + [{"step": 5, "eval_loss": 1.5, "eval_accuracy": 0.3}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = plots.training_curves([run])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Loss", "Accuracy", "Throughput"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["loss", "eval_loss"]
    _check(fig, tmp_path, "curves")
    with pytest.raises(ValueError, match="no known metric"):
        (run / "empty.jsonl").write_text('{"step": 1, "other": 2}\n')
        plots.training_curves([run / "empty.jsonl"])


def test_bars_histogram_and_length_curve(tmp_path):
    metrics = {"model": {"mrr@10": 0.4, "ndcg@10": 0.5, "recall@1": 0.3, "recall@10": 0.7},
               "BM25": {"mrr@10": 0.6, "ndcg@10": 0.6, "recall@1": 0.5, "recall@10": 0.8}}
    _check(plots.retrieval_bars(metrics), tmp_path, "bars")
    fig = plots.per_language_bars({"Go": metrics, "Python": metrics}, counts={"Go": 3,
                                                                              "Python": 4})
    assert "n=3" in fig.axes[0].get_xticklabels()[0].get_text()
    _check(fig, tmp_path, "lang")
    rng = np.random.default_rng(0)
    _check(plots.similarity_histogram(rng.normal(0.6, 0.1, 50), rng.normal(0.1, 0.1, 500),
                                      rng.normal(0.4, 0.1, 50)), tmp_path, "hist")
    results = {n: {"loss": 3.0, "accuracy": 0.2, "masked": 100,
                   "attention_impl": "blockwise" if n > 256 else "reference"}
               for n in (128, 256, 512)}
    _check(plots.length_curve(results, train_length=128), tmp_path, "length")
