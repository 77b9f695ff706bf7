"""A model's parameters as a table: name, shape, logical axes, partition spec, per-device shard.

Built from abstract shapes only (`jax.eval_shape`), so it describes models of any size without
allocating them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jax.sharding import Mesh, NamedSharding

from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.ops.sharding import logical_to_spec


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [(prefix[:-1], tree)]


def parameter_table(config: JinaBertConfig, head: str = "base",
                    mesh: Mesh | None = None) -> list[dict[str, Any]]:
    """One row per parameter: `name`, `shape`, `dtype`, `size`, `axes` (logical names), `spec`
    (the rules table's PartitionSpec; on `mesh`, with undividable dimensions replicated) and,
    with a mesh, `shard` (the shape one device holds)."""
    axes = dict(_leaves(functional.logical_axes(config, head)))
    rows = []
    for name, leaf in _leaves(functional.abstract_params(config, head)):
        shape = tuple(leaf.shape)
        spec = logical_to_spec(axes[name], shape if mesh else None, mesh)
        row = {"name": name, "shape": shape, "dtype": str(leaf.dtype),
               "size": math.prod(shape), "axes": axes[name], "spec": spec}
        if mesh is not None:
            row["shard"] = NamedSharding(mesh, spec).shard_shape(shape)
        rows.append(row)
    return rows


def format_parameter_table(rows: list[dict[str, Any]], max_rows: int | None = None) -> str:
    """A fixed-width text table of `parameter_table` rows and the total parameter count."""
    cols = ["name", "shape", "axes", "spec"] + (["shard"] if rows and "shard" in rows[0] else [])
    cells = [[str(r[c]) for c in cols] for r in rows[:max_rows]]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(cell, widths, strict=True)) for cell in cells]
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more")
    total = int(np.sum([r["size"] for r in rows]))
    lines.append(f"{len(rows)} arrays, {total:,} parameters")
    return "\n".join(lines)
