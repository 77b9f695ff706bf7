"""The masking rule every attention path shares, and sequence padding to whole blocks.

Query i may attend to key j iff key j is real (`attention_mask`), both lie in the same packed
document (`segment_ids`), and, for causal attention, j <= i.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Finite so that fully masked rows stay finite (uniform) rather than NaN.
MASK_VALUE = -1e30


def allowed_BLM(key_valid_BM: jax.Array, segment_q_BL: jax.Array, segment_k_BM: jax.Array,
                positions_q_L: jax.Array, positions_k_M: jax.Array, causal: bool) -> jax.Array:
    """Which (query, key) pairs may attend, [B, L, M] bool."""
    ok_BLM = key_valid_BM[:, None, :] & (segment_q_BL[:, :, None] == segment_k_BM[:, None, :])
    if causal:
        ok_BLM &= (positions_k_M[None, :] <= positions_q_L[:, None])[None]
    return ok_BLM


def pad_length(padded: int, *xs_BL: jax.Array) -> tuple[jax.Array, ...]:
    """Zero-pads the sequence axis (1) of each array to `padded`.

    Padded keys get `key_valid` False, so they take no weight; padded queries are sliced off.
    """
    return tuple(jnp.pad(x, [(0, 0), (0, padded - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
                 for x in xs_BL)
