"""Shared pieces of the CPU benchmarks: the batch, the PyTorch twin, timing and the table.

The twin is tests/torch_twin.py (an independent JinaBERT in PyTorch with the HF names); torch is
a test extra, so the benchmarks need `pip install -e .[test]` or the project venv.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
from jbert.data.labels import IGNORE_INDEX  # noqa: E402

MASK_ID = 4  # any id that is not pad: the benchmark never decodes


def mlm_batch(vocab_size: int, batch: int, length: int, mask_rate: float = 0.3,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids, every token real; `mask_rate` of the positions masked and labelled."""
    rng = np.random.default_rng(seed)
    ids_BL = rng.integers(5, vocab_size, size=(batch, length), dtype=np.int32)
    masked_BL = rng.random((batch, length)) < mask_rate
    labels_BL = np.where(masked_BL, ids_BL, IGNORE_INDEX).astype(np.int32)
    return {"input_ids": np.where(masked_BL, MASK_ID, ids_BL).astype(np.int32),
            "attention_mask": np.ones((batch, length), np.int32),
            "labels": labels_BL}


def twin_module():
    """tests/torch_twin.py as a module (tests/ is not a package)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch_twin

    return torch_twin


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call; `fn` blocks until its result is ready."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    import jax
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores; jax {jax.__version__} "
            f"({jax.default_backend()}), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def summary(times: list[float], tokens: int) -> dict[str, float]:
    med = statistics.median(times)
    return {"n": len(times), "median_s": med, "min_s": min(times), "max_s": max(times),
            "tok_s": tokens / med}


def print_table(rows: dict[str, dict[str, float]], baseline: str, unit: str = "step") -> None:
    """Markdown table: one row per variant, tokens/s relative to `baseline`."""
    base = rows[baseline]["tok_s"]
    print(f"| variant | n | s/{unit} median (min-max) | tok/s | tok/s vs {baseline} |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['n']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) "
              f"| {r['tok_s']:.0f} | {r['tok_s'] / base:.2f}x |")


def peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_json(path: str | None, result: dict) -> None:
    """The run's figures as JSON at `path` (the scripts' `--json`), if given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def add_model_args(parser, layers: int | None = None) -> None:
    """`--preset --layers --batch --seq`: the model and batch shape of the step benchmarks."""
    parser.add_argument("--preset", default="base-code")
    parser.add_argument("--layers", type=int, default=layers,
                        help="override the preset's num_hidden_layers (0 or unset: keep it)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
