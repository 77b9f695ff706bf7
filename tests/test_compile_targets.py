"""Ahead-of-time compiles for hardware this machine does not have (`jbert.tasks.aot`,
`python -m train.compile`): a TPU slice through libtpu and an H100 node through the CUDA
plugin, both installed by the `compile` extra. Tiny models: a base-code compile takes minutes
(docs/scaling.md has those figures)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from configs import contrastive_tiny, pretrain_tiny
from jbert.ops.attention import attention, resolve_impl
from jbert.ops.pallas import pallas_attention
from jbert.tasks import aot
from jbert.training import compile_plugins
from jbert.training.flops import PEAK_FLOPS, peak_flops_for_kind
from jbert.training.targets import KNOWN_TARGETS, target

# Put on sys.path by conftest.py, from the folders scripts/env.sh installs them in.
needs_tpu = pytest.mark.skipif(
    not compile_plugins.importable(compile_plugins.MODULES["tpu"]),
    reason=f"libtpu is not installed: {compile_plugins.install_command('tpu')}")
needs_gpu_plugin = pytest.mark.skipif(
    not compile_plugins.importable(compile_plugins.MODULES["gpu"]),
    reason=f"XLA:GPU's plugin is not installed: {compile_plugins.install_command('gpu')}")
TPU, GPU = "v5p-8", "h100x8"


def tiny(config, **model):
    """A recipe's tiny model with 128-token attention blocks (the Pallas kernels' minimum)."""
    return dataclasses.replace(config, model=config.model.replace(attention_block_size=128,
                                                                  **model))


def test_target_names():
    assert target("v5p-32").num_devices == 16 and target("v5p-32").topology == "v5:2x2x4"
    assert target("v4-8").num_devices == 4
    assert target("v5e-256").topology == "v5e:16x16"
    assert target("H100x16").topology == "2x1x8"
    for bad in ("v5p-33", "tpu9-8", "h100x12"):
        with pytest.raises(ValueError, match=bad.lower()):
            target(bad)


def test_peak_flops_match_the_kinds_devices_report():
    # The strings real devices report (and the topology devices below, checked in the tests
    # that build them): v5p says "TPU v5", v5e "TPU v5 lite".
    assert peak_flops_for_kind("TPU v5") == 459e12
    assert peak_flops_for_kind("TPU v5 lite") == 197e12
    assert peak_flops_for_kind("TPU v6 lite") == 918e12
    assert peak_flops_for_kind("TPU v4") == 275e12
    assert peak_flops_for_kind("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_kind("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_kind("NVIDIA H200") == 989e12
    assert peak_flops_for_kind("cpu") is None
    for name in KNOWN_TARGETS:  # every target's chip has a peak
        assert target(name).chip.peak_flops in PEAK_FLOPS.values()


@needs_tpu
def test_tpu_topology_devices_report_the_kinds_of_real_ones():
    names = ("v4-8", "v5p-8", "v5e-8", "v6e-8")
    kinds = {name: target(name).devices()[0].device_kind for name in names}
    assert kinds == {"v4-8": "TPU v4", "v5p-8": "TPU v5", "v5e-8": "TPU v5 lite",
                     "v6e-8": "TPU v6 lite"}
    assert [len(target(name).devices()) for name in names] == [4, 4, 8, 8]
    for kind in kinds.values():
        assert peak_flops_for_kind(kind) is not None


@needs_tpu
def test_auto_attention_resolves_for_the_target_not_the_host():
    assert jax.default_backend() == "cpu"
    assert resolve_impl("auto", 512, 512) == "reference"  # the host
    mesh = Mesh(np.array(target(TPU).devices()), ("data",))
    with jax.set_mesh(mesh):
        assert resolve_impl("auto", 512, 512) == "pallas"
        assert resolve_impl("auto", 512, 64) == "blockwise"  # not a multiple of 128 lanes
        assert resolve_impl("auto", 512, 512, training_dropout=True) == "reference"
        assert resolve_impl("auto", 64, 512) == "reference"  # queries: shorter than a block


def _dpa_compiles(devices):
    """`impl="dpa"` (jax.nn.dot_product_attention, XLA's path) forward and backward."""
    mesh = Mesh(np.array(devices[:1]), ("data",))
    whole = NamedSharding(mesh, PartitionSpec())
    qkv = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16, sharding=whole)
    slopes = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=whole)
    rows = jax.ShapeDtypeStruct((2, 256), jnp.int32, sharding=whole)

    def loss(q, k, v, slopes, valid, segments):
        return attention(q, k, v, slopes, valid, segments, impl="dpa").astype(jnp.float32).sum()

    with jax.set_mesh(mesh):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
            qkv, qkv, qkv, slopes, rows, rows).compile()
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def _pallas_compiles(devices, length=384, block=128):
    mesh = Mesh(np.array(devices[:1]), ("data",))
    whole = NamedSharding(mesh, PartitionSpec())
    qkv = jax.ShapeDtypeStruct((2, length, 4, 64), jnp.bfloat16, sharding=whole)
    slopes = jax.ShapeDtypeStruct((4,), jnp.float32, sharding=whole)
    rows = jax.ShapeDtypeStruct((2, length), jnp.int32, sharding=whole)

    def loss(q, k, v, slopes, valid, segments):
        out = pallas_attention(q, k, v, slopes, valid, segments, block_size=block)
        return out.astype(jnp.float32).sum()

    grad = jax.grad(loss, argnums=(0, 1, 2))
    with jax.set_mesh(mesh):
        forward = jax.jit(pallas_attention, static_argnames="block_size").lower(
            qkv, qkv, qkv, slopes, rows, rows, block_size=block)
        backward = jax.jit(grad).lower(qkv, qkv, qkv, slopes, rows, rows)
    texts = [forward.as_text(), backward.as_text()]
    for lowered in (forward, backward):
        assert lowered.compile().memory_analysis() is not None
    return texts


