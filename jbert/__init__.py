"""jbert: JinaBERT code embedding models in JAX/Flax.

`jbert.forward`, `jbert.load_pretrained` and `jbert.save_pretrained` are imported on first use,
so `import jbert` stays light (no JAX, no safetensors).
"""

from typing import Any

_LAZY = {
    "forward": "jbert.functional",
    "load_pretrained": "jbert.hf",
    "save_pretrained": "jbert.hf_export",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jbert' has no attribute {name!r}")
