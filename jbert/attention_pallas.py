"""Flash attention as one Pallas kernel, with the ALiBi bias computed inside each tile.

The forward pass is a `pl.pallas_call` with grid (batch, head, query block); each program keeps
its query block, loops over key blocks with `jax.lax.fori_loop`, and keeps an fp32 online softmax.
A tile's bias is `-slope * |i - j|` from the head's slope and the tile's row and column indices,
and its mask comes from the key block's segment ids and validity, so nothing of size L x L (nor
one bias per block) exists anywhere. The kernel returns the output and the per-row log-sum-exp;
the backward pass is `attention.flash_backward` (pure JAX, tiles recomputed from the lse, O(L)).

Layout and the tiling it has to respect:
- q, k, v are moved to [B, H, L, K] so a block's last two axes are (sequence, head dim): TPU
  blocks need those divisible by (8, 128) or equal to the array's, hence `block` a multiple of
  128 and K whole. Triton wants power-of-two loads: K must be one (JinaBERT's 64 is).
- Per-row values are columns [C, 1] (query segment ids in, lse out) and per-key values rows
  [1, S] picked from [L // S, S] (key segment ids, key validity), so no tile needs a transpose.
- The head's slope is a [1, 1] block of a [H, 1, 1] array, not an SMEM scalar, to stay
  backend-neutral.
- Each program holds its head's whole k and v ([L, K] each, 2 MiB together at L=8192, K=64,
  bf16).

Verified: interpret mode on CPU (`tests/test_attention_pallas.py`). Not verified: lowering
through Triton or Mosaic, and speed; no accelerator was available when this was written.

Shape letters as in `attention.py`; C query block, S key block (both `block` long).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jbert.attention import MASK_VALUE, flash_backward, pad_length

# TPU lanes: the sequence blocks must be multiples of this.
LANES = 128


def _forward_kernel(slope_ref, q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, valid_k_ref, out_ref,
                    lse_ref, *, causal: bool, block: int, scale: float):
    """One (batch, head, query block): loop over key blocks with an online softmax."""
    i = pl.program_id(2)
    q_CK = q_ref[...]
    slope_11 = slope_ref[...].astype(jnp.float32)
    seg_q_C1 = seg_q_ref[...]
    # 2-D iotas: TPU has no 1-D vectors.
    positions_q_C1 = i * block + jax.lax.broadcasted_iota(jnp.int32, (block, 1), 0)
    columns_1S = jax.lax.broadcasted_iota(jnp.int32, (1, block), 1)

    def key_block(j, carry):
        out_CK, max_C1, sum_C1 = carry
        start = pl.multiple_of(j * block, block)
        k_SK = k_ref[pl.ds(start, block), :]
        v_SK = v_ref[pl.ds(start, block), :]
        seg_k_1S = seg_k_ref[pl.ds(j, 1), :]
        valid_1S = valid_k_ref[pl.ds(j, 1), :]
        scores_CS = jax.lax.dot_general(q_CK, k_SK, (((1,), (1,)), ((), ())),
                                        preferred_element_type=jnp.float32) * scale
        distance_CS = jnp.abs(positions_q_C1 - (start + columns_1S)).astype(jnp.float32)
        ok_CS = (valid_1S != 0) & (seg_q_C1 == seg_k_1S)
        if causal:
            ok_CS &= start + columns_1S <= positions_q_C1
        scores_CS = jnp.where(ok_CS, scores_CS - slope_11 * distance_CS, MASK_VALUE)
        new_max_C1 = jnp.maximum(max_C1, scores_CS.max(axis=1, keepdims=True))
        probs_CS = jnp.exp(scores_CS - new_max_C1)
        correction_C1 = jnp.exp(max_C1 - new_max_C1)
        sum_C1 = sum_C1 * correction_C1 + probs_CS.sum(axis=1, keepdims=True)
        out_CK = out_CK * correction_C1 + jax.lax.dot_general(
            probs_CS.astype(v_SK.dtype), v_SK, (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32)
        return out_CK, new_max_C1, sum_C1

    # MASK_VALUE, not -inf, as the starting max: a row masked so far stays finite.
    init = (jnp.zeros(q_CK.shape, jnp.float32), jnp.full((block, 1), MASK_VALUE, jnp.float32),
            jnp.zeros((block, 1), jnp.float32))
    # Causal: key blocks past the diagonal are fully masked, so the loop stops at block i.
    n_blocks = i + 1 if causal else k_ref.shape[0] // block
    out_CK, max_C1, sum_C1 = jax.lax.fori_loop(0, n_blocks, key_block, init)
    out_ref[...] = (out_CK / sum_C1).astype(out_ref.dtype)
    lse_ref[...] = max_C1 + jnp.log(sum_C1)


def pallas_forward(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array, slopes_H: jax.Array,
                   key_valid_BL: jax.Array, segment_ids_BL: jax.Array, causal: bool, block: int,
                   interpret: bool) -> tuple[jax.Array, jax.Array]:
    """The kernel on inputs whose L is a multiple of `block`: (out [B, L, H, K], lse [B, H, L])."""
    b, length, h, d = q_BLHK.shape
    n = length // block
    q_BHLK, k_BHLK, v_BHLK = (jnp.swapaxes(x, 1, 2) for x in (q_BLHK, k_BLHK, v_BLHK))
    head_block = pl.BlockSpec((None, None, block, d), lambda b, h, i: (b, h, i, 0))
    head_whole = pl.BlockSpec((None, None, length, d), lambda b, h, i: (b, h, 0, 0))
    rows_block = pl.BlockSpec((None, block, 1), lambda b, h, i: (b, i, 0))
    keys_whole = pl.BlockSpec((None, n, block), lambda b, h, i: (b, 0, 0))
    kernel = functools.partial(_forward_kernel, causal=causal, block=block,
                               scale=1.0 / math.sqrt(d))
    out_BHLK, lse_BHL1 = pl.pallas_call(
        kernel,
        grid=(b, h, n),
        in_specs=[pl.BlockSpec((None, 1, 1), lambda b, h, i: (h, 0, 0)),
                  head_block, head_whole, head_whole, rows_block, keys_whole, keys_whole],
        out_specs=[head_block,
                   pl.BlockSpec((None, None, block, 1), lambda b, h, i: (b, h, i, 0))],
        out_shape=[jax.ShapeDtypeStruct(q_BHLK.shape, q_BLHK.dtype),
                   jax.ShapeDtypeStruct((b, h, length, 1), jnp.float32)],
        interpret=interpret,
        name="alibi_flash_forward",
    )(slopes_H.astype(jnp.float32).reshape(h, 1, 1), q_BHLK, k_BHLK, v_BHLK,
      segment_ids_BL[:, :, None], segment_ids_BL.reshape(b, n, block),
      key_valid_BL.astype(jnp.int32).reshape(b, n, block))
    return jnp.swapaxes(out_BHLK, 1, 2), lse_BHL1[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _pallas_flash(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal, block,
                  interpret):
    out_BLHK, _ = pallas_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                                 causal, block, interpret)
    return out_BLHK


def _pallas_flash_fwd(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal,
                      block, interpret):
    out_BLHK, lse_BHL = pallas_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL,
                                       segment_ids_BL, causal, block, interpret)
    residuals = (q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, out_BLHK,
                 lse_BHL)
    return out_BLHK, residuals


def _pallas_flash_bwd(causal, block, interpret, residuals, dout_BLHK):
    return flash_backward(causal, block, residuals, dout_BLHK)


_pallas_flash.defvjp(_pallas_flash_fwd, _pallas_flash_bwd)


def pallas_attention(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array,
                     slopes_H: jax.Array, key_valid_BL: jax.Array, segment_ids_BL: jax.Array,
                     causal: bool = False, block_size: int = 512,
                     interpret: bool | None = None) -> jax.Array:
    """Flash attention through the Pallas kernel; same contract as `blockwise_attention`.

    `block_size` must be a multiple of 128; sequences shorter than it use one block of L rounded
    up to 128. `interpret=None` interprets on CPU and compiles elsewhere.
    """
    if block_size % LANES:
        raise ValueError(f"pallas attention needs block_size a multiple of {LANES}, "
                         f"got {block_size}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    length = q_BLHK.shape[1]
    block = min(block_size, -(-length // LANES) * LANES)
    q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL = pad_length(
        -(-length // block) * block, q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL)
    out_BLHK = _pallas_flash(q_BLHK, k_BLHK, v_BLHK, slopes_H.astype(jnp.float32), key_valid_BL,
                             segment_ids_BL, causal, block, bool(interpret))
    return out_BLHK[:, :length]
