"""Losses of the task heads, in fp32, with the usual ignore index."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jbert.data.labels import IGNORE_INDEX


def cross_entropy(logits_NV: jax.Array, labels_N: jax.Array,
                  ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
    """Summed token cross-entropy and the count of labelled positions (any leading shape).

    Returning (sum, count) lets callers average over a global batch; `mean_cross_entropy` is
    the per-batch mean that the heads report as `loss`.
    """
    valid_N = labels_N != ignore_index
    safe_labels_N = jnp.where(valid_N, labels_N, 0)
    losses_N = optax.softmax_cross_entropy_with_integer_labels(
        logits_NV.astype(jnp.float32), safe_labels_N)
    return jnp.sum(jnp.where(valid_N, losses_N, 0.0)), jnp.sum(valid_N)


def mean_cross_entropy(logits_NV: jax.Array, labels_N: jax.Array,
                       ignore_index: int = IGNORE_INDEX) -> jax.Array:
    total, count = cross_entropy(logits_NV, labels_N, ignore_index)
    return total / jnp.maximum(count, 1)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean((predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2)


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                       targets.astype(jnp.float32)))
