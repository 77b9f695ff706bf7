"""One command for a lent accelerator: the `gpu` tests, then train-step and encode throughput,
MFU and memory of each attention path. Under 8 minutes on one H100/H200 (estimate: never run on
one yet; `--budget-s` skips what is left past the budget and says so).

    pip install -e ".[gpu]"                                   # jax[cuda12] (docs/benchmarks.md)
    python -m bench.accelerator_check                         # writes bench/results/accelerator/
    python -m bench.accelerator_check --dry-run --out /tmp/x  # CPU, tiny shapes, Pallas interpreted

1. `pytest -m gpu tests/test_gpu.py` in a subprocess with `JAX_PLATFORMS=''` (before this process
   touches the accelerator, whose memory JAX preallocates): the Pallas kernels compiled for real
   and `dot_product_attention` (XLA and cuDNN) against the reference path, fp32 and bf16.
2. For each length (512 and 8192 tokens) and attention path (`dpa`, `pallas`, `blockwise`):
   - `train`: the library's MLM train step (`jit_train_step`: forward, backward, clip + AdamW,
     donated state, decoder on the labelled positions as the recipes run it) on `--train-tokens`
     tokens per step;
   - `encode`: `jax.jit(functional.embed)` (forward, mean pooling, L2) on `--encode-tokens`.
   Base-code, bf16 compute with fp32 parameters, random weights and ids, every token real, one
   device. Each is compiled ahead of time (`.lower().compile()`), run once, then timed over
   `--steps` calls. A step that runs out of memory is retried at half the rows.
3. Per measurement: tokens/s (median), MFU = tokens/s x FLOPs per token / the chip's dense bf16
   peak (`jbert.training.flops`; attention FLOPs counted in full, 12 x layers x L x D per token
   for a train step, a third of it forward only), the compiled executable's memory (arguments +
   outputs + temporaries - donated) and the device's peak bytes in use so far.

Output: `<out>/<device>_<date>.json` and `.md` (one table), the table also printed.
`--dry-run`: the same code on CPU with a 1-layer `tiny-code`, 128/256 tokens, one step, the Pallas
kernels in interpret mode, and the `gpu` tests only collected; tests/test_accelerator_check.py
runs it so that this script cannot rot between accelerator sessions.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import mlm_batch  # noqa: E402  (torch-free: the GPU extra has no torch)
from jbert.model import functional  # noqa: E402
from jbert.model.config import JinaBertConfig, preset  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.mlm import mlm_loss_fn  # noqa: E402
from jbert.training.flops import encoder_flops_per_token, peak_flops_per_device  # noqa: E402
from jbert.training.optim import OptimConfig, make_optimizer  # noqa: E402
from jbert.training.state import init_state, state_shardings  # noqa: E402
from jbert.training.trainer import jit_train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("dpa", "pallas", "blockwise")
MASK_RATE = 0.15  # BERT's rate; the head runs on the labelled positions only


@dataclasses.dataclass(frozen=True)
class Setting:
    preset: str
    dtype: str
    lengths: tuple[int, ...]
    train_tokens: int
    encode_tokens: int
    steps: int
    block: int
    layers: int | None = None  # None: the preset's


ACCELERATOR = Setting("base-code", "bfloat16", (512, 8192), train_tokens=32768,
                      encode_tokens=131072, steps=5, block=512)
# One block and two blocks of 128 (Pallas' smallest): every path's multi-block loop runs.
DRY_RUN = Setting("tiny-code", "float32", (128, 256), train_tokens=256, encode_tokens=256,
                  steps=1, block=128, layers=1)


def run_gpu_tests(dry_run: bool, out: Path) -> dict:
    """The `gpu`-marked tests in a subprocess; a dry run only collects them."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "tests/test_gpu.py"]
    cmd += ["--collect-only"] if dry_run else [f"--junitxml={out / 'gpu_tests.xml'}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu" if dry_run else ""}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    print("\n".join(lines[-30:]), flush=True)
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr[-2000:],
            "seconds": round(time.perf_counter() - start, 1)}


def _memory(compiled) -> int | None:
    """Bytes the executable needs on the device: arguments + outputs + temporaries - donated."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _timed_calls(call, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return times


def measure_train(config: JinaBertConfig, rows: int, length: int, steps: int) -> dict:
    """The recipes' MLM train step on one device: (figures, flops per token)."""
    mesh = make_mesh(devices=jax.devices()[:1])
    tx = make_optimizer(OptimConfig(warmup_steps=10), total_steps=1000)
    arrays = mlm_batch(config.vocab_size, rows, length, MASK_RATE)
    most = int((arrays["labels"] >= 0).sum(1).max())
    max_predictions = -(-most // 8) * 8
    _, state_sh = state_shardings(mesh, config, "masked_lm", tx)
    batch_sh = batch_sharding(mesh)
    step = jit_train_step(mlm_loss_fn(config, max_predictions), tx, state_sh, batch_sh)
    state = init_state(mesh, config, "masked_lm", tx, seed=0)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in arrays.items()}, batch_sh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    metrics = jax.block_until_ready(call())
    times = _timed_calls(call, steps)
    flops = encoder_flops_per_token(config, length, decoder_rows=config.vocab_size,
                                    decoder_fraction=max_predictions / length)
    loss = float(metrics["loss_sum"] / metrics["count"])
    return {"compile_s": compile_s, "times": times, "memory_bytes": _memory(compiled),
            "loss": loss}, flops


