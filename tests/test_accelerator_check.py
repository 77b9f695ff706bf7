"""`bench/accelerator_check.py --dry-run`: the accelerator check's code on CPU at tiny shapes
(Pallas in interpret mode), so that it still runs when an accelerator is next lent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 12 compiles of a 1-layer model: ~40 s of CPU
def test_dry_run_measures_every_path_and_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.accelerator_check", "--dry-run",
                           "--out", str(tmp_path), "--budget-s", "100000"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "dry_run.json").read_text())
    # The gpu tests import and are collected (they run only where a GPU is).
    assert report["gpu_tests"]["returncode"] == 0
    assert "9 tests collected" in report["gpu_tests"]["summary"]
    rows = report["results"]
    assert {(r["mode"], r["length"], r["impl"]) for r in rows} == {
        (mode, length, impl) for mode in ("train", "encode") for length in (128, 256)
        for impl in ("dpa", "pallas", "blockwise")}
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["memory_bytes"] > 0, r
        assert r["mfu"] is None  # no peak FLOP/s is known for a CPU
    for length in (128, 256):
        # Same weights, batch and step on every path: the losses agree.
        losses = [r["loss"] for r in rows if r["mode"] == "train" and r["length"] == length]
        assert max(losses) - min(losses) < 1e-4, losses
    assert all(r["finite"] for r in rows if r["mode"] == "encode")
    table = (tmp_path / "dry_run.md").read_text()
    assert table.count("\n| train |") + table.count("\n| encode |") == 12
