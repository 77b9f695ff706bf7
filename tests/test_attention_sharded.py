"""The Pallas kernels under shard_map on a (data, fsdp, tensor) mesh of 8 fake CPU devices
(interpret mode) against the unsharded reference path: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jbert.ops.alibi import alibi_slopes
from jbert.ops.attention import attention
from jbert.ops.pallas_sharded import attention_specs, sharded_pallas_attention
from jbert.ops.sharding import make_mesh

B, L, H, K = 4, 200, 4, 16  # 200: padded to 256 inside; two key blocks of 128
BLOCK = 128


def _inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (B, L, H, K)) for key in keys)
    mask = jnp.ones((B, L), jnp.int32).at[1, L - 60:].set(0).at[3, 30:].set(0)
    segments = jnp.repeat(jnp.asarray([[1, 2, 3]] * B, jnp.int32), jnp.asarray([90, 60, 50]),
                          axis=1, total_repeat_length=L)
    return q, k, v, w, mask, segments


def _primitives(jaxpr, inside=False):
    """Names of the primitives in `jaxpr` and its sub-jaxprs, each with whether it sits under a
    shard_map."""
    found = []
    for eqn in jaxpr.eqns:
        found.append((eqn.primitive.name, inside))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found += _primitives(sub, inside or eqn.primitive.name == "shard_map")
    return found


@pytest.mark.parametrize(("mesh_shape", "causal"), [
    ((2, 2, 2), False),  # rows over data x fsdp, heads over tensor
    ((1, 2, 4), True),  # 4-way heads
    ((1, 8, 1), False),  # 8-way fsdp does not divide 4 rows: rows stay whole, no split at all
])
def test_sharded_pallas_matches_unsharded_reference(mesh_shape, causal):
    mesh = make_mesh(*mesh_shape)
    q, k, v, w, mask, segments = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    real = mask[:, :, None, None]
    qkv_spec = attention_specs(mesh, B, H)[0]

    def loss(q, k, v, impl):
        out = attention(q, k, v, slopes, mask, segments, causal=causal, impl=impl,
                        block_size=BLOCK)
        return jnp.sum(out * w * real), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    grads_r, out_r = grad(q, k, v, "reference")
    put = NamedSharding(mesh, qkv_spec)
    q_s, k_s, v_s = (jax.device_put(x, put) for x in (q, k, v))
    with jax.set_mesh(mesh):
        grads, out = grad(q_s, k_s, v_s, "pallas")
        prims = _primitives(jax.make_jaxpr(grad, static_argnums=3)(q_s, k_s, v_s,
                                                                   "pallas").jaxpr)
    # Every kernel runs inside a shard_map (forward, dk/dv and dq).
    kernels = [inside for name, inside in prims if name == "pallas_call"]
    assert len(kernels) == 3 and all(kernels)
    np.testing.assert_allclose(out * real, out_r * real, atol=1e-5)
    for got, want in zip(grads, grads_r, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert out.sharding.spec == qkv_spec


def test_specs_follow_the_rules_table():
    mesh = make_mesh(2, 2, 2)
    qkv, slopes, rows = attention_specs(mesh, batch=4, heads=4)
    assert qkv == PartitionSpec(("data", "fsdp"), None, "tensor", None)
    assert slopes == PartitionSpec("tensor") and rows == PartitionSpec(("data", "fsdp"), None)
    # 2 rows: only data divides; 3 heads: tensor does not.
    assert attention_specs(mesh, batch=2, heads=3)[0] == PartitionSpec(("data",), None, None,
                                                                       None)


def test_without_a_mesh_it_is_the_plain_kernel():
    q, k, v, _, mask, segments = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    jaxpr = jax.make_jaxpr(lambda q, k, v: sharded_pallas_attention(
        q, k, v, slopes, mask.astype(bool), segments, block_size=BLOCK))(q, k, v).jaxpr
    names = [name for name, _ in _primitives(jaxpr)]
    assert "pallas_call" in names and "shard_map" not in names
