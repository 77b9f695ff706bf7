import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbert.ops.alibi import alibi_slopes
from jbert.ops.attention import attention, resolve_impl

B, L, H, K = 2, 150, 6, 16


def _inputs(seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (B, L, H, K)) for key in keys)
    mask = jnp.ones((B, L), jnp.int32).at[1, 101:].set(0)
    segments = jnp.concatenate([jnp.ones((B, 70), jnp.int32), 2 * jnp.ones((B, L - 70),
                                                                           jnp.int32)], axis=1)
    return q, k, v, w, mask, segments


@pytest.mark.parametrize("impl", ["blockwise", "dpa"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_paths_match_reference_values_and_gradients(impl, causal, packed):
    q, k, v, w, mask, segments = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    segment_ids = segments if packed else None
    real = mask[:, :, None, None]

    def loss(q, k, v, impl):
        out = attention(q, k, v, slopes, mask, segment_ids, causal=causal, impl=impl,
                        block_size=32)  # 150 = 4 blocks + a ragged one
        return jnp.sum(out * w * real), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (dq_r, dk_r, dv_r), out_r = grad(q, k, v, "reference")
    (dq, dk, dv), out = grad(q, k, v, impl)
    np.testing.assert_allclose(out * real, out_r * real, atol=1e-5)
    for got, want in ((dq, dq_r), (dk, dk_r), (dv, dv_r)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_padding_keys_get_no_weight():
    q, k, v, _, mask, _ = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    out = attention(q, k, v, slopes, mask, impl="blockwise", block_size=32)
    # Changing keys/values at padded positions must not change real outputs.
    k2 = k.at[1, 101:].set(100.0)
    v2 = v.at[1, 101:].set(-100.0)
    out2 = attention(q, k2, v2, slopes, mask, impl="blockwise", block_size=32)
    np.testing.assert_allclose(out2[1, :101], out[1, :101], atol=1e-6)


def test_segments_do_not_see_each_other():
    q, k, v, _, _, segments = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    for impl in ("reference", "blockwise", "dpa"):
        out = attention(q, k, v, slopes, None, segments, impl=impl, block_size=32)
        v2 = v.at[:, 70:].set(7.0)  # second document only
        out2 = attention(q, k, v2, slopes, None, segments, impl=impl, block_size=32)
        np.testing.assert_allclose(out2[:, :70], out[:, :70], atol=1e-6, err_msg=impl)
        assert not np.allclose(out2[:, 70:], out[:, 70:])


def test_bf16_blockwise_close_to_fp32_reference():
    q, k, v, _, mask, _ = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    ref = attention(q, k, v, slopes, mask, impl="reference")
    got = attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), slopes, mask,
                    impl="blockwise", block_size=32)
    assert got.dtype == jnp.bfloat16
    real = np.asarray(mask)[:, :, None, None].astype(bool)
    assert np.abs(np.where(real, got.astype(jnp.float32) - ref, 0)).max() < 0.05


def test_auto_picks_blockwise_for_long_inputs():
    assert resolve_impl("auto", 8192, 512) == "blockwise"
    assert resolve_impl("auto", 128, 512) in ("reference", "dpa")
    assert resolve_impl("auto", 8192, 512, training_dropout=True) == "reference"
    assert resolve_impl("reference", 8192, 512) == "reference"


def test_blockwise_runs_8192_tokens_forward_and_backward():
    length, heads = 8192, 2
    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(key, (1, length, heads, 16)) for key in keys)
    slopes = jnp.asarray(alibi_slopes(heads))
    mask = jnp.ones((1, length), jnp.int32).at[0, 8000:].set(0)

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, slopes, mask, impl="blockwise", block_size=1024) ** 2)

    # Under jit the peak is O(L * block); the L x L matrix (256 MiB per head) never exists.
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    memory = compiled.memory_analysis()
    if memory is not None:
        assert memory.temp_size_in_bytes < 64 * 2**20
    value, grads = compiled(q, k, v)
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_dropout_only_on_reference():
    q, k, v, _, mask, _ = _inputs()
    slopes = jnp.asarray(alibi_slopes(H))
    with pytest.raises(ValueError, match="dropout"):
        attention(q, k, v, slopes, mask, impl="blockwise", dropout_rate=0.1,
                  dropout_rng=jax.random.key(0))
    out = attention(q, k, v, slopes, mask, dropout_rate=0.5, dropout_rng=jax.random.key(0))
    assert np.isfinite(np.asarray(out)).all()
