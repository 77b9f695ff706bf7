"""Figures for the notebooks and reports: training curves, retrieval bars, similarity histograms,
length extrapolation. Each function returns a matplotlib `Figure` (built without pyplot, so no
global state and no display backend); `save` writes it as a PNG.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jbert.errors import InputError
from jbert.evaluation.retrieval import IR_METRICS

# Training-curve panels: (title, y label, [(key, line style)]); a panel is drawn when any key is
# in the logs. Eval and BM25 lines are dashed so the legend reads "train vs eval".
CURVE_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Loss", "loss (nats per prediction)", (("loss", "-"), ("eval_loss", "--"))),
    ("Accuracy", "accuracy (fraction correct)", (("accuracy", "-"), ("eval_accuracy", "--"))),
    ("Retrieval nDCG@10 (held-out, macro over languages)", "nDCG@10",
     (("retrieval_ndcg@10", "-"), ("bm25_ndcg@10", "--"), ("rrf_ndcg@10", ":"),
      ("dense+sparse_ndcg@10", "-."))),
    ("Embedding similarity (train batches)", "cosine similarity",
     (("pos_sim", "-"), ("neg_sim", "--"), ("hardest_neg_sim", ":"))),
    ("Throughput", "tokens / s", (("tokens_per_s", "-"),)),
    ("Learning rate", "learning rate", (("learning_rate", "-"),)),
)


def load_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl` (a run dir or the file itself). A last line cut
    short (a run writing it, or killed mid-write) is left out; a bad line before it is an
    `InputError` naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    lines = path.read_bytes().splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            if line.strip():
                records.append(json.loads(line))
        except ValueError:  # also UnicodeDecodeError
            if n < len(lines):
                raise InputError(f"{path}:{n}: not a JSON record") from None
    return records


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    steps, values = zip(*pts, strict=True) if pts else ((), ())
    return np.asarray(steps), np.asarray(values, np.float64)


def run_label(path: str | Path) -> str:
    """A run's name: its directory's (given the directory or its metrics.jsonl)."""
    path = Path(path)
    return (path.parent if path.name == "metrics.jsonl" else path).name


def _panels(n: int) -> tuple[Figure, list]:
    """A figure of `n` panels, two to a row (an unused last cell hidden), and their axes."""
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.0 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _plot_series(ax, records: Sequence[dict], key: str, style: str, colour: str,
                 label: str) -> None:
    """`key` of the records against their step; sparse series (evals) get markers."""
    steps, values = _series(records, key)
    if len(steps):
        ax.plot(steps, values, style, color=colour, label=label,
                marker="o" if len(steps) < 12 else None, markersize=3)


def training_curves(metrics_jsonl_paths: Sequence[str | Path] | Mapping[str, str | Path],
                    panels: Sequence[str] | None = None) -> Figure:
    """One panel per logged quantity (loss, accuracy, retrieval, similarity, throughput, LR),
    every run in its own colour; pass a {label: path} mapping to name the runs."""
    if not isinstance(metrics_jsonl_paths, Mapping):
        metrics_jsonl_paths = {run_label(p): p for p in metrics_jsonl_paths}
    runs = {label: load_metrics(p) for label, p in metrics_jsonl_paths.items()}
    chosen = [p for p in CURVE_PANELS if (panels is None or p[0] in panels)
              and any(len(_series(r, k)[0]) for r in runs.values() for k, _ in p[2])]
    if not chosen:
        raise ValueError(f"no known metric in {list(metrics_jsonl_paths.values())}")
    fig, axes = _panels(len(chosen))
    colours = {label: f"C{i}" for i, label in enumerate(runs)}
    for ax, (title, ylabel, keys) in zip(axes, chosen, strict=True):
        for label, records in runs.items():
            for key, style in keys:
                _plot_series(ax, records, key, style, colours[label],
                             key if len(runs) == 1 else f"{label}: {key}")
        ax.set(title=title, xlabel="training step", ylabel=ylabel)
        if title == "Throughput" or title == "Learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Training curves: " + ", ".join(runs))
    return fig


def metric_curves(runs: Mapping[str, Sequence[dict]], metrics: Sequence[str],
                  title: str | None = None) -> Figure:
    """One panel per metric (a key of the records), one line per run ({name: records}), each
    run in the same colour in every panel: several runs compared (`jbert.analysis.compare`)."""
    fig, axes = _panels(len(metrics))
    for ax, key in zip(axes, metrics, strict=True):
        for i, (name, records) in enumerate(runs.items()):
            _plot_series(ax, records, key, "-", f"C{i}", name)
        ax.set(title=key, xlabel="training step", ylabel=key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title or "Runs compared: " + ", ".join(runs))
    return fig


def _grouped_bars(ax, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name,
                      color=f"C{i}")
        ax.bar_label(bars, fmt="%.2f", fontsize="small", padding=2)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.08)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def retrieval_bars(results: Mapping[str, Mapping[str, float]],
                   metrics: Sequence[str] = IR_METRICS, title: str | None = None) -> Figure:
    """Grouped bars: one group per metric, one bar per system ({system: {metric: value}})."""
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    _grouped_bars(ax, list(metrics),
                  {s: [float(m.get(k, np.nan)) for k in metrics] for s, m in results.items()})
    ax.set(xlabel="metric (higher is better)", ylabel="score (0 to 1)",
           title=title or "Code retrieval on held-out docstring/code pairs")
    return fig


def per_language_bars(per_language: Mapping[str, Mapping[str, Mapping[str, float]]],
                      metric: str = "ndcg@10", counts: Mapping[str, int] | None = None,
                      title: str | None = None) -> Figure:
    """Bars of one metric per language ({language: {system: {metric: value}}}), each system a
    colour; `counts` ({language: queries}) goes into the tick labels."""
    languages = sorted(per_language)
    systems = list(dict.fromkeys(s for lang in languages for s in per_language[lang]))
    labels = [f"{lang}\n(n={counts[lang]})" if counts and lang in counts else lang
              for lang in languages]
    fig = Figure(figsize=(max(5.0, 1.3 * len(languages) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    _grouped_bars(ax, labels, {s: [float(per_language[lang].get(s, {}).get(metric, np.nan))
                                   for lang in languages] for s in systems})
    ax.set(xlabel="language of the query's code (n = queries)", ylabel=f"{metric} (0 to 1)",
           title=title or f"{metric.upper()} by language")
    return fig


def similarity_histogram(pos: Sequence[float], neg: Sequence[float],
                         hardest: Sequence[float] | None = None, bins: int = 50,
                         title: str | None = None) -> Figure:
    """Density histograms of query-document cosine similarities: the relevant pairs against the
    other documents (and, given `hardest`, each query's best-scoring wrong document)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    groups = [("positive (query, its code)", pos, "C2"), ("negative (query, other code)", neg,
                                                          "C3")]
    if hardest is not None:
        groups.append(("hardest negative per query", np.asarray(hardest, np.float64), "C1"))
    everything = np.concatenate([g[1] for g in groups])
    edges = np.linspace(everything.min(), everything.max() + 1e-6, bins + 1)
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, values, colour in groups:
        ax.hist(values, edges, density=True, alpha=0.45, color=colour,
                label=f"{name}: n={len(values)}, mean {values.mean():.3f}")
        ax.axvline(values.mean(), color=colour, linestyle="--", linewidth=1)
    ax.set(xlabel="cosine similarity", ylabel="density (per unit similarity)",
           title=title or "Embedding-space diagnostics: positives vs negatives")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def length_curve(results: Mapping[int, Mapping[str, Any]] | Mapping[str, Mapping[int, Any]],
                 train_length: int | None = None, title: str | None = None) -> Figure:
    """Held-out MLM accuracy and loss against sequence length (log2 axis), from
    `jbert.analysis.extrapolation.mlm_accuracy_by_length`; several models as {label: results}.
    Blockwise-attention points are drawn hollow; `train_length` is marked; accuracy gets
    binomial standard-error bars from the `masked` counts."""
    first = next(iter(results.values()))
    if "accuracy" in first:
        results = {"held-out MLM": results}
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    for (ax, key, ylabel) in ((axes[0], "accuracy", "accuracy (fraction of masked tokens)"),
                              (axes[1], "loss", "loss (nats per masked token)")):
        for i, (label, per_length) in enumerate(results.items()):
            lengths = sorted(int(n) for n in per_length)
            values = [per_length[n][key] for n in lengths]
            if key == "accuracy" and all("masked" in per_length[n] for n in lengths):
                # One binomial standard error: how much of the wiggle is sampling noise.
                se = [math.sqrt(max(v * (1 - v), 0.0) / max(per_length[n]["masked"], 1))
                      for n, v in zip(lengths, values, strict=True)]
                ax.errorbar(lengths, values, yerr=se, fmt="-", color=f"C{i}", capsize=3,
                            label=f"{label} (bars: 1 std. error)")
            else:
                ax.plot(lengths, values, "-", color=f"C{i}", label=label)
            block = [n for n in lengths if per_length[n].get("attention_impl") == "blockwise"]
            dense = [n for n in lengths if n not in block]
            ax.plot(dense, [per_length[n][key] for n in dense], "o", color=f"C{i}",
                    label="dense attention" if i == 0 and dense else None)
            ax.plot(block, [per_length[n][key] for n in block], "o", mfc="white",
                    color=f"C{i}", label="blockwise attention" if i == 0 and block else None)
        if train_length:
            ax.axvline(train_length, color="grey", linestyle="--",
                       label=f"training length ({train_length})")
        if key == "accuracy":
            ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set(xlabel="sequence length (tokens, log scale)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_title("MLM accuracy vs length")
    axes[1].set_title("MLM loss vs length")
    fig.suptitle(title or "ALiBi length extrapolation on held-out documents")
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Writes `fig` as a PNG (parents created) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
