"""Symmetric bidirectional ALiBi: per-head slopes and the additive bias -slope * |i - j|."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def _power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Slopes for `num_heads` heads, as in the ALiBi paper and JinaBERT.

    A power of two n gives the geometric sequence starting at 2**(-8/n). Otherwise the slopes of
    the closest lower power of two m are followed by every other slope of the 2m sequence.
    """
    if num_heads <= 0:
        raise ValueError(f"num_heads={num_heads} must be positive")
    m = 2 ** math.floor(math.log2(num_heads))
    slopes = _power_of_two_slopes(m)
    if m < num_heads:
        slopes += _power_of_two_slopes(2 * m)[0::2][: num_heads - m]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(slopes_H: jnp.ndarray, positions_q_L: jnp.ndarray,
               positions_k_M: jnp.ndarray) -> jnp.ndarray:
    """The bias [H, L, M] between query positions L and key positions M: -slope * |i - j|."""
    distance_LM = jnp.abs(positions_q_L[:, None] - positions_k_M[None, :]).astype(jnp.float32)
    return -slopes_H[:, None, None] * distance_LM[None]
