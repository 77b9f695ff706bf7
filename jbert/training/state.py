"""Sharded train state: built from abstract shapes, shardings from the logical axes, jitted init.

The state is a plain dict pytree `{step, rng, params, opt_state}`; the dropout RNG lives in it,
so a checkpoint of the state restores the random stream too. No device ever holds a full copy
of a sharded parameter: `init` runs under jit with `out_shardings`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.ops.sharding import tree_shardings

State = dict[str, Any]


def param_shardings(mesh: Mesh, config: JinaBertConfig, head: str) -> Any:
    return tree_shardings(mesh, functional.logical_axes(config, head),
                          functional.abstract_params(config, head))


def state_shardings(mesh: Mesh, config: JinaBertConfig, head: str,
                    tx: optax.GradientTransformation) -> tuple[State, State]:
    """(abstract state, its shardings). Optimizer moments follow their parameter's sharding."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params_sh = param_shardings(mesh, config, head)
    abstract_params = functional.abstract_params(config, head)
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
               seed: int, params: Any = None) -> State:
    """A fresh state on `mesh`: new parameters from `seed`, or the given ones (weights-only
    initialisation from another run or an HF export) with a fresh optimizer."""
    _, shardings = state_shardings(mesh, config, head, tx)

    def init(key, params):
        init_key, dropout_key = jax.random.split(key)
        if params is None:
            params = functional.init_params(config, init_key, head)
        return {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(dropout_key),
                "params": params, "opt_state": tx.init(params)}

    if params is not None:
        params = jax.device_put(params, shardings["params"])
    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed), params)


def abstract_with_shardings(mesh: Mesh, config: JinaBertConfig, head: str,
                            tx: optax.GradientTransformation) -> State:
    """ShapeDtypeStructs carrying the target shardings: the restore target for orbax."""
    abstract, shardings = state_shardings(mesh, config, head, tx)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
