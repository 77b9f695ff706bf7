"""Where XLA:GPU's compile plugin lives, and putting it within JAX's reach. Imports no JAX.

Compiling for a GPU node needs XLA:GPU's PJRT plugin (`jax-cuda12-pjrt`; no driver or CUDA
libraries). Installed among the environment's packages it makes every `import jax` on a machine
without a GPU print CUDA warnings (and, without `JAX_PLATFORMS=cpu`, a traceback), so it lives in
a folder of its own that only a compile for a GPU target puts on `sys.path`, before JAX starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

PLUGIN = "jax_plugins.xla_cuda12"  # the module JAX discovers


def gpu_plugin_dir() -> Path:
    """`$JBERT_GPU_PLUGIN_DIR`, else `<environment>/jax-gpu-compile`."""
    return Path(os.environ.get("JBERT_GPU_PLUGIN_DIR") or Path(sys.prefix) / "jax-gpu-compile")


def install_command() -> str:
    """The command that installs the plugin matching the installed jax there."""
    version = importlib.metadata.version("jax")
    return f'pip install --no-deps --target {gpu_plugin_dir()} "jax-cuda12-pjrt=={version}"'


def importable(module: str) -> bool:
    """Whether `module` (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def use_gpu_plugin() -> bool:
    """Puts the plugin's folder on `sys.path` when it exists; call before `import jax` (JAX
    looks for plugins when it starts). True when JAX will find the plugin."""
    if "jax" in sys.modules and PLUGIN not in sys.modules:
        if not importable(PLUGIN) and gpu_plugin_dir().is_dir():
            raise RuntimeError("use_gpu_plugin() must run before JAX is imported")
    folder = str(gpu_plugin_dir())
    if Path(folder).is_dir() and folder not in sys.path:
        sys.path.append(folder)
    return importable(PLUGIN)


def use_gpu_plugin_if_targeted(argv: list[str]) -> None:
    """`use_gpu_plugin()` when a `--target` in a command line names a GPU node (`h100x8`,
    `a100x8`...); before JAX is imported."""
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        name = value if flag == "--target" else flag.partition("=")[2] if flag.startswith(
            "--target=") else ""
        if name.lower().startswith(GPU_MODELS):
            use_gpu_plugin()


GPU_MODELS = ("h100", "h200", "a100")  # jbert.training.targets.GPU_CHIPS
