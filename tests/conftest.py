"""Test setup: 8 fake CPU devices and no network, fixed before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_UPDATE_DOWNLOAD_COUNTS"] = "0"

# The compilers for TPU and GPU targets, from their own folders (jbert.training.compile_plugins),
# for tests/test_compile_targets.py; JAX looks for its backends once, when it starts.
from jbert.training.compile_plugins import use_compile_plugin  # noqa: E402

use_compile_plugin("tpu")
use_compile_plugin("gpu")
_tpu_library_path = os.environ.get("TPU_LIBRARY_PATH")

import jax  # noqa: E402

# libtpu, imported with JAX, points TPU_LIBRARY_PATH at itself; the tests' subprocesses (which
# have no libtpu on their path) would inherit it. This process no longer needs it.
if _tpu_library_path is None:
    os.environ.pop("TPU_LIBRARY_PATH", None)
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    has_gpu = any(d.platform == "gpu" for d in jax.devices()) if os.environ.get(
        "JAX_PLATFORMS"
    ) != "cpu" else False
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
