"""What the scanned layers keep for the backward pass, per remat policy: why scan without remat
needs about twice the memory of the same step unrolled (docs/scaling.md).

    .venv/bin/python bench/scan_residuals.py                      # base-code, 16 x 512, bf16
    .venv/bin/python bench/scan_residuals.py --rows 128 --policies none,full

Traces `jax.vjp` of the MLM forward (`functional.apply`, the trainer's loss without the cross
entropy) from abstract shapes and sums the residuals the backward pass will read: under
`lax.scan` each is stacked over the layers ([layers, ...]), so every intermediate the layer's
backward needs is written to memory for every layer. Unrolled, XLA sees the whole graph and
fuses the cheap producers (LayerNorm statistics, GELU, casts) into the backward's kernels instead
of storing them; the scan cannot. Nothing is compiled or allocated: seconds on a CPU.
"""

from __future__ import annotations

import argparse
import collections

import jax
import jax.numpy as jnp

from jbert.model import functional
from jbert.model.config import REMAT_POLICIES, preset

LAYERS = preset("base-code").num_hidden_layers


def residuals(policy: str, rows: int, length: int) -> tuple[float, dict, dict]:
    """(total bytes, then bytes and array count per (per-layer shape, dtype) of the residuals
    stacked over the layers)."""
    config = preset("base-code", dtype="bfloat16", hidden_dropout_prob=0.1, remat=policy,
                    attention_impl="blockwise")  # flash attention as on accelerators, in JAX
    params = functional.abstract_params(config, "masked_lm")
    ids = jax.ShapeDtypeStruct((rows, length), jnp.int32)

    def backward(params, ids):
        def forward(params):
            return functional.apply(config, params, ids, jnp.ones_like(ids), head="masked_lm",
                                    dropout_rng=jax.random.key(0))["logits"]
        return jax.vjp(forward, params)[1]

    leaves = [x for x in jax.tree.leaves(jax.eval_shape(backward, params, ids))
              if hasattr(x, "shape")]
    stacked, counts = collections.Counter(), collections.Counter()
    for x in leaves:
        if x.shape and x.shape[0] == LAYERS:
            stacked[(tuple(x.shape[1:]), str(x.dtype))] += x.size * x.dtype.itemsize
            counts[(tuple(x.shape[1:]), str(x.dtype))] += 1
    return sum(x.size * x.dtype.itemsize for x in leaves), stacked, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--policies", default="none,dots_with_no_batch_dims_saveable,full")
    args = parser.parse_args()
    for policy in args.policies.split(","):
        if policy not in REMAT_POLICIES:
            raise SystemExit(f"--policies: {policy!r} is not one of {REMAT_POLICIES}")
        total, stacked, counts = residuals(policy, args.rows, args.length)
        print(f"\n## remat={policy}: {total / 2**30:.2f} GiB of residuals for {args.rows} x "
              f"{args.length} tokens\n\n| per layer: shape | dtype | stacked arrays | "
              "all layers (MiB) |\n|---|---|---:|---:|")
        for key, size in stacked.most_common():
            print(f"| {list(key[0])} | {key[1]} | {counts[key]} | {size / 2**20:,.0f} |")


if __name__ == "__main__":
    main()
