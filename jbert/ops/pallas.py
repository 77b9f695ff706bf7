"""Flash attention as Pallas kernels, with the ALiBi bias computed inside each tile.

Three `pl.pallas_call`s, each on grid (batch, head, block):
- forward, one program per query block: loops over key blocks with an fp32 online softmax and
  writes the output and its rows' log-sum-exp (lse);
- dk/dv, one program per key block: loops over query blocks, recomputing each tile's
  probabilities from the saved lse, and accumulates dk and dv;
- dq, one program per query block: loops over key blocks and accumulates dq.
All three build a tile's scores with `_tile_scores`: the bias is `-slope * |i - j|` from the
head's slope and the tile's row and column indices, and the mask comes from the tile's segment
ids and key validity, so nothing of size L x L (nor one bias per block) exists anywhere. The
only other backward input, delta = rowsum(dout * out), is O(L) and computed in plain JAX.
Causal programs skip the blocks that lie wholly above the diagonal.

Layout and the tiling it has to respect:
- q, k, v, dout are moved to [B, H, L, K] so a block's last two axes are (sequence, head dim):
  TPU blocks need those divisible by (8, 128) or equal to the array's, hence `block` a multiple
  of 128 and K whole. Triton wants power-of-two loads: K must be one (JinaBERT's 64 is).
- The forward and dq kernels score tiles as q k^T ([C, S]): per-query values are columns
  [C, 1] of their block (segment ids, lse, delta) and per-key values rows [1, S] picked from
  whole [N, S] arrays (segment ids, validity). The dk/dv kernel scores k q^T ([S, C]), the
  other way round: per-key values are columns of its key block, per-query values rows of
  whole [N, C] arrays. So no tile is transposed, and no whole-length array is a column.
- The head's slope is a [1, 1] block of a [H, 1, 1] array, not an SMEM scalar, to stay
  backend-neutral.
- Each program holds its head's whole other side: k and v in the forward and dq kernels, q,
  dout, lse, delta and the query segment ids in the dk/dv kernel (2 MiB each of q and dout at
  L=8192, K=64, bf16, padded to 128 lanes). On TPU an [L, 1] column is padded to 128 lanes
  too (4 MiB at L=8192): with lse, delta and segment ids as columns the dk/dv kernel needed
  25 MiB of the 16 MiB of scoped VMEM at 8192 tokens (found compiling `:8k` for a v5p), hence
  its rows.

Verified: interpret mode on CPU (`tests/test_pallas.py`), and lowering and compiling through
Mosaic (TPU) and Triton (GPU) for targets this machine does not have
(`tests/test_compile_targets.py`). Not verified: results and speed on an accelerator.

Shape letters as in `attention.py`; C query block, S key block (both `block` long), N the
number of blocks.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jbert.ops.masks import MASK_VALUE, pad_length
from jbert.ops.sharding import target_platform

# TPU lanes: the sequence blocks must be multiples of this.
LANES = 128
# The largest block on GPU: a 128 x 128 fp32 score tile per program fits Triton's registers.
GPU_BLOCK = 128


def _call_options(backend: str) -> dict:
    """`pallas_call` keywords of a kernel backend: "interpret" (CPU), "mosaic" (TPU) or "triton"
    (GPU). The kernels index whole-length refs by block, which Triton's pointer loads allow;
    Mosaic GPU, jax's default GPU backend, would stage those refs in shared memory."""
    if backend == "interpret":
        return {"interpret": True}
    if backend == "triton":
        from jax.experimental.pallas import triton as pallas_triton

        return {"compiler_params": pallas_triton.CompilerParams(num_warps=4, num_stages=2)}
    return {}


# -- what every kernel computes per tile ----------------------------------------------------


