"""Training runs side by side (`python -m train.compare`): their curves on one figure, one panel
per metric and one line per run, and their final evals as a markdown table.

A run is a training workdir and its `metrics.jsonl`. Its final eval is the last eval record it
logged: the MLM trainer's `eval_loss` / `eval_accuracy`, the contrastive trainer's retrieval
figures (`retrieval_ndcg@10`, macro over the held-out languages; `bm25_...`, `rrf_...`; per
language `python/retrieval_ndcg@10`; per eval set `mine/...`; per Matryoshka size `dim128/...`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from jbert.analysis.plots import load_metrics, metric_curves, run_label
from jbert.errors import InputError
from jbert.evaluation.retrieval import IR_METRICS
from jbert.training.config import did_you_mean

# The panels drawn when none are named: those any of the runs logged.
CURVES = ("loss", "eval_loss", "retrieval_ndcg@10")
# The table's columns, those any final eval has; `--metrics` may name more.
TABLE = ("eval_loss", "eval_accuracy", "retrieval_ndcg@10", "retrieval_mrr@10",
         "retrieval_recall@1", "retrieval_recall@10", "rrf_ndcg@10", "bm25_ndcg@10",
         "sparse_ndcg@10", "dense+sparse_ndcg@10")

Records = list[dict[str, Any]]


def load_runs(run_dirs: Sequence[str | Path]) -> dict[str, Records]:
    """{name: records} of each run dir's `metrics.jsonl`, named after the directory (its path
    as given when two share a name); a missing dir or file is an `InputError` naming it."""
    names = [run_label(d) for d in run_dirs]
    runs: dict[str, Records] = {}
    for run_dir, name in zip(run_dirs, names, strict=True):
        if not Path(run_dir).is_dir():
            raise InputError(f"{run_dir}: no such run directory")
        if not (Path(run_dir) / "metrics.jsonl").is_file():
            raise InputError(f"{run_dir}: no metrics.jsonl (not a training run's workdir, or "
                             "it has logged nothing yet)")
        label = name if names.count(name) == 1 else str(run_dir)
        if label in runs:
            raise InputError(f"{run_dir}: given twice")
        runs[label] = load_metrics(run_dir)
    return runs


def is_eval(record: dict[str, Any]) -> bool:
    """An eval record: `eval_*` figures or retrieval metrics (`[set/][language/]system_metric`),
    not a training step's means nor a non-finite event."""
    return "event" not in record and any(
        key.startswith("eval_") or key.rpartition("/")[2].rpartition("_")[2] in IR_METRICS
        for key in record)


def final_eval(records: Records) -> dict[str, Any]:
    """The last eval record of a run ({} when it has none)."""
    return next((r for r in reversed(records) if is_eval(r)), {})


def logged(runs: dict[str, Records]) -> list[str]:
    """Every numeric key some run logged, in the order first seen."""
    keys = (k for records in runs.values() for r in records for k, v in r.items()
            if isinstance(v, (int, float)) and k not in ("step", "time"))
    return list(dict.fromkeys(keys))


def check_metrics(runs: dict[str, Records], metrics: Sequence[str]) -> None:
    """An `InputError` for a metric none of the runs logged, with a did-you-mean."""
    known = logged(runs)
    for metric in metrics:
        if metric not in known:
            raise InputError(f"--metrics: no run logged {metric!r} "
                             f"({did_you_mean(metric, known)})")


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def eval_table(runs: dict[str, Records], extra: Sequence[str] = ()) -> str:
    """A markdown table of the runs' final evals: one row per run with the step of its final
    eval, the `TABLE` columns any final eval has, then the eval keys of `extra`."""
    finals = {name: final_eval(records) for name, records in runs.items()}
    columns = [k for k in (*TABLE, *extra) if any(k in f for f in finals.values())]
    columns = list(dict.fromkeys(columns))
    lines = ["| run | step | " + " | ".join(columns) + " |",
             "| --- | ---: |" + " ---: |" * len(columns)]
    for name, final in finals.items():
        step = str(final["step"]) if "step" in final else "n/a"
        cells = [name.replace("|", "\\|"), step, *(_cell(final.get(k)) for k in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: Sequence[str | Path],
                 metrics: Sequence[str] | None = None) -> tuple[Figure, str]:
    """The runs' curves (`metrics`, default the `CURVES` they logged) and their final-eval
    table. Eval keys among `metrics` become table columns too."""
    runs = load_runs(run_dirs)
    if metrics is None:
        metrics = [m for m in CURVES if m in logged(runs)]
        if not metrics:
            raise InputError(f"none of the runs logged {', '.join(CURVES)}: name the metrics "
                             "to draw with --metrics")
    check_metrics(runs, metrics)
    evals = [m for m in metrics if any(m in final_eval(r) for r in runs.values())]
    return metric_curves(runs, metrics), eval_table(runs, evals)
