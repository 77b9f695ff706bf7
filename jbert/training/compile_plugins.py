"""Where the compilers for hardware this machine lacks live, and putting them within JAX's
reach. Imports no JAX.

Compiling for a TPU slice needs libtpu, for a GPU node XLA:GPU's PJRT plugin
(`jax-cuda12-pjrt`; no driver or CUDA libraries). Installed among the environment's packages,
either makes every JAX program on a machine without that hardware print start-up warnings
(libtpu about TPU hosts, the CUDA plugin about drivers, and a traceback without
`JAX_PLATFORMS=cpu`). So each lives in a folder of its own, `<dir>/tpu` and `<dir>/gpu`, that
only a compile for such a target puts on `sys.path`, before JAX starts. Running on a TPU VM or a
GPU box is the ordinary install instead (`pip install -e ".[tpu]"` / `".[gpu]"`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

# What JAX imports for each platform.
MODULES = {"tpu": "libtpu", "gpu": "jax_plugins.xla_cuda12"}
GPU_MODELS = ("h100", "h200", "a100")  # jbert.training.targets.GPU_CHIPS


def plugin_dir(platform: str) -> Path:
    """`$JBERT_COMPILE_PLUGINS/<platform>`, else `<environment>/jax-compile-plugins/<platform>`."""
    root = os.environ.get("JBERT_COMPILE_PLUGINS") or Path(sys.prefix) / "jax-compile-plugins"
    return Path(root) / platform


def package(platform: str) -> str:
    """The pip requirement of a platform's compiler, pinned to the installed jax."""
    if platform == "gpu":
        return f"jax-cuda12-pjrt=={importlib.metadata.version('jax')}"
    # jax[tpu] pins the libtpu it was built against: `libtpu==0.0.42.*; extra == "tpu"`.
    for requirement in importlib.metadata.requires("jax") or []:
        match = re.match(r"libtpu\s*([=<>!~][^;]*)", requirement)
        if match and 'extra == "tpu"' in requirement:
            return f"libtpu{match.group(1).strip()}"
    return "libtpu"


def install_command(platform: str) -> str:
    return f'pip install --no-deps --target {plugin_dir(platform)} "{package(platform)}"'


def importable(module: str) -> bool:
    """Whether `module` (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def use_compile_plugin(platform: str) -> bool:
    """Puts the platform's compiler folder on `sys.path` when it exists; call before `import jax`
    (JAX looks for its backends once, when it starts). True when JAX will find the compiler."""
    module = MODULES[platform]
    folder = plugin_dir(platform)
    if "jax" in sys.modules and not importable(module) and folder.is_dir():
        raise RuntimeError(f"use_compile_plugin({platform!r}) must run before JAX is imported")
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.append(str(folder))
    return importable(module)


def target_platform_in(argv: list[str]) -> str | None:
    """"tpu" or "gpu" when a `--target` in a command line names a TPU slice or a GPU node."""
    for flag, value in zip(argv, [*argv[1:], ""], strict=True):
        name = value if flag == "--target" else flag.partition("=")[2] if flag.startswith(
            "--target=") else ""
        if name.lower().startswith(GPU_MODELS):
            return "gpu"
        if re.match(r"v\d", name.lower()):
            return "tpu"
    return None