def measure_encode(config: JinaBertConfig, rows: int, length: int, steps: int) -> dict:
    """`functional.embed` (forward, mean pooling, L2) on one device."""
    params = jax.jit(functools.partial(functional.init_params, config, head="base"))(
        jax.random.key(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(5, config.vocab_size, (rows, length),
                                                         dtype=np.int32))
    mask = jnp.ones((rows, length), jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(functools.partial(functional.embed, config)).lower(
        params, ids, mask).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(params, ids, mask))
    finite = bool(np.isfinite(np.asarray(out, np.float32)).all())
    times = _timed_calls(lambda: compiled(params, ids, mask), steps)
    return {"compile_s": compile_s, "times": times, "memory_bytes": _memory(compiled),
            "finite": finite}, encoder_flops_per_token(config, length) / 3


def measure(mode: str, config: JinaBertConfig, tokens: int, length: int, steps: int,
            peak: float | None) -> dict:
    """One (mode, length, path): halves the rows on an out-of-memory error, down to one."""
    rows = max(1, tokens // length)
    fn = measure_train if mode == "train" else measure_encode
    while True:
        try:
            figures, flops = fn(config, rows, length, steps)
            break
        except Exception as error:  # XlaRuntimeError RESOURCE_EXHAUSTED, a failed lowering
            oom = "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()
            if not oom or rows == 1:
                return {"rows": rows, "error": f"{type(error).__name__}: {str(error)[:500]}"}
            print(f"    out of memory at {rows} rows; retrying at {rows // 2}", flush=True)
            rows //= 2
    median = statistics.median(figures["times"])
    tok_s = rows * length / median
    return {"rows": rows, **figures, "median_s": median, "tokens_per_s": tok_s,
            "flops_per_token": flops, "mfu": tok_s * flops / peak if peak else None,
            "device_peak_bytes_so_far": _device_peak()}


def table(results: list[dict]) -> str:
    lines = ["| mode | tokens | path | rows | tokens/s | MFU | s/step (median) | compiled memory "
             "GiB | compile s | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['mode']} | {r['length']} | {r['impl']} | {r.get('rows', '')} |"
        if "tokens_per_s" not in r:
            lines.append(f"{head} | | | | | {r.get('error') or r.get('skipped')} |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (no peak for this device)"
        mem = f"{r['memory_bytes'] / 2**30:.2f}" if r["memory_bytes"] is not None else "n/a"
        lines.append(f"{head} {r['tokens_per_s']:,.0f} | {mfu} | {r['median_s']:.4f} | {mem} | "
                     f"{r['compile_s']:.1f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpret mode")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "accelerator"))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--modes", default="train,encode")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="measurements start only while this many seconds have not passed")
    args = p.parse_args(argv)
    setting = DRY_RUN if args.dry_run else ACCELERATOR
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tests = {"skipped": True} if args.skip_tests else run_gpu_tests(args.dry_run, out)

    if not args.dry_run:
        # A rerun in the same machine session skips the compiles (the lease is minutes long).
        jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "jbert-jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    device = jax.devices()[0]
    peak = peak_flops_per_device()
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
          f"peak bf16 FLOP/s {peak}", flush=True)
    base = preset(setting.preset, dtype=setting.dtype, attention_block_size=setting.block)
    if setting.layers:
        base = base.replace(num_hidden_layers=setting.layers)
    results = []
    for length in setting.lengths:
        for impl in args.impls.split(","):
            config = base.replace(attention_impl=impl)
            for mode in args.modes.split(","):
                tokens = setting.train_tokens if mode == "train" else setting.encode_tokens
                row = {"mode": mode, "length": length, "impl": impl}
                if time.perf_counter() - start > args.budget_s:
                    row["skipped"] = f"not run: past --budget-s {args.budget_s:.0f}"
                else:
                    print(f"  {mode} {length} {impl} ...", flush=True)
                    row.update(measure(mode, config, max(tokens, length), length, setting.steps,
                                       peak))
                results.append(row)
                print("    " + json.dumps({k: v for k, v in row.items() if k != "times"},
                                          default=str), flush=True)

    md = table(results)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = {"date": date, "device": device.device_kind, "backend": jax.default_backend(),
              "jax": jax.__version__, "dry_run": args.dry_run, "setting": dataclasses.asdict(
                  setting), "peak_flops": peak, "gpu_tests": tests, "results": results,
              "total_s": round(time.perf_counter() - start, 1)}
    name = "dry_run" if args.dry_run else (
        device.device_kind.replace(" ", "_") + "_" + date[:10])
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    header = (f"{date}, {device.device_kind}, jax {jax.__version__}, {setting.preset} "
              f"{setting.dtype}; gpu tests: {tests.get('summary', 'skipped')}; "
              f"{report['total_s']} s in all\n\n")
    (out / f"{name}.md").write_text(header + md + "\n")
    print("\n" + header + md, flush=True)
    return report


def failed(report: dict) -> bool:
    """The tests failed or a measurement raised (skips for the budget are not failures)."""
    tests = report["gpu_tests"]
    return tests.get("returncode", 0) != 0 or any("error" in r for r in report["results"])


if __name__ == "__main__":
    sys.exit(1 if failed(main()) else 0)
