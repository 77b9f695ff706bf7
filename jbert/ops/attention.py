"""Attention with symmetric ALiBi behind one function, four ways of computing it.

- `reference`: einsum scores, the [B, H, L, L] bias materialised, softmax (normalised after the
  value product). Ground truth.
- `blockwise`: query chunks x key blocks with an online softmax; the ALiBi bias and the mask are
  computed per tile from positions, and the backward pass recomputes tiles from the saved
  log-sum-exp (custom VJP), so neither pass holds an L x L array: memory grows linearly in L.
- `dpa`: `jax.nn.dot_product_attention`, the platform's fused kernel where it has one.
- `pallas`: the blockwise algorithm as Pallas kernels (`pallas.py`: forward, dk/dv,
  dq), bias computed in-tile; what `auto` takes on TPU (Mosaic) and GPU (Triton).

Masking is one rule for every path: query i may attend to key j iff key j is real
(`attention_mask`), both lie in the same packed document (`segment_ids`), and, for causal
attention, j <= i. Rows with no allowed key (padding queries) get finite, meaningless values.

Shape letters: B batch, L query length, M key length, H heads, K head dim, C query chunk,
S key block.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jbert.ops.alibi import alibi_bias
from jbert.ops.masks import MASK_VALUE, allowed_BLM, pad_length
from jbert.ops.sharding import target_platform


def _tile_bias_BHLM(slopes_H, key_valid_BM, segment_q_BL, segment_k_BM, positions_q_L,
                    positions_k_M, causal):
    ok_BLM = allowed_BLM(key_valid_BM, segment_q_BL, segment_k_BM, positions_q_L,
                         positions_k_M, causal)
    bias_HLM = alibi_bias(slopes_H, positions_q_L, positions_k_M)
    return jnp.where(ok_BLM[:, None], bias_HLM[None], MASK_VALUE)


def reference_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                        causal=False, dropout_rate=0.0, dropout_rng=None):
    """Materialised scores; the path every other one is checked against."""
    length = q_BLHK.shape[1]
    positions_L = jnp.arange(length)
    scale = 1.0 / math.sqrt(q_BLHK.shape[-1])
    scores_BHLM = jnp.einsum("blhk,bmhk->bhlm", q_BLHK, k_BLHK,
                             preferred_element_type=jnp.float32) * scale
    scores_BHLM += _tile_bias_BHLM(slopes_H, key_valid_BL, segment_ids_BL, segment_ids_BL,
                                   positions_L, positions_L, causal)
    # Softmax with the normalisation moved after the value product: dividing the [B, L, H, K]
    # context instead of the [B, H, L, M] probabilities saves two L x L passes forward and
    # backward (about 20% of attention's fwd+bwd on CPU at 512 tokens). The max is only a shift
    # the result does not depend on, so no gradient flows through it.
    max_BHL1 = jax.lax.stop_gradient(scores_BHLM.max(axis=-1, keepdims=True))
    weights_BHLM = jnp.exp(scores_BHLM - max_BHL1)
    sum_BHL = weights_BHLM.sum(axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep_BHLM = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights_BHLM.shape)
        weights_BHLM = jnp.where(keep_BHLM, weights_BHLM / (1.0 - dropout_rate), 0.0)
    ctx_BLHK = jnp.einsum("bhlm,bmhk->blhk", weights_BHLM.astype(v_BLHK.dtype), v_BLHK,
                          preferred_element_type=jnp.float32)
    return (ctx_BLHK / jnp.swapaxes(sum_BHL, 1, 2)[..., None]).astype(v_BLHK.dtype)


def dpa_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                  causal=False, implementation=None):
    """`jax.nn.dot_product_attention` with the ALiBi bias and the mask passed in."""
    positions_L = jnp.arange(q_BLHK.shape[1])
    bias_1HLM = alibi_bias(slopes_H, positions_L, positions_L)[None].astype(q_BLHK.dtype)
    ok_B1LM = allowed_BLM(key_valid_BL, segment_ids_BL, segment_ids_BL, positions_L,
                          positions_L, causal)[:, None]
    return jax.nn.dot_product_attention(q_BLHK, k_BLHK, v_BLHK, bias=bias_1HLM, mask=ok_B1LM,
                                        implementation=implementation)


# -- blockwise ------------------------------------------------------------------------------


def blockwise_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                        causal=False, block_size=512):
    """Flash-style attention in O(L) memory, forward and backward."""
    length = q_BLHK.shape[1]
    block = min(block_size, length)
    q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL = pad_length(
        -(-length // block) * block, q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL)
    out_BLHK = _flash(q_BLHK, k_BLHK, v_BLHK, slopes_H.astype(jnp.float32), key_valid_BL,
                      segment_ids_BL, causal, block)
    return out_BLHK[:, :length]


def _tile_scores(q_BCHK, k_BSHK, slopes_H, valid_BS, seg_q_BC, seg_k_BS, i, j, block, causal):
    """Scaled scores plus ALiBi and mask for query chunk i and key block j, [B, H, C, S] fp32."""
    scale = 1.0 / math.sqrt(q_BCHK.shape[-1])
    positions_q_C = i * block + jnp.arange(block)
    positions_k_S = j * block + jnp.arange(block)
    scores_BHCS = jnp.einsum("bchk,bshk->bhcs", q_BCHK, k_BSHK,
                             preferred_element_type=jnp.float32) * scale
    return scores_BHCS + _tile_bias_BHLM(slopes_H, valid_BS, seg_q_BC, seg_k_BS, positions_q_C,
                                         positions_k_S, causal)


def _blocks(x_BL, block):
    """[B, L, ...] -> [L // block, B, block, ...] for scanning."""
    b, length = x_BL.shape[:2]
    x = x_BL.reshape(b, length // block, block, *x_BL.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _unblocks(x_NBC):
    n, b, c = x_NBC.shape[:3]
    return jnp.moveaxis(x_NBC, 0, 1).reshape(b, n * c, *x_NBC.shape[3:])


def _flash_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal,
                   block):
    k_NBSHK, v_NBSHK = _blocks(k_BLHK, block), _blocks(v_BLHK, block)
    valid_NBS, seg_NBS = _blocks(key_valid_BL, block), _blocks(segment_ids_BL, block)
    b, _, h, d = q_BLHK.shape

    def query_chunk(i, q_BCHK, seg_q_BC):
        def key_block(carry, xs):
            out_BCHK, max_BHC, sum_BHC = carry
            j, k_BSHK, v_BSHK, valid_BS, seg_k_BS = xs
            scores_BHCS = _tile_scores(q_BCHK, k_BSHK, slopes_H, valid_BS, seg_q_BC, seg_k_BS,
                                       i, j, block, causal)
            new_max_BHC = jnp.maximum(max_BHC, scores_BHCS.max(-1))
            probs_BHCS = jnp.exp(scores_BHCS - new_max_BHC[..., None])
            correction_BHC = jnp.exp(max_BHC - new_max_BHC)
            sum_BHC = sum_BHC * correction_BHC + probs_BHCS.sum(-1)
            out_BCHK = out_BCHK * jnp.swapaxes(correction_BHC, 1, 2)[..., None] + jnp.einsum(
                "bhcs,bshk->bchk", probs_BHCS.astype(v_BSHK.dtype), v_BSHK,
                preferred_element_type=jnp.float32)
            return (out_BCHK, new_max_BHC, sum_BHC), None

        init = (jnp.zeros((b, block, h, d), jnp.float32),
                jnp.full((b, h, block), MASK_VALUE, jnp.float32),
                jnp.zeros((b, h, block), jnp.float32))
        n_blocks = k_NBSHK.shape[0]
        (out_BCHK, max_BHC, sum_BHC), _ = jax.lax.scan(
            key_block, init, (jnp.arange(n_blocks), k_NBSHK, v_NBSHK, valid_NBS, seg_NBS))
        out_BCHK = out_BCHK / jnp.swapaxes(sum_BHC, 1, 2)[..., None]
        return out_BCHK, max_BHC + jnp.log(sum_BHC)

    n_chunks = q_BLHK.shape[1] // block
    out_NBCHK, lse_NBHC = jax.lax.map(
        lambda xs: query_chunk(*xs),
        (jnp.arange(n_chunks), _blocks(q_BLHK, block), _blocks(segment_ids_BL, block)))
    out_BLHK = _unblocks(out_NBCHK).astype(q_BLHK.dtype)
    lse_BHL = jnp.moveaxis(lse_NBHC, 0, 2).reshape(b, h, -1)
    return out_BLHK, lse_BHL


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal, block):
    out_BLHK, _ = _flash_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                                 causal, block)
    return out_BLHK


