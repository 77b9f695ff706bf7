"""The Pallas attention kernels on sharded inputs: one kernel call per device under `shard_map`.

A `pallas_call` is opaque to the SPMD partitioner: on GPU/TPU, jit given batch- or head-sharded
q, k, v would gather them onto every device and run the whole kernel there. Attention is
independent per (row, head), so each device can run the kernels on its own rows and heads with
no collective at all; this module says so with `jax.shard_map`.

Rows split over the mesh's batch axes (`data`, `fsdp`, as `LOGICAL_AXIS_RULES` maps "batch"),
heads over `tensor` (the "heads" rule), the slopes with their heads. An axis that does not divide
its dimension (or is absent, or of size 1) is left out, and that dimension stays whole on each
device. The mesh is the one given, else the one `jax.set_mesh` made current; with neither (or a
one-device mesh) this is `pallas_attention` itself.

Shape letters as in `attention.py`.
"""

from __future__ import annotations

import functools
import math

import jax
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from jbert.ops.pallas import pallas_attention

BATCH_MESH_AXES = ("data", "fsdp")
HEAD_MESH_AXIS = "tensor"


def _current_mesh() -> Mesh | AbstractMesh | None:
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def _dividing(mesh: Mesh | AbstractMesh, names: tuple[str, ...], size: int) -> tuple[str, ...]:
    """The mesh axes of `names` (in order) that split a dimension of `size`, largest set first:
    an axis of size 1 is dropped, and if the product does not divide `size` the axes are dropped
    from the end until it does."""
    axes = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    return axes


def attention_specs(mesh: Mesh | AbstractMesh, batch: int, heads: int
                    ) -> tuple[PartitionSpec, PartitionSpec, PartitionSpec]:
    """(q/k/v/out [B, L, H, K], slopes [H], mask/segments [B, L]) specs on `mesh`."""
    rows = _dividing(mesh, BATCH_MESH_AXES, batch) or None
    head = _dividing(mesh, (HEAD_MESH_AXIS,), heads)
    head = head[0] if head else None
    return PartitionSpec(rows, None, head, None), PartitionSpec(head), PartitionSpec(rows, None)


def sharded_pallas_attention(q_BLHK: jax.Array, k_BLHK: jax.Array, v_BLHK: jax.Array,
                             slopes_H: jax.Array, key_valid_BL: jax.Array,
                             segment_ids_BL: jax.Array, causal: bool = False,
                             block_size: int = 512, interpret: bool | None = None,
                             mesh: Mesh | AbstractMesh | None = None) -> jax.Array:
    """`pallas_attention` run per device on its rows and heads; same contract and result."""
    mesh = _current_mesh() if mesh is None else mesh
    kernel = functools.partial(pallas_attention, causal=causal, block_size=block_size,
                               interpret=interpret)
    if mesh is None or mesh.size == 1:
        return kernel(q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL)
    qkv, slopes, rows = attention_specs(mesh, q_BLHK.shape[0], q_BLHK.shape[2])
    # check_vma=False: pallas_call has no varying-manual-axes rule of its own; each device's
    # output depends only on its own inputs, which the specs state.
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, slopes, rows, rows),
                         out_specs=qkv, check_vma=False)(
        q_BLHK, k_BLHK, v_BLHK, slopes_H, key_valid_BL, segment_ids_BL)
