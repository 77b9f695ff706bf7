"""jbert: JinaBERT code embedding models in JAX/Flax.

`jbert.forward`, `jbert.load_pretrained`, `jbert.save_pretrained` and `jbert.Embedder` are
imported on first use, so `import jbert` stays light (no JAX, no safetensors). The package layers
and what each module owns: docs/architecture.md.
"""

from typing import Any

_LAZY = {
    "forward": "jbert.model.functional",
    "load_pretrained": "jbert.hf.load",
    "save_pretrained": "jbert.hf.save",
    "Embedder": "jbert.evaluation.embedder",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jbert' has no attribute {name!r}")
