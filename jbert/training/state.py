"""Sharded train state: built from abstract shapes, shardings from the logical axes, jitted init.

The state is a plain dict pytree `{step, rng, params, opt_state}`; the dropout RNG lives in it,
so a checkpoint of the state restores the random stream too. No device ever holds a full copy
of a sharded parameter: `init` runs under jit with `out_shardings`.

With a `LoRAConfig` (rank > 0) the state's `params` are the trainable tree of `jbert.model.lora`
(adapters and head weights), so the optimiser holds moments for those alone; the frozen base
is not part of the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jbert.model import functional, lora
from jbert.model.config import JinaBertConfig
from jbert.model.lora import LoRAConfig
from jbert.ops.sharding import tree_shardings

State = dict[str, Any]


def _lora_on(cfg: LoRAConfig | None) -> bool:
    return cfg is not None and cfg.rank > 0


def trained_params(config: JinaBertConfig, head: str, lora_cfg: LoRAConfig | None = None) -> Any:
    """Shapes of what the state trains: every parameter, or with LoRA the trainable tree."""
    if _lora_on(lora_cfg):
        return lora.abstract_trainable(config, head, lora_cfg)
    return functional.abstract_params(config, head)


def param_shardings(mesh: Mesh, config: JinaBertConfig, head: str,
                    lora_cfg: LoRAConfig | None = None) -> Any:
    """Shardings of the state's params (the plain params, or with LoRA the trainable tree)."""
    axes = (lora.trainable_axes(config, head, lora_cfg) if _lora_on(lora_cfg)
            else functional.logical_axes(config, head))
    return tree_shardings(mesh, axes, trained_params(config, head, lora_cfg))


def state_shardings(mesh: Mesh, config: JinaBertConfig, head: str,
                    tx: optax.GradientTransformation,
                    lora_cfg: LoRAConfig | None = None) -> tuple[State, State]:
    """(abstract state, its shardings). Optimizer moments follow their parameter's sharding."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params_sh = param_shardings(mesh, config, head, lora_cfg)
    abstract_params = trained_params(config, head, lora_cfg)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, params_sh,
                                   transform_non_params=lambda _: replicated)
    abstract = {
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))),
        "params": abstract_params,
        "opt_state": abstract_opt,
    }
    shardings = {"step": replicated, "rng": replicated, "params": params_sh,
                 "opt_state": opt_sh}
    return abstract, shardings


def init_state(mesh: Mesh, config: JinaBertConfig, head: str, tx: optax.GradientTransformation,
               seed: int, params: Any = None, lora_cfg: LoRAConfig | None = None) -> State:
    """A fresh state on `mesh`: new parameters from `seed`, or the given ones (weights-only
    initialisation from another run or an HF export) with a fresh optimizer. With LoRA,
    `params` is the base (required) and the state trains fresh adapters and its head weights."""
    _, shardings = state_shardings(mesh, config, head, tx, lora_cfg)
    if _lora_on(lora_cfg) and params is None:
        raise ValueError("LoRA adapts given weights: pass the base as `params`")

    def init(key, params):
        init_key, dropout_key = jax.random.split(key)
        if _lora_on(lora_cfg):
            params = lora.trainable(params, lora.init_adapters(params, lora_cfg, init_key))
        elif params is None:
            params = functional.init_params(config, init_key, head)
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(dropout_key),
                "params": params, "opt_state": tx.init(params)}

    if params is not None:
        params = jax.device_put(params, param_shardings(mesh, config, head))
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed), params)


def abstract_with_shardings(mesh: Mesh, config: JinaBertConfig, head: str,
                            tx: optax.GradientTransformation,
                            lora_cfg: LoRAConfig | None = None) -> State:
    """ShapeDtypeStructs carrying the target shardings: the restore target for orbax."""
    abstract, shardings = state_shardings(mesh, config, head, tx, lora_cfg)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
