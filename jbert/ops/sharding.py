"""The one table that maps logical axis names to mesh axes, and the mesh itself.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state
sharded), `tensor` (heads, MLP width and vocab split across devices). The batch is split over
data x fsdp; weights are split over fsdp on their model dimension and over tensor on their
heads/MLP/vocab dimension.

Activations use the same table through `constrain(x, names)`: the hidden states between layers
are (batch, length, act_embed), rows over data x fsdp and the model dimension whole on every
device; inside attention q, k, v and the context are (batch, length, heads, head_dim), the
heads over tensor; the MLP's hidden activations are (batch, length, mlp), its width over tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("type_vocab", None),
    ("norm", None),
    ("labels", None),
    ("lora_rank", None),  # LoRA adapters' rank dimension: small, on every device
    # activations only
    ("act_embed", None),
    ("head_dim", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)
# The mesh axes the global batch is split over (rows of every batch-major array).
BATCH_AXES: tuple[str, ...] = _RULES["batch"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axes; -1 for `data` takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if size == 0 or size < -1 or (size == -1 and name != "data"):
            raise ValueError(f"mesh.{name}={size}: must be a positive integer (or -1 for data)")
    if data == -1:
        if len(devices) % (fsdp * tensor):
            raise ValueError(f"mesh.fsdp={fsdp} x mesh.tensor={tensor} does not divide the "
                             f"{len(devices)} devices")
        sizes["data"] = len(devices) // (fsdp * tensor)
    shape = tuple(sizes[a] for a in MESH_AXES)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = "
                         f"{math.prod(shape)} devices, but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """The PartitionSpec for a tuple of logical names.

    With `shape` and `mesh`, a dimension that the mapped mesh axes do not divide stays
    replicated (say a 2-way token-type table on a 4-way fsdp axis) rather than failing.
    """
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in _RULES:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_AXIS_RULES")
        mesh_axes = None if name is None else _RULES[name]
        if mesh_axes is not None and shape is not None and mesh is not None:
            names = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes
            if shape[i] % math.prod(mesh.shape[a] for a in names):
                mesh_axes = None
        spec.append(mesh_axes)
    return PartitionSpec(*spec)


def tree_shardings(mesh: Mesh, axes_tree: Any, abstract_tree: Any) -> Any:
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs) from its logical-axes twin."""
    return jax.tree.map(
        lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh)),
        axes_tree, abstract_tree, is_leaf=lambda x: isinstance(x, tuple))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch-major arrays of any rank: rows split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",)))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` pinned to the sharding the rules table gives its logical `axes`, under the mesh set
    with `jax.set_mesh` (see `with_mesh`); unchanged without one, or inside `shard_map`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or AxisType.Manual in mesh.axis_types:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


def target_platform() -> str:
    """The platform the code being traced is compiled for: that of the mesh set with
    `jax.set_mesh` ("tpu", "gpu", "cpu"), else the default backend's.

    Compiling ahead of time for a TPU slice or a GPU node (`jbert.tasks.aot`) traces under a
    mesh of that target's devices on a CPU host, so choices that depend on the hardware (the
    attention path, Pallas' interpret mode and GPU backend) follow the target, not the host.
    """
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = getattr(device, "platform", None) or jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm") else platform


def with_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """`fn` called with `mesh` set, so that `constrain` sees it while `fn` is traced."""
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with jax.set_mesh(mesh):
            return fn(*args, **kwargs)

    return call
