"""Pure train and eval steps for any task's loss: `(state, batch) -> (state, metrics)`, jitted
once by the trainer.

A loss function returns `(loss_sum, sums)`: the loss summed over its examples and a dict of
summed metrics with their denominators (`count` is the one the loss is averaged by). Summing
lets gradient accumulation and the global batch give exactly the full-batch average.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jbert.model import lora
from jbert.model.lora import LoRAConfig
from jbert.training.state import State

Batch = dict[str, jax.Array]
LossFn = Callable[[Any, Batch, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]
# (params, batch, dropout_rng) -> (gradient of the loss sum, sums); default jax.grad(loss_fn).
GradFn = Callable[[Any, Batch, jax.Array | None], tuple[Any, dict[str, jax.Array]]]


def strided_split(x_BX: jax.Array, n: int, what: str) -> jax.Array:
    """[B, ...] -> [n, B / n, ...], part i taking rows i, i + n, ...: each device keeps its own
    rows in every part, so splitting moves no data. `what` names the split in the error."""
    rows = x_BX.shape[0]
    if rows % n:
        raise ValueError(f"{rows} rows do not split into {what}")
    return jnp.swapaxes(x_BX.reshape(rows // n, n, *x_BX.shape[1:]), 0, 1)


def _micro_batches(batch: Batch, n: int) -> Batch:
    return jax.tree.map(lambda x: strided_split(x, n, f"grad_accum={n} micro-batches"), batch)


def train_step(state: State, batch: Batch, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, grad_accum: int = 1,
               skip_nonfinite: bool = False,
               grad_fn: GradFn | None = None) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step over the global batch, averaged over `sums['count']`.

    `grad_fn` replaces `jax.grad(loss_fn)` where the gradient is computed another way (the
    contrastive stage's chunked GradCache step); it must return the same quantity.
    """
    rng, step_rng = jax.random.split(jax.random.wrap_key_data(state["rng"]))
    grad_fn = grad_fn or jax.grad(loss_fn, has_aux=True)

    def micro(carry, xs):
        grads_acc, sums_acc = carry
        index, micro_batch = xs
        grads, sums = grad_fn(state["params"], micro_batch, jax.random.fold_in(step_rng, index))
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        return (grads_acc, jax.tree.map(jnp.add, sums_acc, sums)), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    sums_shape = jax.eval_shape(grad_fn, state["params"], jax.tree.map(lambda x: x[0], (
        _micro_batches(batch, grad_accum))), step_rng)[1]
    sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
    (grads, sums), _ = jax.lax.scan(
        micro, (zeros, sums0), (jnp.arange(grad_accum), _micro_batches(batch, grad_accum)))
    count = jnp.maximum(sums["count"], 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / count, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(sums["loss_sum"]) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # keep the old weights and moments, still advance step and rng
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                         (params, opt_state),
                                         (state["params"], state["opt_state"]))
    new_state = {"step": state["step"] + 1, "rng": jax.random.key_data(rng), "params": params,
                 "opt_state": opt_state}
    metrics = {**sums, "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics


def lora_train_step(state: State, batch: Batch, base: Any, *, lora_cfg: LoRAConfig,
                    loss_fn: LossFn, grad_fn: GradFn | None = None,
                    **kwargs: Any) -> tuple[State, dict[str, jax.Array]]:
    """`train_step` of a LoRA state (adapters and head weights) on the frozen `base` merged
    with them: the loss and gradient functions of plain params are pulled back through the
    merge, so the GradCache step serves LoRA unchanged."""
    return train_step(
        state, batch, loss_fn=lora.on_merged(loss_fn, base, lora_cfg),
        grad_fn=None if grad_fn is None else lora.grad_on_merged(grad_fn, base, lora_cfg),
        **kwargs)


def eval_step(params: Any, batch: Batch, *, loss_fn: LossFn) -> dict[str, jax.Array]:
    """Summed metrics on a batch, dropout off."""
    return loss_fn(params, batch, None)[1]
