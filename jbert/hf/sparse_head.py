"""The sparse head in an export: `sparse_head.safetensors` beside `model.safetensors`.

The head (`jbert.model.heads.SparseTermWeights`) is no part of the JinaBERT architecture, so
transformers and sentence-transformers load the export as the dense model it also is and leave
this file alone; `jbert.Embedder.from_pretrained` reads it (`encode_sparse`, `score`). Tensors
in torch's `nn.Linear(hidden_size, 1)` layout: `weight` [1, D], `bias` [1]; `dense_scale` [1]
is 1 / the InfoNCE temperature, the dense cosine's weight in the model's own score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jbert.hf.keys import CheckpointError

SPARSE_HEAD_FILE = "sparse_head.safetensors"


def sparse_head_tensors(head: Any, dense_scale: float) -> dict[str, np.ndarray]:
    """The file's tensors from the head's params (`{"dense": {"kernel" [D, 1], "bias" [1]}}`)."""
    return {"weight": np.asarray(head["dense"]["kernel"], np.float32).T.copy(),
            "bias": np.asarray(head["dense"]["bias"], np.float32),
            "dense_scale": np.asarray([dense_scale], np.float32)}


def load_sparse_head(directory: str | Path, hidden_size: int
                     ) -> tuple[dict[str, Any], float] | None:
    """(head params, dense_scale) of an export's sparse head; None when it has none. A file
    whose tensors do not fit a head of `hidden_size` is refused by name."""
    path = Path(directory) / SPARSE_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    want = {"weight": (1, hidden_size), "bias": (1,), "dense_scale": (1,)}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != want:
        raise CheckpointError(f"{path}: tensors {got}, expected {want} (the sparse head of a "
                              f"model with hidden_size={hidden_size})")
    head = {"dense": {"kernel": tensors["weight"].T.copy(), "bias": tensors["bias"]}}
    return head, float(tensors["dense_scale"][0])
