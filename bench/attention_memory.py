"""Temporary memory of attention forward+backward by path and length, from XLA's analysis.

  python bench/attention_memory.py [--lengths 512 2048 8192] [--heads 12] [--head-dim 64]

Prints, per length, the compiled program's temp bytes for the reference and blockwise paths
and their ratio to the 2048-token figure: the reference path grows as L^2, the blockwise path
as L. Nothing is executed, so 8192 with the reference path is measured without running it.
"""

import argparse

import jax
import jax.numpy as jnp

from jbert.ops.alibi import alibi_slopes
from jbert.ops.attention import attention


def temp_mib(impl: str, length: int, heads: int, head_dim: int, block: int) -> float:
    q = jax.ShapeDtypeStruct((1, length, heads, head_dim), jnp.float32)
    slopes = jnp.asarray(alibi_slopes(heads))

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, slopes, impl=impl, block_size=block) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block", type=int, default=512)
    a = p.parse_args()
    rows = {impl: {n: temp_mib(impl, n, a.heads, a.head_dim, a.block) for n in a.lengths}
            for impl in ("reference", "blockwise")}
    base = 2048 if 2048 in a.lengths else a.lengths[0]
    print(f"attention fwd+bwd temp memory, batch 1, {a.heads} heads x {a.head_dim}, "
          f"block {a.block} ({jax.devices()[0].device_kind})")
    print(f"{'length':>8} {'reference MiB':>14} {'x':>6} {'blockwise MiB':>14} {'x':>6}")
    for n in a.lengths:
        r, b = rows["reference"][n], rows["blockwise"][n]
        print(f"{n:>8} {r:>14.1f} {r / rows['reference'][base]:>6.2f} {b:>14.1f} "
              f"{b / rows['blockwise'][base]:>6.2f}")


if __name__ == "__main__":
    main()
