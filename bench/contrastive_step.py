"""Contrastive train-step throughput: GradCache against the plain step, as a ratio in one run.

    .venv/bin/python bench/contrastive_step.py                      # the tiny recipe's batch
    .venv/bin/python bench/contrastive_step.py --pairs 128 --chunk 32 --steps 5

Both steps are `jit_train_step` as `jbert.training.trainer` builds it for `train.contrastive` (state
donated, explicit shardings, one device), with `contrastive_loss_fn`; the GradCache step adds
`cached_grad_fn` (embed every chunk without activations, loss gradient on the embeddings,
re-run each chunk under `jax.vjp`). The model and lengths are `--config`'s (the tiny recipe:
64 pairs, 32-token queries, 128-token code, chunks of 32), at a batch where the plain step
fits too. Random ids, every token real; one warm-up step each (compiles), then `--steps` timed
steps per variant, alternating and reversing the order every other round.

GradCache recomputes the forward pass of every chunk, so its ideal overhead is one extra
forward: about 4/3 the plain step's FLOPs. Packed vs padded batches: bench/contrastive_packed.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import cpu_name, summary, timed, write_json  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.contrastive import (  # noqa: E402
    cached_grad_fn,
    contrastive_head,
    contrastive_loss_fn,
)
from jbert.training.config import load_config  # noqa: E402
from jbert.training.optim import make_optimizer  # noqa: E402
from jbert.training.state import init_state, state_shardings  # noqa: E402
from jbert.training.trainer import jit_train_step  # noqa: E402


def make_step(cfg, chunk: int, batch_np: dict):
    """A closure running one step of the plain (`chunk` 0) or GradCache train step."""
    c = dataclasses.replace(cfg.contrastive, chunk_size=chunk)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    tx = make_optimizer(cfg.optim, cfg.steps)
    _, state_sh = state_shardings(mesh, cfg.model, contrastive_head(cfg.contrastive), tx)
    batch_sh = batch_sharding(mesh)
    step = jit_train_step(contrastive_loss_fn(cfg.model, c, mesh), tx, state_sh, batch_sh,
                          grad_fn=cached_grad_fn(cfg.model, c, mesh) if chunk else None)
    holder = {"state": init_state(mesh, cfg.model, contrastive_head(cfg.contrastive), tx, seed=0)}
    batch = jax.device_put(batch_np, batch_sh)

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        return float(jax.block_until_ready(metrics)["loss_sum"] / metrics["count"])

    return run


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/contrastive_tiny.py")
    p.add_argument("--pairs", type=int, default=None, help="default: the config's batch size")
    p.add_argument("--chunk", type=int, default=None, help="default: the config's chunk_size")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    pairs = args.pairs or cfg.data.batch_size
    chunk = args.chunk or cfg.contrastive.chunk_size
    c = cfg.contrastive
    rng = np.random.default_rng(0)
    batch_np = {}
    for key, length in (("query", c.max_query_length), ("doc", c.max_doc_length)):
        batch_np[f"{key}_ids"] = rng.integers(5, cfg.model.vocab_size, (pairs, length),
                                              dtype=np.int32)
        batch_np[f"{key}_mask"] = np.ones((pairs, length), np.int32)
    tokens = pairs * (c.max_query_length + c.max_doc_length)
    print("command: .venv/bin/python bench/contrastive_step.py " + " ".join(sys.argv[1:]))
    print(f"machine: {cpu_name()}, jax {jax.__version__} ({jax.default_backend()}); "
          f"{args.config}: {cfg.model.num_hidden_layers} layers x {cfg.model.hidden_size}, "
          f"{pairs} pairs of {c.max_query_length} + {c.max_doc_length} tokens, chunks of {chunk}")
    runs = {"plain": make_step(cfg, 0, batch_np), "gradcache": make_step(cfg, chunk, batch_np)}
    first = {}
    for name, run in runs.items():
        seconds, loss = timed(run)
        first[name] = {"seconds": seconds, "loss": loss}
        print(f"  warm-up {name}: {seconds:.1f} s (compile included), loss {loss:.4f}",
              flush=True)
    times = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(args.steps):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(timed(runs[name])[0])
    rows = {name: summary(t, tokens) for name, t in times.items()}
    ratio = rows["gradcache"]["median_s"] / rows["plain"]["median_s"]
    print("\n| step | n | s/step median (min-max) | tok/s |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['n']} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) "
              f"| {r['tok_s']:.0f} |")
    print(f"\nGradCache / plain step time: {ratio:.2f}x (one extra forward would be ~1.33x)")
    result = {"args": vars(args), "pairs": pairs, "chunk": chunk, "rows": rows, "times": times,
              "warmup": first, "gradcache_over_plain": ratio}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
