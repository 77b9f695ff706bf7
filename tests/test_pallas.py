"""The Pallas kernels (forward, dk/dv, dq; interpret mode on CPU) against the reference path."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.ops.alibi import alibi_bias, alibi_slopes
from jbert.ops.attention import attention
from jbert.ops.masks import MASK_VALUE, allowed_BLM
from jbert.ops.pallas import pallas_forward

B, H, K = 2, 3, 16  # 3 heads: the slopes of a non-power-of-two head count
BLOCK = 128


def _inputs(length, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (B, length, H, K)) for key in keys)
    mask = jnp.ones((B, length), jnp.int32).at[1, length - 60:].set(0)
    # Three documents, boundaries inside both key blocks; at length 200 the whole third
    # document of row 1 is padding, so its queries have no key at all.
    segments = jnp.repeat(jnp.asarray([[1, 2, 3]] * B, jnp.int32),
                          jnp.asarray([90, 60, length - 150]), axis=1,
                          total_repeat_length=length)
    return q, k, v, w, mask, segments


@pytest.mark.parametrize(("length", "causal", "packed"), [
    (200, False, True),  # 200: not a block multiple, padded to 256 inside
    (256, True, True),
    (200, True, False),
    (256, False, False),
    (300, True, True),  # three blocks: the causal loops start and stop mid-sequence
])
def test_matches_reference_values_and_gradients(length, causal, packed):
    q, k, v, w, mask, segments = _inputs(length)
    slopes = jnp.asarray(alibi_slopes(H))
    segment_ids = segments if packed else None
    real = mask[:, :, None, None]

    def loss(q, k, v, impl):
        out = attention(q, k, v, slopes, mask, segment_ids, causal=causal, impl=impl,
                        block_size=BLOCK)
        return jnp.sum(out * w * real), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (dq_r, dk_r, dv_r), out_r = grad(q, k, v, "reference")
    (dq, dk, dv), out = grad(q, k, v, "pallas")
    np.testing.assert_allclose(out * real, out_r * real, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()
    for got, want in ((dq, dq_r), (dk, dk_r), (dv, dv_r)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bf16_close_to_fp32_reference():
    q, k, v, w, mask, segments = _inputs(200)
    slopes = jnp.asarray(alibi_slopes(H))
    real = mask[:, :, None, None]

    def loss(q, k, v, impl):
        out = attention(q, k, v, slopes, mask, segments, impl=impl, block_size=BLOCK)
        return jnp.sum(out.astype(jnp.float32) * w * real), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (dq_r, dk_r, dv_r), out_r = grad(q, k, v, "reference")
    grads, out = grad(*(x.astype(jnp.bfloat16) for x in (q, k, v)), "pallas")
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    assert np.abs((out.astype(jnp.float32) - out_r) * real).max() < 0.05
    # Gradients reach about 3 here; bf16 probabilities and ds in the products cost ~1e-2.
    for got, want in zip(grads, (dq_r, dk_r, dv_r), strict=True):
        assert np.abs(got.astype(jnp.float32) - want).max() < 0.05


def test_lse_is_logsumexp_of_reference_scores():
    length = 2 * BLOCK
    q, k, v, _, mask, segments = _inputs(length)
    slopes = jnp.asarray(alibi_slopes(H))
    valid = mask.astype(bool)
    out, lse_BHL = jax.jit(pallas_forward, static_argnums=(6, 7, 8))(
        q, k, v, slopes, valid, segments, False, BLOCK, "interpret")
    positions = jnp.arange(length)
    scores = jnp.einsum("blhk,bmhk->bhlm", q, k) / math.sqrt(K)
    ok = allowed_BLM(valid, segments, segments, positions, positions, False)[:, None]
    scores = jnp.where(ok, scores + alibi_bias(slopes, positions, positions)[None], MASK_VALUE)
    np.testing.assert_allclose(lse_BHL, jax.nn.logsumexp(scores, axis=-1), rtol=1e-6)
    assert np.isfinite(np.asarray(out)).all()


def _sub_jaxprs(eqn):
    """The jaxprs inside an equation's parameters (kernel bodies, loop bodies, custom rules)."""
    for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
            sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
            if hasattr(sub, "eqns"):
                yield sub


def _two_long_axes(jaxpr, at_least):
    """Shapes anywhere in `jaxpr` (kernels and sub-jaxprs included) with two axes >= at_least."""
    found = []
    for eqn in jaxpr.eqns:
        for var in (*eqn.invars, *eqn.outvars):
            shape = getattr(getattr(var, "aval", None), "shape", ())
            if sum(n >= at_least for n in shape) >= 2:
                found.append((eqn.primitive.name, shape))
        for sub in _sub_jaxprs(eqn):
            found += _two_long_axes(sub, at_least)
    return found


def _pallas_calls(jaxpr):
    calls = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "pallas_call"]
    for eqn in jaxpr.eqns:
        for sub in _sub_jaxprs(eqn):
            calls += _pallas_calls(sub)
    return calls


def test_kernels_never_see_an_L_by_L_array():
    length = 8 * BLOCK
    q, k, v, w, mask, segments = _inputs(length)
    slopes = jnp.asarray(alibi_slopes(H))

    def loss(q, k, v, impl):
        out = attention(q, k, v, slopes, mask, segments, causal=True, impl=impl,
                        block_size=BLOCK)
        return jnp.sum(out * w)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    pallas = jaxpr(q, k, v, "pallas").jaxpr
    calls = _pallas_calls(pallas)
    # The gradient comes from the two backward kernels, not from a pure-JAX backward.
    assert sorted(call.params["name"] for call in calls) == [
        "alibi_flash_dkdv", "alibi_flash_dq", "alibi_flash_forward"]
    for call in calls:
        for var in call.invars:
            assert sum(n == length for n in var.aval.shape) <= 1, var.aval.shape
    # Forward, kernel bodies and backward: nothing bigger than a [block, block] tile.
    assert _two_long_axes(pallas, 2 * BLOCK) == []
    assert _two_long_axes(jaxpr(q, k, v, "reference").jaxpr, 2 * BLOCK)  # the check can fail


def test_block_size_must_fit_tpu_lanes():
    q, k, v, _, mask, segments = _inputs(200)
    with pytest.raises(ValueError, match="multiple of 128"):
        attention(q, k, v, jnp.asarray(alibi_slopes(H)), mask, impl="pallas", block_size=96)


def test_the_model_on_the_pallas_path_matches_the_reference_path():
    """`attention_impl="pallas"` reaches the kernels from the model (scanned layers, padding)."""
    config = JinaBertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=128, attention_block_size=128)
    params = functional.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 200), 5, 256)
    mask = jnp.ones_like(ids).at[1, 150:].set(0)
    want = functional.forward(config.replace(attention_impl="reference"), params, ids, mask)
    got = functional.forward(config.replace(attention_impl="pallas"), params, ids, mask)
    np.testing.assert_allclose(np.asarray(got)[mask == 1], np.asarray(want)[mask == 1],
                               atol=2e-5)
