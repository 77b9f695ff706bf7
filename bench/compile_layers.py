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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402

from bench.common import machine_line, write_json  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.mlm import mlm_loss_fn  # noqa: E402
from jbert.training.optim import OptimConfig, make_optimizer  # noqa: E402
from jbert.training.state import abstract_with_shardings  # noqa: E402
from jbert.training.trainer import jit_train_step  # noqa: E402

HEAD = "masked_lm"


def compile_seconds(name: str, layers: int, scan: bool, batch: int, seq: int,
                    remat: str) -> float:
    """Seconds to lower and compile one train step, from abstract state and batch."""
    config = preset(name, num_hidden_layers=layers, scan_layers=scan, remat=remat)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    tx = make_optimizer(OptimConfig(warmup_steps=10), total_steps=1000)
    state = abstract_with_shardings(mesh, config, HEAD, tx)
    batch_sh = batch_sharding(mesh)
    rows = jax.ShapeDtypeStruct((batch, seq), jax.numpy.int32, sharding=batch_sh)
    abstract_batch = {k: rows for k in ("input_ids", "attention_mask", "labels")}
    step = jit_train_step(mlm_loss_fn(config), tx, jax.tree.map(lambda a: a.sharding, state),
                          batch_sh)
    jax.clear_caches()
    start = time.perf_counter()
    step.lower(state, abstract_batch).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base-code")
    parser.add_argument("--layers", default="12,24", help="comma-separated depths")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--remat", default="none", help="the layers' remat policy")
    parser.add_argument("--repeats", type=int, default=2)
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
    write_json(args.json, {"machine": machine_line(), "args": vars(args),
                           "times": {f"{k[0]}-{k[1]}": v for k, v in times.items()}})


if __name__ == "__main__":
    main()