@needs_tpu
def test_pallas_kernels_and_dpa_compile_for_a_tpu():
    _dpa_compiles(target(TPU).devices())
    forward, backward = _pallas_compiles(target(TPU).devices())
    assert "tpu_custom_call" in forward  # Mosaic kernels, not the interpreter
    assert backward.count("tpu_custom_call") >= 3  # forward, dk/dv and dq


@needs_tpu
def test_pallas_kernels_fit_vmem_at_8192_tokens_on_a_tpu():
    # Each program holds its head's whole other side; with per-query values as [L, 1] columns
    # (padded to 128 lanes) the dk/dv kernel needed 25 MiB of 16 MiB of scoped VMEM here.
    _pallas_compiles(target(TPU).devices(), length=8192, block=512)


@needs_gpu_plugin
def test_pallas_kernels_and_dpa_compile_for_an_h100():
    _dpa_compiles(target(GPU).devices())
    forward, backward = _pallas_compiles(target(GPU).devices())
    assert "__gpu$xla.gpu.triton" in forward  # Triton kernels, not the interpreter
    assert backward.count("__gpu$xla.gpu.triton") >= 3


def _check(report, platform):
    assert report["platform"] == platform
    assert report["fits"] and report["shortfall_bytes"] == 0
    memory = report["memory_bytes"]
    assert 0 < memory["peak"] <= report["budget_bytes"]
    assert memory["alias"] > 0  # the state is donated
    assert report["flops_per_step"] > 0 and report["step_s"] >= report["roofline_s"] > 0
    for path in report["attention"].values():  # the kernels from 128 tokens on
        kernel, length = path.split(" @ ")
        assert kernel == ("pallas" if int(length) >= 128 else "reference")
    assert report["pallas_kernels"] == list(aot.PALLAS_KERNELS)  # forward and backward
    json.dumps(report)  # what --json writes
    assert aot.format_report(report).splitlines()[-1].startswith("fits:")


