"""Compile time of the MLM train step with the layers unrolled (before scan) and under scan.

    .venv/bin/python bench/compile_layers.py                          # base-code, 12 and 24 layers
    .venv/bin/python bench/compile_layers.py --preset tiny-code --layers 2,4 --repeats 1

For each depth and layout (`scan_layers=False`: one copy of the layer body per layer, as jbert
compiled before its layers ran under `lax.scan`; `scan_layers=True`: one body), the step the
trainer runs (`jit_train_step`, MLM loss, AdamW, donated state, explicit shardings on a
1-device mesh) is lowered and compiled ahead of time from abstract shapes: no parameter is
allocated. Variants alternate within each repeat so machine noise hits them alike, with JAX's
caches cleared before each compile. Prints a markdown table: median seconds per variant, and
the ratio of each depth's compile time to the shallowest depth's, per layout.

`--steps N` also times N train steps of each variant (real parameters, one step of each layout
in turn after a warm-up step), to check that scan leaves the step time where it was:

    .venv/bin/python bench/compile_layers.py --preset tiny-code --layers 4 --batch 8 --seq 128 \
        --repeats 1 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402

from bench.common import machine_line, mlm_batch, write_json  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.mlm import mlm_loss_fn  # noqa: E402
from jbert.training.optim import OptimConfig, make_optimizer  # noqa: E402
from jbert.training.state import abstract_with_shardings, init_state  # noqa: E402
from jbert.training.trainer import jit_train_step  # noqa: E402

HEAD = "masked_lm"


def _step(name: str, layers: int, scan: bool, batch: int, seq: int, remat: str):
    """(config, optimizer, abstract state, batch sharding, jitted train step) as the trainer
    builds them, on a 1-device mesh."""
    config = preset(name, num_hidden_layers=layers, scan_layers=scan, remat=remat)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    tx = make_optimizer(OptimConfig(warmup_steps=10), total_steps=1000)
    state = abstract_with_shardings(mesh, config, HEAD, tx)
    batch_sh = batch_sharding(mesh)
    step = jit_train_step(mlm_loss_fn(config), tx, jax.tree.map(lambda a: a.sharding, state),
                          batch_sh)
    return config, tx, mesh, state, batch_sh, step


def compile_seconds(name: str, layers: int, scan: bool, batch: int, seq: int,
                    remat: str) -> float:
    """Seconds to lower and compile one train step, from abstract state and batch."""
    _, _, _, state, batch_sh, step = _step(name, layers, scan, batch, seq, remat)
    rows = jax.ShapeDtypeStruct((batch, seq), jax.numpy.int32, sharding=batch_sh)
    abstract_batch = {k: rows for k in ("input_ids", "attention_mask", "labels")}
    jax.clear_caches()
    start = time.perf_counter()
    step.lower(state, abstract_batch).compile()
    return time.perf_counter() - start


def step_seconds(name: str, layers: int, batch: int, seq: int, remat: str,
                 steps: int) -> dict[str, list[float]]:
    """Seconds per train step of each layout, one step of each in turn after a warm-up."""
    runs = {}
    for layout, scan in (("unrolled", False), ("scan", True)):
        config, tx, mesh, _, batch_sh, step = _step(name, layers, scan, batch, seq, remat)
        state = init_state(mesh, config, HEAD, tx, seed=0)
        data = jax.device_put(mlm_batch(config.vocab_size, batch, seq), batch_sh)
        state, _ = step(state, data)
        runs[layout] = {"state": state, "step": step, "data": data}
    times: dict[str, list[float]] = {layout: [] for layout in runs}
    for _ in range(steps):
        for layout, run in runs.items():
            start = time.perf_counter()
            run["state"], metrics = run["step"](run["state"], run["data"])
            jax.block_until_ready(metrics)
            times[layout].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base-code")
    parser.add_argument("--layers", default="12,24", help="comma-separated depths")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--remat", default="none", help="the layers' remat policy")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0,
                        help="also time this many train steps per layout (deepest depth)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    depths = [int(d) for d in args.layers.split(",")]
    print(machine_line())
    print(f"{args.preset}, batch {args.batch}x{args.seq}, remat={args.remat}, "
          f"{args.repeats} repeats")
    times: dict[tuple[str, int], list[float]] = {}
    for repeat in range(args.repeats):
        for layers in depths:
            for layout, scan in (("unrolled", False), ("scan", True)):
                seconds = compile_seconds(args.preset, layers, scan, args.batch, args.seq,
                                          args.remat)
                times.setdefault((layout, layers), []).append(seconds)
                print(f"  repeat {repeat}: {layout} {layers} layers: {seconds:.1f} s", flush=True)
    median = {key: statistics.median(v) for key, v in times.items()}
    print(f"\n| layout | layers | compile s, median (min-max) | vs {depths[0]} layers |")
    print("|---|---|---|---|")
    for layout in ("unrolled", "scan"):
        for layers in depths:
            t = times[(layout, layers)]
            print(f"| {layout} | {layers} | {median[(layout, layers)]:.1f} "
                  f"({min(t):.1f}-{max(t):.1f}) "
                  f"| {median[(layout, layers)] / median[(layout, depths[0])]:.2f}x |")
    result = {"machine": machine_line(), "args": vars(args),
              "times": {f"{k[0]}-{k[1]}": v for k, v in times.items()}}
    if args.steps:
        steps = step_seconds(args.preset, depths[-1], args.batch, args.seq, args.remat,
                             args.steps)
        print(f"\n| layout | layers | s/step, median (min-max), n={args.steps} | vs unrolled |")
        print("|---|---|---|---|")
        base = statistics.median(steps["unrolled"])
        for layout, t in steps.items():
            print(f"| {layout} | {depths[-1]} | {statistics.median(t):.4f} ({min(t):.4f}-"
                  f"{max(t):.4f}) | {statistics.median(t) / base:.2f}x |")
        result["step_seconds"] = steps
    write_json(args.json, result)


if __name__ == "__main__":
    main()