def _dot(a: jax.Array, b: jax.Array, transpose_b: bool = False) -> jax.Array:
    """a @ b (or a @ b.T) of 2-D tiles, accumulated in fp32."""
    dims = (((1,), (1 if transpose_b else 0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _tile_scores(a_XK, b_YK, slope_11, seg_a_X1, seg_b_1Y, valid_k, a_start, b_start, *,
                 keys_first, causal, scale):
    """Scaled scores a b^T of one tile plus its ALiBi bias, MASK_VALUE where masked; [X, Y] fp32.

    q k^T (`keys_first=False`: queries on the rows, the keys' validity a [1, Y] row) in the
    forward and dq kernels, k q^T (`keys_first=True`: validity an [X, 1] column) in dk/dv.
    """
    scores_XY = _dot(a_XK, b_YK, transpose_b=True) * scale
    # 2-D iotas: TPU has no 1-D vectors.
    positions_a_X1 = a_start + jax.lax.broadcasted_iota(jnp.int32, (a_XK.shape[0], 1), 0)
    positions_b_1Y = b_start + jax.lax.broadcasted_iota(jnp.int32, (1, b_YK.shape[0]), 1)
    distance_XY = jnp.abs(positions_a_X1 - positions_b_1Y).astype(jnp.float32)
    ok_XY = (valid_k != 0) & (seg_a_X1 == seg_b_1Y)
    if causal:
        keys, queries = ((positions_a_X1, positions_b_1Y) if keys_first
                         else (positions_b_1Y, positions_a_X1))
        ok_XY &= keys <= queries
    return jnp.where(ok_XY, scores_XY - slope_11 * distance_XY, MASK_VALUE)


def _tile_grads(scores_CS, lse_C1, delta_C1, dout_CK, v_SK, scale):
    """A tile's probabilities (from the saved lse) and the gradient of its unscaled q k^T."""
    probs_CS = jnp.exp(scores_CS - lse_C1)
    dprobs_CS = _dot(dout_CK, v_SK, transpose_b=True)
    return probs_CS, probs_CS * (dprobs_CS - delta_C1) * scale


def _key_block(j, block, k_ref, v_ref, seg_k_ref, valid_k_ref):
    """Key block j of refs holding all keys: (start, k [S, K], v [S, K], seg [1, S], valid)."""
    start = pl.multiple_of(j * block, block)
    rows = pl.ds(start, block)
    return (start, k_ref[rows, :], v_ref[rows, :], seg_k_ref[pl.ds(j, 1), :],
            valid_k_ref[pl.ds(j, 1), :])


# -- kernels ----------------------------------------------------------------------------------


def _forward_kernel(slope_ref, q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, valid_k_ref, out_ref,
                    lse_ref, *, causal: bool, block: int, scale: float):
    """One (batch, head, query block): loop over key blocks with an online softmax."""
    i = pl.program_id(2)
    q_CK, slope_11, seg_q_C1 = q_ref[...], slope_ref[...], seg_q_ref[...]

    def key_block(j, carry):
        out_CK, max_C1, sum_C1 = carry
        start, k_SK, v_SK, seg_k_1S, valid_1S = _key_block(j, block, k_ref, v_ref, seg_k_ref,
                                                           valid_k_ref)
        scores_CS = _tile_scores(q_CK, k_SK, slope_11, seg_q_C1, seg_k_1S, valid_1S, i * block,
                                 start, keys_first=False, causal=causal, scale=scale)
        new_max_C1 = jnp.maximum(max_C1, scores_CS.max(axis=1, keepdims=True))
        probs_CS = jnp.exp(scores_CS - new_max_C1)
        correction_C1 = jnp.exp(max_C1 - new_max_C1)
        sum_C1 = sum_C1 * correction_C1 + probs_CS.sum(axis=1, keepdims=True)
        out_CK = out_CK * correction_C1 + _dot(probs_CS.astype(v_SK.dtype), v_SK)
        return out_CK, new_max_C1, sum_C1

    # MASK_VALUE, not -inf, as the starting max: a row masked so far stays finite.
    init = (jnp.zeros(q_CK.shape, jnp.float32), jnp.full((block, 1), MASK_VALUE, jnp.float32),
            jnp.zeros((block, 1), jnp.float32))
    # Causal: key blocks past the diagonal are fully masked, so the loop stops at block i.
    n_blocks = i + 1 if causal else k_ref.shape[0] // block
    out_CK, max_C1, sum_C1 = jax.lax.fori_loop(0, n_blocks, key_block, init)
    out_ref[...] = (out_CK / sum_C1).astype(out_ref.dtype)
    lse_ref[...] = max_C1 + jnp.log(sum_C1)


def _dkdv_kernel(slope_ref, q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, valid_k_ref, dout_ref,
                 lse_ref, delta_ref, dk_ref, dv_ref, *, causal: bool, block: int, scale: float):
    """One (batch, head, key block): dk and dv summed over query blocks.

    Tiles are scored as k q^T ([S, C]): the per-query values this program holds for the whole
    length (segment ids, lse, delta) are then rows of [N, C] arrays, where as [L, 1] columns
    TPU would pad each to 128 lanes (4 MiB apiece at L = 8192, over the 16 MiB of scoped VMEM
    with q and dout); and dv, dk need no transposed tile.
    """
    j = pl.program_id(2)
    k_SK, v_SK, slope_11 = k_ref[...], v_ref[...], slope_ref[...]
    seg_k_S1, valid_S1 = seg_k_ref[...], valid_k_ref[...]

    def query_block(i, carry):
        dk_SK, dv_SK = carry
        start = pl.multiple_of(i * block, block)
        rows = pl.ds(start, block)
        q_CK, dout_CK = q_ref[rows, :], dout_ref[rows, :]
        query = pl.ds(i, 1)
        scores_SC = _tile_scores(k_SK, q_CK, slope_11, seg_k_S1, seg_q_ref[query, :], valid_S1,
                                 j * block, start, keys_first=True, causal=causal, scale=scale)
        probs_SC = jnp.exp(scores_SC - lse_ref[query, :])
        dprobs_SC = _dot(v_SK, dout_CK, transpose_b=True)
        dscores_SC = probs_SC * (dprobs_SC - delta_ref[query, :]) * scale
        dv_SK += _dot(probs_SC.astype(dout_CK.dtype), dout_CK)
        dk_SK += _dot(dscores_SC.astype(q_CK.dtype), q_CK)
        return dk_SK, dv_SK

    zeros_SK = jnp.zeros(k_SK.shape, jnp.float32)
    # Causal: query blocks before the diagonal see none of this key block.
    first = j if causal else 0
    dk_SK, dv_SK = jax.lax.fori_loop(first, q_ref.shape[0] // block, query_block,
                                     (zeros_SK, zeros_SK))
    dk_ref[...] = dk_SK.astype(dk_ref.dtype)
    dv_ref[...] = dv_SK.astype(dv_ref.dtype)


def _dq_kernel(slope_ref, q_ref, k_ref, v_ref, seg_q_ref, seg_k_ref, valid_k_ref, dout_ref,
               lse_ref, delta_ref, dq_ref, *, causal: bool, block: int, scale: float):
    """One (batch, head, query block): dq summed over key blocks."""
    i = pl.program_id(2)
    q_CK, dout_CK, slope_11, seg_q_C1 = q_ref[...], dout_ref[...], slope_ref[...], seg_q_ref[...]
    lse_C1, delta_C1 = lse_ref[...], delta_ref[...]

    def key_block(j, dq_CK):
        start, k_SK, v_SK, seg_k_1S, valid_1S = _key_block(j, block, k_ref, v_ref, seg_k_ref,
                                                           valid_k_ref)
        scores_CS = _tile_scores(q_CK, k_SK, slope_11, seg_q_C1, seg_k_1S, valid_1S, i * block,
                                 start, keys_first=False, causal=causal, scale=scale)
        _, dscores_CS = _tile_grads(scores_CS, lse_C1, delta_C1, dout_CK, v_SK, scale)
        return dq_CK + _dot(dscores_CS.astype(k_SK.dtype), k_SK)

    n_blocks = i + 1 if causal else k_ref.shape[0] // block
    dq_CK = jax.lax.fori_loop(0, n_blocks, key_block, jnp.zeros(q_CK.shape, jnp.float32))
    dq_ref[...] = dq_CK.astype(dq_ref.dtype)


# -- calls ------------------------------------------------------------------------------------


def _head_spec(length: int, block: int, cols: int, blocked: bool) -> pl.BlockSpec:
    """One (batch, head) of a [B, H, L, cols] array: the grid's block of rows, or all of them."""
    if blocked:
        return pl.BlockSpec((None, None, block, cols), lambda b, h, n: (b, h, n, 0))
    return pl.BlockSpec((None, None, length, cols), lambda b, h, n: (b, h, 0, 0))


def _in_specs(length: int, block: int, d: int) -> list[pl.BlockSpec]:
    """Specs of (slopes, q, k, v, seg_q, seg_k, valid_k, dout, lse, delta) on (batch, head, block)
    for the forward and dq kernels: the grid's block is a query block, the keys are whole."""
    seg_q = pl.BlockSpec((None, block, 1), lambda b, h, n: (b, n, 0))
    # Key segment ids and validity stay whole ([N, S]); kernels pick their [1, S] rows.
    key_rows = pl.BlockSpec((None, length // block, block), lambda b, h, n: (b, 0, 0))
    return [pl.BlockSpec((None, 1, 1), lambda b, h, n: (h, 0, 0)),
            _head_spec(length, block, d, True), _head_spec(length, block, d, False),
            _head_spec(length, block, d, False), seg_q, key_rows, key_rows,
            _head_spec(length, block, d, True), _head_spec(length, block, 1, True),
            _head_spec(length, block, 1, True)]


def _dkdv_in_specs(length: int, block: int, d: int) -> list[pl.BlockSpec]:
    """Specs of the dk/dv kernel's operands (`_dkdv_kernel`): the grid's block is a key block
    (k, v, and the keys' segment ids and validity as [S, 1] columns); the queries are whole,
    their per-row values as [N, C] rows."""
    key_column = pl.BlockSpec((None, block, 1), lambda b, h, n: (b, n, 0))
    query_rows = pl.BlockSpec((None, length // block, block), lambda b, h, n: (b, 0, 0))
    head_rows = pl.BlockSpec((None, None, length // block, block), lambda b, h, n: (b, h, 0, 0))
    return [pl.BlockSpec((None, 1, 1), lambda b, h, n: (h, 0, 0)),
            _head_spec(length, block, d, False), _head_spec(length, block, d, True),
            _head_spec(length, block, d, True), query_rows, key_column, key_column,
            _head_spec(length, block, d, False), head_rows, head_rows]


def _kernel_operands(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, block):
    """The inputs every kernel starts with, in kernel order, in the layout the specs expect."""
    b, length = segment_ids_BL.shape
    n = length // block
    return (slopes_H.astype(jnp.float32).reshape(-1, 1, 1),
            *(jnp.swapaxes(x, 1, 2) for x in (q_BLHK, k_BLHK, v_BLHK)),
            segment_ids_BL[:, :, None], segment_ids_BL.reshape(b, n, block),
            key_valid_BL.astype(jnp.int32).reshape(b, n, block))


def _forward(operands, causal, block, backend):
    """The forward kernel on `_kernel_operands`: (out [B, H, L, K], lse [B, H, L, 1])."""
    q_BHLK = operands[1]
    b, h, length, d = q_BHLK.shape
    kernel = functools.partial(_forward_kernel, causal=causal, block=block,
                               scale=1.0 / math.sqrt(d))
    out_BHLK, lse_BHL1 = pl.pallas_call(
        kernel,
        grid=(b, h, length // block),
        in_specs=_in_specs(length, block, d)[:7],
        out_specs=[_head_spec(length, block, d, True), _head_spec(length, block, 1, True)],
        out_shape=[jax.ShapeDtypeStruct(q_BHLK.shape, q_BHLK.dtype),
                   jax.ShapeDtypeStruct((b, h, length, 1), jnp.float32)],
        **_call_options(backend),
        name="alibi_flash_forward",
    )(*operands)
    return out_BHLK, lse_BHL1


def _backward(operands, out_BHLK, lse_BHL1, dout_BHLK, causal, block, backend):
    """The dk/dv and dq kernels: (dq, dk, dv), each [B, H, L, K]."""
    _, q_BHLK, k_BHLK, v_BHLK = operands[:4]
    b, h, length, d = q_BHLK.shape
    # delta_i = sum_k dout_ik * out_ik, the softmax Jacobian's diagonal term: O(L), so plain JAX.
    delta_BHL1 = jnp.sum(dout_BHLK.astype(jnp.float32) * out_BHLK.astype(jnp.float32), axis=-1,
                         keepdims=True)
    all_operands = (*operands, dout_BHLK, lse_BHL1, delta_BHL1)
    settings = dict(causal=causal, block=block, scale=1.0 / math.sqrt(d))
    grid = (b, h, length // block)
    n = length // block
    slopes, _, _, _, seg_column_BL1, seg_rows_BNS, valid_rows_BNS = operands
    dkdv_operands = (slopes, q_BHLK, k_BHLK, v_BHLK, seg_rows_BNS, seg_column_BL1,
                     valid_rows_BNS.reshape(b, length, 1), dout_BHLK,
                     lse_BHL1.reshape(b, h, n, block), delta_BHL1.reshape(b, h, n, block))
    dk_BHLK, dv_BHLK = pl.pallas_call(
        functools.partial(_dkdv_kernel, **settings),
        grid=grid,
        in_specs=_dkdv_in_specs(length, block, d),
        out_specs=[_head_spec(length, block, d, True)] * 2,
        out_shape=[jax.ShapeDtypeStruct(k_BHLK.shape, k_BHLK.dtype),
                   jax.ShapeDtypeStruct(v_BHLK.shape, v_BHLK.dtype)],
        **_call_options(backend),
        name="alibi_flash_dkdv",
    )(*dkdv_operands)
    dq_BHLK = pl.pallas_call(
        functools.partial(_dq_kernel, **settings),
        grid=grid,
        in_specs=_in_specs(length, block, d),
        out_specs=_head_spec(length, block, d, True),
        out_shape=jax.ShapeDtypeStruct(q_BHLK.shape, q_BHLK.dtype),
        **_call_options(backend),
        name="alibi_flash_dq",
    )(*all_operands)
    return dq_BHLK, dk_BHLK, dv_BHLK


def pallas_forward(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array, slopes_H: jax.Array,
                   key_valid_BL: jax.Array, segment_ids_BL: jax.Array, causal: bool, block: int,
                   backend: str) -> tuple[jax.Array, jax.Array]:
    """The forward kernel on L a multiple of `block` with a `backend` of `_call_options`: out
    [B, L, H, K], lse [B, H, L]."""
    operands = _kernel_operands(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                                block)
    out_BHLK, lse_BHL1 = _forward(operands, causal, block, backend)
    return jnp.swapaxes(out_BHLK, 1, 2), lse_BHL1[..., 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _pallas_flash(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal, block,
                  backend):
    out_BLHK, _ = pallas_forward(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                                 causal, block, backend)
    return out_BLHK


def _pallas_flash_fwd(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL, causal,
                      block, backend):
    operands = _kernel_operands(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL,
                                block)
    out_BHLK, lse_BHL1 = _forward(operands, causal, block, backend)
    # The operands are saved already transposed, so the backward does not transpose them again.
    return jnp.swapaxes(out_BHLK, 1, 2), (operands, out_BHLK, lse_BHL1)


def _pallas_flash_bwd(causal, block, backend, residuals, dout_BLHK):
    operands, out_BHLK, lse_BHL1 = residuals
    grads = _backward(operands, out_BHLK, lse_BHL1, jnp.swapaxes(dout_BLHK, 1, 2), causal, block,
                      backend)
    dq_BLHK, dk_BLHK, dv_BLHK = (jnp.swapaxes(x, 1, 2) for x in grads)
    return dq_BLHK, dk_BLHK, dv_BLHK, None, None, None


_pallas_flash.defvjp(_pallas_flash_fwd, _pallas_flash_bwd)


def pallas_attention(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array,
                     slopes_H: jax.Array, key_valid_BL: jax.Array, segment_ids_BL: jax.Array,
                     causal: bool = False, block_size: int = 512,
                     interpret: bool | None = None) -> jax.Array:
    """Flash attention through the Pallas kernels; same contract as `blockwise_attention`.

    `block_size` must be a multiple of 128; sequences shorter than it use one block of L rounded
    up to 128. On GPU the block is at most `GPU_BLOCK` (Triton holds a tile's fp32 scores in
    registers). `interpret=None` interprets on CPU and compiles elsewhere; the platform is the
    one being compiled for (`target_platform`: a TPU or GPU target compiled from a CPU host
    lowers the real kernels).
    """
    if block_size % LANES:
        raise ValueError(f"pallas attention needs block_size a multiple of {LANES}, "
                         f"got {block_size}")
    platform = target_platform()
    backend = "interpret" if (platform == "cpu" if interpret is None else interpret) else (
        "triton" if platform == "gpu" else "mosaic")
    if backend == "triton":
        block_size = min(block_size, GPU_BLOCK)
    length = q_BLHK.shape[1]
    block = min(block_size, -(-length // LANES) * LANES)
    q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL = pad_length(
        -(-length // block) * block, q_BLHK, k_BLHK, v_BLHK, key_valid_BL, segment_ids_BL)
    out_BLHK = _pallas_flash(q_BLHK, k_BLHK, v_BLHK, slopes_H.astype(jnp.float32), key_valid_BL,
                             segment_ids_BL, causal, block, backend)
    return out_BLHK[:, :length]
