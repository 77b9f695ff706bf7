"""The accelerator paths compiled for real, against the reference path: the Pallas kernels
(forward, dk/dv, dq; `interpret=False`) and `jax.nn.dot_product_attention` with cuDNN.

Marked `gpu`: skipped unless JAX sees a GPU (tests/conftest.py; `bench/accelerator_check.py`
runs them with `JAX_PLATFORMS=''`). The CPU suite checks the same kernels in interpret mode
(tests/test_attention_pallas.py). fp32 products run at `highest` precision: by default XLA and
Triton may use TF32 for fp32 dots on NVIDIA GPUs, which alone costs ~1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbert.ops.alibi import alibi_slopes
from jbert.ops.attention import dpa_attention, reference_attention
from jbert.ops.pallas import pallas_attention

pytestmark = pytest.mark.gpu

B, L, H, K = 2, 1000, 4, 64  # 1000: padded inside to a block multiple
# Max |error| against the fp32 reference; bf16 rounds inputs, probabilities and ds.
TOL = {"float32": 2e-4, "bfloat16": 6e-2}


def _inputs(dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q, k, v, w = (jax.random.normal(key, (B, L, H, K)) for key in keys)
    valid = jnp.ones((B, L), bool).at[1, L - 100:].set(False)
    segments = jnp.repeat(jnp.asarray([[1, 2, 3]] * B, jnp.int32), jnp.asarray([300, 500, 200]),
                          axis=1, total_repeat_length=L)
    return [x.astype(dtype) for x in (q, k, v)], w, valid, segments


def _value_and_grads(fn, dtype, causal):
    (q, k, v), w, valid, segments = _inputs(dtype)
    slopes = jnp.asarray(alibi_slopes(H))
    real = valid[:, :, None, None]

    def loss(q, k, v):
        out = fn(q, k, v, slopes, valid, segments, causal)
        return jnp.sum(out.astype(jnp.float32) * w * real), out

    with jax.default_matmul_precision("highest"):
        grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return [np.asarray(x.astype(jnp.float32)) for x in (out * real, *grads)]


def _assert_close(got, want, dtype):
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        err = float(np.abs(g - r).max())
        assert err < TOL[dtype], f"{name}: max |error| {err:.2e} >= {TOL[dtype]} ({dtype})"


def _reference(q, k, v, slopes, valid, segments, causal):
    return reference_attention(q, k, v, slopes, valid, segments, causal)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("causal", "block"), [(False, 128), (True, 128), (False, 512)])
def test_pallas_compiled_matches_reference(dtype, causal, block):
    def pallas(q, k, v, slopes, valid, segments, causal):
        return pallas_attention(q, k, v, slopes, valid, segments, causal, block,
                                interpret=False)

    want = _value_and_grads(_reference, "float32", causal)
    _assert_close(_value_and_grads(pallas, dtype, causal), want, dtype)


@pytest.mark.parametrize(("dtype", "implementation"),
                         [("float32", None), ("bfloat16", None), ("bfloat16", "cudnn")])
def test_dpa_matches_reference(dtype, implementation):
    """cuDNN's fused attention takes bf16/fp16 only; `None` is XLA's (what `impl="dpa"` runs)."""
    def dpa(q, k, v, slopes, valid, segments, causal):
        return dpa_attention(q, k, v, slopes, valid, segments, causal, implementation)

    want = _value_and_grads(_reference, "float32", False)
    _assert_close(_value_and_grads(dpa, dtype, False), want, dtype)