@needs_tpu
@pytest.mark.slow
def test_tiny_mlm_and_contrastive_steps_compile_for_a_tpu():
    mlm = aot.compile_report(tiny(pretrain_tiny.get_config()), target(TPU), "pretrain")
    _check(mlm, "tpu")
    assert mlm["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # XLA counts the scanned layers once: its FLOPs are a fraction of the analytic count.
    assert 0 < mlm["xla_flops_per_step"] < mlm["flops_per_step"]
    config = tiny(contrastive_tiny.get_config())
    config = dataclasses.replace(
        config, mesh=dataclasses.replace(config.mesh, data=2, fsdp=2),
        # Padded rows with GradCache here (the recipe packs; `features` below compiles that).
        contrastive=dataclasses.replace(config.contrastive, hard_negatives=2, chunk_size=16,
                                        pack=False))
    report = aot.compile_report(config, target(TPU), "contrastive")
    _check(report, "tpu")
    assert report["gradcache_chunk"] == 16
    assert report["batch"]["neg_ids"] == [128, config.contrastive.max_doc_length]  # 64 x 2
    lora = aot.compile_report(tiny(contrastive_tiny.get_config("features")), target(TPU),
                              "contrastive")
    _check(lora, "tpu")
    assert lora["lora_rank"] == 8 and "text_pair" in lora["batch"]  # LoRA on packed rows


@needs_gpu_plugin
@pytest.mark.slow
def test_tiny_mlm_and_contrastive_steps_compile_for_an_h100():
    _check(aot.compile_report(tiny(pretrain_tiny.get_config()), target(GPU), "pretrain"), "gpu")
    config = tiny(contrastive_tiny.get_config())
    config = dataclasses.replace(config, contrastive=dataclasses.replace(
        config.contrastive, hard_negatives=1, chunk_size=16))
    report = aot.compile_report(config, target(GPU), "contrastive")
    _check(report, "gpu")
    assert report["xla_flops_per_step"] is None  # XLA:GPU has no cost analysis


def _oversized(config):
    """The tiny model with a batch no device holds: 4096 rows of 2048 tokens, materialised
    attention."""
    return dataclasses.replace(
        tiny(config, attention_impl="reference"),
        data=dataclasses.replace(config.data, batch_size=4096, seq_len=2048))


@needs_gpu_plugin
@pytest.mark.slow
def test_an_oversized_step_does_not_fit_on_gpu_and_the_command_says_by_how_much(capsys):
    from train.compile import NO_FIT, main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/pretrain_tiny.py", "--target", GPU,
              "--config.model.attention_impl=reference", "--config.data.batch_size=4096",
              "--config.data.seq_len=2048"])
    assert exit_info.value.code == NO_FIT
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("does not fit:") and "GiB over the 72.00 GiB budget" in last


@needs_tpu
@pytest.mark.slow
def test_an_oversized_step_is_refused_by_libtpu_and_reported():
    report = aot.compile_report(_oversized(pretrain_tiny.get_config()), target("v5e-8"),
                                "pretrain")
    assert not report["fits"] and report["shortfall_bytes"] > 0
    assert any("libtpu refused" in note for note in report["notes"])
    assert "does not fit" in aot.verdict(report)


def test_bad_mesh_or_batch_for_a_target_names_the_key(monkeypatch):
    config = pretrain_tiny.get_config()
    fake = dataclasses.replace(target(GPU))
    monkeypatch.setattr(type(fake), "devices", lambda self: jax.devices()[:8])
    from jbert.errors import ConfigError

    with pytest.raises(ConfigError, match="data.batch_size=36"):
        aot.compile_report(dataclasses.replace(config, data=dataclasses.replace(
            config.data, batch_size=36)), fake, "pretrain")
    with pytest.raises(ConfigError, match="mesh.fsdp=3"):
        aot.compile_report(dataclasses.replace(config, mesh=dataclasses.replace(
            config.mesh, fsdp=3)), fake, "pretrain")


@pytest.mark.parametrize("args, culprit", [
    (["--target", "v9-8"], "--target v9-8: unknown"),
    (["--target", "v5p-33"], "no v5p slice of 33 cores"),
    (["--target", "h100x8", "--headroom", "1.5"], "--headroom 1.5 must be in [0, 1)"),
    (["--target", "h100x8", "--config.mesh.fsdp=3"], "mesh.fsdp=3"),
])
def test_bad_targets_and_flags_are_one_line(args, culprit, capsys):
    from train.compile import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "configs/pretrain_tiny.py", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit in err and err.count("\n") == 1, err
