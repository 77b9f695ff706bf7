"""Does a contrastive step of 1024 pairs x 256 tokens fit on this CPU? GradCache against plain.

  python -m bench.contrastive_memory            # compiled memory of both steps (a few seconds)
  python -m bench.contrastive_memory --run      # also runs one GradCache step: time, peak RSS

The model is the tiny recipe's (configs/contrastive_tiny.py); queries and code both 256 tokens,
one device. XLA's `memory_analysis()` gives the temporary buffers of the compiled train step
(activations and gradients), beside the arguments (state and batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.tasks.contrastive import cached_grad_fn, contrastive_head, contrastive_loss_fn
from jbert.training.config import load_config
from jbert.training.optim import make_optimizer
from jbert.training.state import abstract_with_shardings, init_state
from jbert.training.step import train_step

PAIRS, LENGTH, CHUNK = 1024, 256, 64


def step_and_args(chunk: int):
    cfg = load_config("configs/contrastive_tiny.py")
    c = dataclasses.replace(cfg.contrastive, chunk_size=chunk, max_query_length=LENGTH,
                            max_doc_length=LENGTH)
    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    tx = make_optimizer(cfg.optim, cfg.steps)
    abstract = abstract_with_shardings(mesh, cfg.model, contrastive_head(cfg.contrastive), tx)
    step = jax.jit(functools.partial(
        train_step, loss_fn=contrastive_loss_fn(cfg.model, c, mesh), tx=tx,
        grad_fn=cached_grad_fn(cfg.model, c, mesh) if chunk else None), donate_argnums=0)
    batch = {k: jax.ShapeDtypeStruct((PAIRS, LENGTH), jnp.int32, sharding=batch_sharding(mesh))
             for k in ("query_ids", "query_mask", "doc_ids", "doc_mask")}
    return cfg, mesh, tx, step, abstract, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON line only")
    args = parser.parse_args()
    out = {"pairs": PAIRS, "tokens": LENGTH, "chunk": CHUNK}
    for name, chunk in (("gradcache", CHUNK), ("plain", 0)):
        _, _, _, step, abstract, batch = step_and_args(chunk)
        t0 = time.perf_counter()
        mem = step.lower(abstract, batch).compile().memory_analysis()
        out[f"{name}_temp_bytes"] = int(mem.temp_size_in_bytes)
        out[f"{name}_argument_bytes"] = int(mem.argument_size_in_bytes)
        out[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
    if args.run:
        cfg, mesh, tx, step, _, _ = step_and_args(CHUNK)
        state = init_state(mesh, cfg.model, contrastive_head(cfg.contrastive), tx, 0)
        rng = np.random.default_rng(0)
        batch = {}
        for key in ("query", "doc"):
            batch[f"{key}_ids"] = rng.integers(5, cfg.model.vocab_size, (PAIRS, LENGTH),
                                               dtype=np.int32)
            batch[f"{key}_mask"] = np.ones((PAIRS, LENGTH), np.int32)
        state, metrics = step(state, batch)  # compile + first step
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        out["gradcache_step_s"] = round(time.perf_counter() - t0, 1)
        out["loss"] = float(metrics["loss_sum"] / metrics["count"])
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k:>24}: {v / 2**30:.2f} GiB" if k.endswith("bytes") else f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
