"""Hardware this machine may not have, named as users name it: TPU slices and GPU nodes whose
steps `jbert.tasks.aot` compiles ahead of time.

A target gives the devices of its topology (`jax.experimental.topologies`: compile-only
devices, nothing to allocate) and the per-device figures the report needs: memory, dense bf16
peak FLOP/s and memory bandwidth, each from the vendor's published specifications.

- TPU slices come from libtpu; the slice name is Cloud TPU's (`v5p-32`: 32 TensorCores, so 16
  megacore chips, one JAX device each; `v5e-16`: 16 single-core chips).
- GPU nodes come from XLA:GPU's PJRT plugin (`jax-cuda12-pjrt`) and a `GpuTargetConfigProto`
  file in `gpu_targets/` that describes one GPU; `h100x8` is one node of 8, `h100x16` two
  nodes of 8.
Both compilers live in folders of their own (`jbert.training.compile_plugins`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources

from jbert.training import compile_plugins
from jbert.training.flops import peak_flops_for_kind

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator as JAX sees it (a device), with its published figures."""

    device_kind: str  # what `jax.devices()[0].device_kind` reports on the real hardware
    memory_bytes: int  # HBM per device
    memory_bandwidth: float  # HBM bytes/s per device
    source: str  # where the figures come from

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per device: the `PEAK_FLOPS` entry the trainer's MFU uses too."""
        peak = peak_flops_for_kind(self.device_kind)
        if peak is None:
            raise KeyError(f"PEAK_FLOPS has no entry for {self.device_kind!r}")
        return peak


# Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e); a v4 or
# v5p device is a megacore chip (two TensorCores), a v5e or v6e device a single-core chip.
TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 1.2e12, "Cloud TPU v4: 32 GiB HBM2, 1200 GB/s, "
               "275 TFLOP/s bf16 per chip"),
    "v5e": Chip("TPU v5 lite", 16 * GIB, 819e9, "Cloud TPU v5e: 16 GiB HBM2, 819 GB/s, "
                "197 TFLOP/s bf16 per chip"),
    "v5p": Chip("TPU v5", 95 * GIB, 2.765e12, "Cloud TPU v5p: 95 GiB HBM2e, 2765 GB/s, "
                "459 TFLOP/s bf16 per chip"),
    "v6e": Chip("TPU v6 lite", 32 * GIB, 1.64e12, "Cloud TPU v6e (Trillium): 32 GiB "
                "HBM, 1640 GB/s, 918 TFLOP/s bf16 per chip"),
}

# Per TPU generation: libtpu's topology name per chip count (the topology of the Cloud TPU
# slice of that size), its chip config, and which dimensions wrap around (a torus).
_TPU_TOPOLOGIES = {
    "v4": ("megacore", 2, {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                           128: "4x4x8"}),
    "v5p": ("megacore", 2, {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4",
                            128: "4x4x8"}),
    "v5e": ("default", 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                           128: "8x16", 256: "16x16"}),
    "v6e": ("default", 1, {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8",
                           128: "8x16", 256: "16x16"}),
}
# libtpu's name of each generation in a topology name.
_TPU_PREFIX = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}

# GPU: per model, the target file (in `gpu_targets/`), published figures and GPUs per node.
GPU_CHIPS = {
    "h100": ("h100_sxm.txtpb", Chip("NVIDIA H100 80GB HBM3", 80 * GIB, 3.35e12,
                                    "NVIDIA H100 SXM5 datasheet: 80 GB HBM3, 3.35 TB/s, "
                                    "989 TFLOP/s dense bf16")),
    "h200": ("h200_sxm.txtpb", Chip("NVIDIA H200", 141_000_000_000, 4.8e12,
                                    "NVIDIA H200 SXM datasheet: 141 GB HBM3e, 4.8 TB/s, "
                                    "989 TFLOP/s dense bf16")),
    "a100": ("a100_sxm_80gb.txtpb", Chip("NVIDIA A100-SXM4-80GB", 80 * GIB, 2.039e12,
                                         "NVIDIA A100 SXM4 80GB datasheet: 80 GB HBM2e, "
                                         "2039 GB/s, 312 TFLOP/s dense bf16")),
}
GPUS_PER_NODE = 8

