"""Where the time of the MLM loss gradient goes: XLA ops ranked by time, from a profiler trace.

    .venv/bin/python bench/profile_step.py                   # base-code, 2 layers, 4x512
    .venv/bin/python bench/profile_step.py --layers 12 --top 60

Compiles `jax.grad` of the library's `mlm_loss_fn` (the head on `--max-predictions` labelled
positions per row, as the recipes run it), times it, then runs it once under `jax.profiler` and
joins the trace's op events with the compiled HLO, so each row shows the op's result shape and
the JAX operation it came from (`transpose(jvp(...))` is the backward pass). The shares say which
ops are worth changing; absolute times move with the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import add_model_args, machine_line, mlm_batch, timed  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.tasks.mlm import mlm_loss_fn  # noqa: E402

HLO_OP = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]+)\"")


def op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (result shape, JAX op name) for every instruction with metadata."""
    table = {}
    for line in hlo_text.splitlines():
        m = HLO_OP.match(line)
        if m and m.group(1) not in table:
            table[m.group(1)] = (m.group(2), m.group(3).split("/", 1)[-1])
    return table


def op_times(trace_dir: str, ops: dict[str, tuple[str, str]]) -> collections.Counter:
    """Microseconds per HLO op in the perfetto trace that `jax.profiler.trace` wrote."""
    path = max(Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    times = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            times[e["name"]] += e.get("dur", 0)
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, layers=2)
    p.add_argument("--max-predictions", type=int, default=176,
                   help="labelled positions per row the head sees; 0: all positions")
    p.add_argument("--top", type=int, default=30)
    args = p.parse_args(argv)

    config = preset(args.preset)
    if args.layers:
        config = config.replace(num_hidden_layers=args.layers)
    params = functional.init_params(config, jax.random.key(0), head="masked_lm")
    batch = {k: jnp.asarray(v) for k, v in mlm_batch(config.vocab_size, args.batch,
                                                       args.seq).items()}
    loss_fn = mlm_loss_fn(config, args.max_predictions or None)
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))
    ops = op_table(grad.lower(params, batch).compile().as_text())
    jax.block_until_ready(grad(params, batch))
    seconds, _ = timed(lambda: jax.block_until_ready(grad(params, batch)))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(grad(params, batch))
        times = op_times(trace_dir, ops)

    total = sum(times.values())
    print("command: .venv/bin/python bench/profile_step.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    print(f"model: {args.preset}, {config.num_hidden_layers} layers, batch {args.batch}x"
          f"{args.seq}, head on {args.max_predictions or 'all'} positions per row; "
          f"grad {seconds:.2f} s untraced, {total / 1e6:.2f} s in traced ops\n")
    print("| ms | share | HLO op | result | JAX op |")
    print("|---:|---:|---|---|---|")
    rows = []
    for name, us in times.most_common(args.top):
        shape, jax_op = ops[name]
        rows.append({"op": name, "ms": us / 1e3, "shape": shape, "jax_op": jax_op})
        print(f"| {us / 1e3:.1f} | {us / total:.1%} | {name} | {shape} | {jax_op} |")
    return {"grad_s": seconds, "traced_s": total / 1e6, "rows": rows}


if __name__ == "__main__":
    main()