def _flash_fwd(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal, block):
    out_BLHK, lse_BHL = _flash_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL,
                                       segment_ids_BL, causal, block)
    residuals = (q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, out_BLHK,
                 lse_BHL)
    return out_BLHK, residuals


def _flash_bwd(causal, block, residuals, dout_BLHK):
    """Gradients of flash attention from the forward's residuals, tile by tile in O(L) memory."""
    q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, out_BLHK, lse_BHL = residuals
    scale = 1.0 / math.sqrt(q_BLHK.shape[-1])
    # delta_i = sum_k dout_ik * out_ik: the softmax Jacobian's diagonal correction.
    delta_BHL = jnp.einsum("blhk,blhk->bhl", dout_BLHK.astype(jnp.float32),
                           out_BLHK.astype(jnp.float32))
    k_NBSHK, v_NBSHK = _blocks(k_BLHK, block), _blocks(v_BLHK, block)
    valid_NBS, seg_NBS = _blocks(key_valid_BL, block), _blocks(segment_ids_BL, block)
    n_blocks = k_NBSHK.shape[0]

    def query_chunk(carry, xs):
        dk_BLHK, dv_BLHK = carry
        i, q_BCHK, dout_BCHK, seg_q_BC, lse_BHC, delta_BHC = xs

        def key_block(dq_BCHK, ys):
            j, k_BSHK, v_BSHK, valid_BS, seg_k_BS = ys
            scores_BHCS = _tile_scores(q_BCHK, k_BSHK, slopes_H, valid_BS, seg_q_BC, seg_k_BS,
                                       i, j, block, causal)
            probs_BHCS = jnp.exp(scores_BHCS - lse_BHC[..., None])
            dv_BSHK = jnp.einsum("bhcs,bchk->bshk", probs_BHCS, dout_BCHK,
                                 preferred_element_type=jnp.float32)
            dprobs_BHCS = jnp.einsum("bchk,bshk->bhcs", dout_BCHK, v_BSHK,
                                     preferred_element_type=jnp.float32)
            dscores_BHCS = probs_BHCS * (dprobs_BHCS - delta_BHC[..., None]) * scale
            dq_BCHK = dq_BCHK + jnp.einsum("bhcs,bshk->bchk", dscores_BHCS, k_BSHK,
                                           preferred_element_type=jnp.float32)
            dk_BSHK = jnp.einsum("bhcs,bchk->bshk", dscores_BHCS, q_BCHK,
                                 preferred_element_type=jnp.float32)
            return dq_BCHK, (dk_BSHK, dv_BSHK)

        dq_BCHK, (dk_NBSHK, dv_NBSHK) = jax.lax.scan(
            key_block, jnp.zeros(q_BCHK.shape, jnp.float32),
            (jnp.arange(n_blocks), k_NBSHK, v_NBSHK, valid_NBS, seg_NBS))
        carry = (dk_BLHK + _unblocks(dk_NBSHK), dv_BLHK + _unblocks(dv_NBSHK))
        return carry, dq_BCHK

    lse_NBHC = jnp.moveaxis(lse_BHL.reshape(*lse_BHL.shape[:2], -1, block), 2, 0)
    delta_NBHC = jnp.moveaxis(delta_BHL.reshape(*delta_BHL.shape[:2], -1, block), 2, 0)
    zeros = jnp.zeros(k_BLHK.shape, jnp.float32)
    (dk_BLHK, dv_BLHK), dq_NBCHK = jax.lax.scan(
        query_chunk, (zeros, zeros),
        (jnp.arange(n_blocks), _blocks(q_BLHK, block), _blocks(dout_BLHK, block),
         _blocks(segment_ids_BL, block), lse_NBHC, delta_NBHC))
    dq_BLHK = _unblocks(dq_NBCHK)
    return (dq_BLHK.astype(q_BLHK.dtype), dk_BLHK.astype(k_BLHK.dtype),
            dv_BLHK.astype(v_BLHK.dtype), None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# -- the one entry point --------------------------------------------------------------------


def resolve_impl(impl: str, length: int, block_size: int, training_dropout: bool = False,
                 platform: str | None = None) -> str:
    """Which path `impl="auto"` takes for a sequence length on `platform` (default: the one
    being compiled for, `target_platform()`, so an ahead-of-time compile for a TPU or GPU
    target takes the path a run there takes).

    Attention-probability dropout exists only on the reference path. On TPU and GPU the Pallas
    flash kernels from 128 tokens on: no L x L array in either pass, which makes the paper
    recipes fit (docs/scaling.md: the reference path at 512 tokens needs ~110 GiB per H100 for
    the pretraining batch). On CPU, beyond two blocks the blockwise path is both lighter and
    faster (docs/attention.md); below, one fused call wins.
    """
    if impl != "auto":
        return impl
    if training_dropout:
        return "reference"
    if (platform or target_platform()) in ("tpu", "gpu"):
        # The kernels' blocks are multiples of the TPU's 128 lanes (other sizes go blockwise),
        # and a shorter sequence would be padded to one: its L x L scores are small anyway.
        if length < 128:
            return "reference"
        return "pallas" if block_size % 128 == 0 else "blockwise"
    return "blockwise" if length > 2 * block_size else "reference"


def attention(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array, slopes_H: jax.Array,
              attention_mask_BL: jax.Array | None = None,
              segment_ids_BL: jax.Array | None = None, *, causal: bool = False,
              impl: str = "auto", block_size: int = 512, dropout_rate: float = 0.0,
              dropout_rng: jax.Array | None = None) -> jax.Array:
    """Multi-head attention with symmetric ALiBi; returns the context [B, L, H, K].

    `attention_mask_BL` is 1 at real tokens and 0 at padding; `segment_ids_BL` numbers the
    documents packed into a row (attention stays inside one). Both default to "all one".
    """
    b, length = q_BLHK.shape[:2]
    key_valid_BL = (jnp.ones((b, length), bool) if attention_mask_BL is None
                    else attention_mask_BL.astype(bool))
    segment_ids_BL = (jnp.zeros((b, length), jnp.int32) if segment_ids_BL is None
                      else segment_ids_BL.astype(jnp.int32))
    use_dropout = dropout_rate > 0.0 and dropout_rng is not None
    impl = resolve_impl(impl, length, block_size, use_dropout)
    if use_dropout and impl != "reference":
        raise ValueError(f"attention dropout is only implemented on the reference path, not {impl}")
    if impl == "reference":
        return reference_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL,
                                   segment_ids_BL, causal, dropout_rate, dropout_rng)
    if impl == "blockwise":
        return blockwise_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL,
                                   segment_ids_BL, causal, block_size)
    if impl == "dpa":
        return dpa_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                             causal)
    if impl == "pallas":
        # Imported here so that Pallas stays off the other paths. Under `jax.set_mesh` the
        # kernels run per device on its rows and heads (shard_map).
        from jbert.ops.pallas_sharded import sharded_pallas_attention

        return sharded_pallas_attention(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL,
                                        segment_ids_BL, causal, block_size)
    raise ValueError(f"unknown attention impl {impl!r}")