# The names `--target` lists; others of the same patterns work too (v4-64, h100x16).
KNOWN_TARGETS = ("v4-8", "v4-32", "v5e-8", "v5e-16", "v5e-256", "v5p-8", "v5p-32", "v5p-128",
                 "v6e-8", "v6e-256", "h100x8", "h200x8", "a100x8")


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice or GPU node(s): `devices()` builds its compile-only devices."""

    name: str
    platform: str  # "tpu" or "gpu"
    num_devices: int
    chip: Chip
    topology: str  # libtpu's topology name, or the GPU plugin's "nodes x 1 x gpus"
    chip_config: str = "default"
    gpu_file: str = ""

    @property
    def description(self) -> str:
        unit = "chips" if self.platform == "tpu" else "GPUs"
        return f"{self.name}: {self.num_devices} {unit} ({self.chip.device_kind})"

    def devices(self) -> list:
        """The target's devices, for a `Mesh`; needs libtpu (TPU) or the CUDA plugin (GPU)."""
        from jax.experimental import topologies

        if self.platform == "tpu":
            _require("tpu", self.name)
            # Compile-only devices open no chip: several processes may load libtpu at once.
            os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
            dims = [int(d) for d in self.topology.split(":")[1].split("x")]
            # A host holds 2 x 2 chips (fewer on smaller slices); slices whose every side is
            # at least 4 chips (16 x 16 for single-core chips) close into a torus.
            host = tuple(min(2, d) for d in dims[:2]) + (1,)
            kwargs = dict(chip_config_name=self.chip_config, chips_per_host_bounds=host,
                          num_slices=1)
            if len(dims) == 3 and min(dims) >= 4:
                kwargs["wrap"] = (True, True, True)
            elif len(dims) == 2 and min(dims) >= 16:
                kwargs["wrap"] = (True, True, False)
            topology = topologies.get_topology_desc(topology_name=self.topology, platform="tpu",
                                                    **kwargs)
        else:
            _require("gpu", self.name)
            text = resources.files("jbert.training").joinpath("gpu_targets",
                                                              self.gpu_file).read_text()
            topology = topologies.get_topology_desc(platform="cuda", target_config=text,
                                                    topology=self.topology)
        devices = list(topology.devices)
        if len(devices) != self.num_devices:
            raise RuntimeError(f"{self.name}: the topology has {len(devices)} devices, "
                               f"expected {self.num_devices}")
        return devices


def _require(platform: str, target: str) -> None:
    module = compile_plugins.MODULES[platform]
    if not compile_plugins.importable(module):
        raise ImportError(f"--target {target} needs {module}: "
                          f"{compile_plugins.install_command(platform)}")


def target(name: str) -> Target:
    """A target by its user-facing name: `v5p-32`, `v4-8`, `v5e-256`, `h100x8`, `a100x16`."""
    text = name.strip().lower()
    tpu = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", text)
    if tpu:
        generation, cores = tpu.group(1), int(tpu.group(2))
        chip_config, cores_per_chip, shapes = _TPU_TOPOLOGIES[generation]
        chips = cores // cores_per_chip
        if cores % cores_per_chip or chips not in shapes:
            known = ", ".join(f"{generation}-{c * cores_per_chip}" for c in shapes)
            raise ValueError(f"--target {name}: no {generation} slice of {cores} cores "
                             f"(known: {known})")
        return Target(text, "tpu", chips, TPU_CHIPS[generation],
                      f"{_TPU_PREFIX[generation]}:{shapes[chips]}", chip_config=chip_config)
    gpu = re.fullmatch(r"(h100|h200|a100)x(\d+)", text)
    if gpu:
        model, count = gpu.group(1), int(gpu.group(2))
        if count < 1 or (count > GPUS_PER_NODE and count % GPUS_PER_NODE):
            raise ValueError(f"--target {name}: {count} GPUs are neither one node (1-8) nor "
                             f"whole nodes of {GPUS_PER_NODE}")
        nodes, per_node = max(1, count // GPUS_PER_NODE), min(count, GPUS_PER_NODE)
        file, chip = GPU_CHIPS[model]
        return Target(text, "gpu", count, chip, f"{nodes}x1x{per_node}", gpu_file=file)
    raise ValueError(f"--target {name}: unknown (known: {', '.join(KNOWN_TARGETS)}; other "
                     "slice sizes of v4/v5p/v5e/v6e and hNNNxK / a100xK work too)")
