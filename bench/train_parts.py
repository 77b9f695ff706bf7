"""Where a jbert MLM train step spends its time on CPU: the step taken apart, each part jitted.

    .venv/bin/python bench/train_parts.py                                   # base-code, 4x512
    XLA_FLAGS=--xla_cpu_enable_fast_math=true .venv/bin/python bench/train_parts.py --parts grad

Parts (alternating, one warm-up call each, then `--steps` timed calls):
- `fwd` / `fwd-masked`: the MLM loss alone (`mlm_loss_fn`, or the masked-positions-only loss of
  bench/train_step.py), logits over every position vs over the labelled ones.
- `grad` / `grad-masked`: `jax.grad` of the same loss (forward + backward).
- `grad-blockwise`: `grad` with `attention_impl="blockwise"` instead of the reference path.
- `opt`: the optimizer alone: clip + AdamW update + apply over the 160 M parameters, donated.
- `step` / `step-masked`: the whole `train_step`, as in bench/train_step.py.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from bench.common import (  # noqa: E402
    machine_line,
    mlm_batch,
    print_table,
    summary,
    timed,
)
from bench.train_step import HEAD, jbert_step, masked_loss_fn  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.tasks.mlm import mlm_loss_fn  # noqa: E402
from jbert.training.optim import OptimConfig, make_optimizer  # noqa: E402


def part(name: str, config, batch_np):
    kind, _, option = name.partition("-")
    if kind == "step":
        return jbert_step(config, batch_np, option or "all")
    if option == "blockwise":
        config = config.replace(attention_impl="blockwise")
    params = jax.jit(functools.partial(functional.init_params, config, head=HEAD))(
        jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    loss_fn = masked_loss_fn(config, batch_np) if option == "masked" else mlm_loss_fn(config)
    if kind == "fwd":
        fn = jax.jit(lambda p, b: loss_fn(p, b, None)[0])
        return lambda: jax.block_until_ready(fn(params, batch))
    if kind == "grad":
        fn = jax.jit(jax.grad(lambda p, b: loss_fn(p, b, None)[0]))
        return lambda: jax.block_until_ready(fn(params, batch))
    if kind == "opt":
        tx = make_optimizer(OptimConfig(warmup_steps=10), total_steps=1000)
        grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
        holder = {"p": params, "o": jax.jit(tx.init)(params)}

        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def update(p, o, g):
            updates, o = tx.update(g, o, p)
            return optax.apply_updates(p, updates), o

        def run():
            holder["p"], holder["o"] = update(holder["p"], holder["o"], grads)
            jax.block_until_ready(holder["p"])

        return run
    raise ValueError(f"unknown part {name!r}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base-code")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--parts", default="fwd,fwd-masked,grad,grad-masked,opt")
    args = p.parse_args(argv)
    config = preset(args.preset)
    batch_np = mlm_batch(config.vocab_size, args.batch, args.seq)
    names = args.parts.split(",")
    print("command: .venv/bin/python bench/train_parts.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    runs, times = {}, {n: [] for n in names}
    for name in names:
        runs[name] = part(name, config, batch_np)
        print(f"  warm-up {name}: {timed(runs[name])[0]:.1f} s", flush=True)
    for round_ in range(args.steps):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(timed(runs[name])[0])
            print(f"  round {round_} {name}: {times[name][-1]:.2f} s", flush=True)
    print()
    print_table({n: summary(t, args.batch * args.seq) for n, t in times.items()}, names[0],
                unit="call")


if __name__ == "__main__":
    main()
