"""Ahead-of-time compiles of a recipe's train step for hardware this machine does not have.

`compile_report(cfg, stage, target)` builds exactly the step `train.pretrain` or
`train.contrastive` would run with `cfg` (`trainer.build_train_step`: the same loss, GradCache
gradient, LoRA base argument, shardings, remat policy, donation and attention path) on a mesh
of the target's compile-only devices, lowers it from abstract shapes (nothing is allocated)
and compiles it with the target's compiler (libtpu's for TPU slices, XLA:GPU for GPU nodes).
The report holds per-device memory and whether it fits, FLOPs per step (analytic and XLA's),
the estimated step time at a stated MFU with its roofline bound, the attention kernel and the
compile time. `python -m train.compile` prints it.

Why XLA's FLOPs differ from `jbert.training.flops`: XLA counts a loop body once, and the
layers (`lax.scan`), the gradient-accumulation micro-batches and the GradCache chunks are loops,
so its figure is a fraction of the step's; it also counts the element-wise work (softmax, GELU,
LayerNorm, AdamW) the analytic count leaves out, and the Pallas kernels not at all (custom
calls). The analytic count (6 x matmul parameters per token, attention in full) is the one MFU
is quoted against.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jbert.data.packing import texts_per_row
from jbert.errors import ConfigError
from jbert.model.encoder import attention_path
from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.training.config import TrainConfig
from jbert.training.optim import make_optimizer
from jbert.training.targets import GIB, Target
from jbert.training.trainer import build_train_step, check_batch_layout

STAGES = ("pretrain", "contrastive")
PALLAS_KERNELS = ("alibi_flash_forward", "alibi_flash_dkdv", "alibi_flash_dq")
GPU_PREALLOCATED = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default


def default_stage(config_spec: str) -> str:
    """The stage a recipe trains, from its file name: `configs/contrastive*.py[:arg]` is
    "contrastive", any other "pretrain"."""
    name = Path(config_spec.partition(":")[0]).stem
    return "contrastive" if name.startswith("contrastive") else "pretrain"


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """What one step of a stage consumes: the global batch's arrays and counts for the report."""

    batch: dict[str, tuple[int, ...]]  # global shapes, all int32
    positions: int  # token positions the step computes (padding included)
    flops_per_token: float
    attention: dict[str, str]  # which path each sequence length takes
    notes: tuple[str, ...] = ()


def _paths(cfg: TrainConfig, lengths: dict[str, int]) -> dict[str, str]:
    return {name: f"{attention_path(cfg.model, length)} @ {length}"
            for name, length in lengths.items()}


def pretrain_step(cfg: TrainConfig) -> tuple[StepShapes, Any, Any]:
    """(shapes, loss_fn, grad_fn) of the MLM step."""
    from jbert.tasks.mlm import mlm_flops_per_token, mlm_loss_fn

    rows, length = cfg.data.batch_size, cfg.data.seq_len
    batch = {k: (rows, length) for k in ("input_ids", "labels", "segment_ids", "attention_mask",
                                         "token_type_ids")}
    shapes = StepShapes(batch, rows * length, mlm_flops_per_token(cfg),
                        _paths(cfg, {"tokens": length}))
    return shapes, mlm_loss_fn(cfg.model, cfg.data.max_predictions), None


def contrastive_step(cfg: TrainConfig, mesh, row_multiple: int) -> tuple[StepShapes, Any, Any]:
    """(shapes, loss_fn, grad_fn) of the contrastive step: padded groups, or packed rows sized
    for the worst case (every text at its length limit)."""
    from jbert.tasks.contrastive import contrastive_step_fns, pair_format

    c = cfg.contrastive
    pairs, n_neg = cfg.data.batch_size, c.hard_negatives
    loss_fn, grad_fn, flops = contrastive_step_fns(cfg, mesh)
    # Every text at its length limit: the padded groups' positions, the packed rows' bound.
    tokens = pairs * (c.max_query_length + (1 + n_neg) * c.max_doc_length)
    if c.pack:
        length = pair_format(c).packed_length
        rows = -(-tokens // length)
        rows = -(-rows // row_multiple) * row_multiple
        slots = texts_per_row(length)
        batch = {"text_ids": (rows, length), "text_mask": (rows, length),
                 "text_segment_ids": (rows, length), "text_pair": (rows, slots),
                 "text_role": (rows, slots)}
        note = (f"packed: {rows} rows of {length} tokens, the most {pairs} pairs need (every "
                "text at its length limit); the data plans fewer")
        return StepShapes(batch, rows * length, flops, _paths(cfg, {"rows": length}),
                          (note,)), loss_fn, grad_fn
    batch = {"query_ids": (pairs, c.max_query_length), "query_mask": (pairs, c.max_query_length),
             "doc_ids": (pairs, c.max_doc_length), "doc_mask": (pairs, c.max_doc_length)}
    if n_neg:
        batch |= {"neg_ids": (pairs * n_neg, c.max_doc_length),
                  "neg_mask": (pairs * n_neg, c.max_doc_length)}
    lengths = {"queries": c.max_query_length, "documents": c.max_doc_length}
    return StepShapes(batch, tokens, flops, _paths(cfg, lengths)), loss_fn, grad_fn


@contextlib.contextmanager
def progress(what: str, every_s: float = 15.0, out=None) -> Iterator[None]:
    """Prints `what: N s` every `every_s` seconds while the block runs (compiles take minutes)."""
    out = out or sys.stderr
    done = threading.Event()
    started = time.perf_counter()

    def tick():
        while not done.wait(every_s):
            print(f"[jbert] {what}: {time.perf_counter() - started:.0f} s", file=out, flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


_TPU_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([GM])\) exceeds available HBM "
                      r"\(([\d.]+)([GM])\)")


def _gib(value: str, unit: str) -> float:
    return float(value) / (1024 if unit == "M" else 1)


def compile_report(cfg: TrainConfig, target: Target, stage: str, *,
                   headroom: float = 0.10, mfu: float = 0.40) -> dict[str, Any]:
    """Compiles `cfg`'s train step for `target` and reports memory, fit, FLOPs and time.

    `headroom`: the share of each device's memory kept free (fragmentation, the runtime's own
    buffers, and on GPU what the driver reserves); a step fits when its peak is at most
    `(1 - headroom)` of the device's memory. `mfu`: the model FLOPs utilisation the step time
    is estimated at.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r}: must be one of {STAGES}")
    devices = target.devices()
    try:
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    except ValueError as e:
        raise ConfigError(f"{e} on {target.description}") from None
    try:
        check_batch_layout(cfg, mesh)  # the trainer's check, on the target's devices
    except ValueError as e:
        raise ConfigError(f"{e} on {target.description}") from None
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    tx = make_optimizer(cfg.optim, cfg.steps)
    with jax.set_mesh(mesh):  # the attention path resolves for the target's platform
        if stage == "pretrain":
            shapes, loss_fn, grad_fn = pretrain_step(cfg)
            head = "masked_lm"
        else:
            from jbert.tasks.contrastive import contrastive_head, gradcache_chunks

            shapes, loss_fn, grad_fn = contrastive_step(cfg, mesh,
                                                        gradcache_chunks(cfg) * batch_devices)
            head = contrastive_head(cfg.contrastive)
    step, abstract_state, plain_sh = build_train_step(cfg, mesh, tx, head, loss_fn, grad_fn)
    batch_sh = batch_sharding(mesh)
    abstract_batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sh)
                      for k, shape in shapes.batch.items()}
    args = [abstract_state, abstract_batch]
    if cfg.lora.rank:  # the frozen base, an argument of the step
        from jbert.model import functional

        base = functional.abstract_params(cfg.model, head)
        args.append(jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                 base, plain_sh))

    report: dict[str, Any] = {
        "target": target.name, "devices": target.num_devices, "device_kind":
        target.chip.device_kind, "platform": target.platform, "stage": stage,
        "mesh": dict(mesh.shape), "batch": {k: list(v) for k, v in shapes.batch.items()},
        "grad_accum": cfg.grad_accum, "remat": cfg.model.remat,
        "scan_layers": cfg.model.scan_layers, "dtype": cfg.model.dtype,
        "attention": shapes.attention, "notes": list(shapes.notes),
        "lora_rank": cfg.lora.rank, "gradcache_chunk": cfg.contrastive.chunk_size
        if stage == "contrastive" else 0, "headroom": headroom, "mfu": mfu}
    started = time.perf_counter()
    what = f"compiling the {stage} step for {target.description}"
    oom = None
    with progress(what), jax.set_mesh(mesh):
        lowered = step.lower(*args)
        program = lowered.as_text()
        # What the program really calls, beside what `auto` resolved to.
        report["pallas_kernels"] = [name for name in PALLAS_KERNELS if name in program]
        del program
        try:
            compiled = lowered.compile()
        except Exception as e:  # libtpu refuses a program over HBM: report the shortfall
            match = _TPU_OOM.search(str(e))
            if match is None:
                raise
            oom, compiled = match, None
    report["compile_s"] = time.perf_counter() - started
    budget = (1.0 - headroom) * target.chip.memory_bytes
    memory: dict[str, float]
    if compiled is not None:
        stats = compiled.memory_analysis()
        memory = {name: float(getattr(stats, f"{name}_size_in_bytes")) for name in
                  ("argument", "output", "alias", "temp", "generated_code")}
        memory["peak"] = (memory["argument"] + memory["output"] - memory["alias"]
                          + memory["temp"] + memory["generated_code"])
    else:
        need, avail = _gib(oom.group(1), oom.group(2)), _gib(oom.group(3), oom.group(4))
        memory = {"temp": need * GIB, "peak": need * GIB,
                  "compiler_available": avail * GIB}
        report["notes"].append(f"libtpu refused the program: HLO temporaries {need:.2f} GiB "
                               f"exceed the {avail:.2f} GiB of HBM it can use")
    report["memory_bytes"] = memory
    report["device_memory_bytes"] = target.chip.memory_bytes
    report["budget_bytes"] = budget
    report["fits"] = compiled is not None and memory["peak"] <= budget
    if target.platform == "gpu" and memory["peak"] > GPU_PREALLOCATED * target.chip.memory_bytes:
        report["notes"].append(
            f"over the {GPU_PREALLOCATED:.0%} of GPU memory JAX preallocates by default: run "
            f"with XLA_PYTHON_CLIENT_MEM_FRACTION={1 - headroom:.2f}")
    report["shortfall_bytes"] = max(0.0, memory["peak"] - budget)

    flops = shapes.flops_per_token * shapes.positions
    report["tokens_per_step"] = shapes.positions
    report["flops_per_token"] = shapes.flops_per_token
    report["flops_per_step"] = flops
    xla = None
    if compiled is not None:
        costs = compiled.cost_analysis()
        costs = costs[0] if isinstance(costs, list | tuple) and costs else costs
        if costs and costs.get("flops"):
            xla = float(costs["flops"]) * target.num_devices  # per-device program, all devices
    report["xla_flops_per_step"] = xla
    peak_total = target.chip.peak_flops * target.num_devices
    compute_s = flops / peak_total
    # The state is read and written once a step at least (arguments and outputs per device).
    memory_s = (memory.get("argument", 0.0) + memory.get("output", 0.0)) / (
        target.chip.memory_bandwidth)
    report["roofline_s"] = max(compute_s, memory_s)
    report["step_s"] = max(compute_s / mfu, report["roofline_s"])
    report["tokens_per_s"] = shapes.positions / report["step_s"]
    return report


def _g(x: float) -> str:
    return f"{x / GIB:.2f} GiB" if x >= GIB / 10 else f"{x / (1 << 20):.1f} MiB"


def _seconds(x: float) -> str:
    return f"{x:.3g} s" if x >= 0.1 else f"{x * 1e3:.3g} ms"


def format_report(report: dict[str, Any]) -> str:
    """The report as a two-column markdown table, then its verdict line."""
    m = report["memory_bytes"]
    rows = [("target", f"{report['target']} ({report['devices']} x {report['device_kind']})"),
            ("stage", report["stage"]),
            ("mesh", " x ".join(f"{k}={v}" for k, v in report["mesh"].items())),
            ("batch (global)", ", ".join(f"{k} {'x'.join(map(str, v))}"
                                         for k, v in report["batch"].items())),
            ("grad_accum / remat / scan", f"{report['grad_accum']} / {report['remat']} / "
                                          f"{report['scan_layers']}"),
            ("attention", ", ".join(f"{k}: {v}" for k, v in report["attention"].items())),
            ("Pallas kernels in the program", ", ".join(report["pallas_kernels"]) or "none")]
    if report["lora_rank"]:
        rows.append(("LoRA rank", str(report["lora_rank"])))
    if report["gradcache_chunk"]:
        rows.append(("GradCache chunk", f"{report['gradcache_chunk']} rows"))
    for name in ("argument", "output", "alias", "temp", "generated_code"):
        if name in m:
            rows.append((f"memory: {name.replace('_', ' ')}", _g(m[name])))
    rows.append(("memory: peak per device", _g(m["peak"])))
    rows.append(("device memory / budget", f"{_g(report['device_memory_bytes'])} / "
                 f"{_g(report['budget_bytes'])} ({report['headroom']:.0%} headroom)"))
    rows.append(("FLOPs per step (jbert.training.flops)", f"{report['flops_per_step']:.3e} "
                 f"({report['flops_per_token'] / 1e6:,.1f} MFLOP/token x "
                 f"{report['tokens_per_step']:,} tokens)"))
    xla = report["xla_flops_per_step"]
    rows.append(("FLOPs per step (XLA cost analysis)", "not reported by this compiler"
                 if xla is None else f"{xla:.3e} ({xla / report['flops_per_step']:.2f}x: loop "
                 "bodies counted once, Pallas calls not at all)"))
    rows.append((f"step time at {report['mfu']:.0%} MFU", f"{_seconds(report['step_s'])} "
                 f"({report['tokens_per_s']:,.0f} tokens/s)"))
    rows.append(("roofline bound", _seconds(report["roofline_s"])))
    rows.append(("compile time", f"{report['compile_s']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'':<{width}} | {report['target']} |", f"|{'-' * (width + 2)}|---|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    lines += [f"note: {n}" for n in report["notes"]]
    lines.append(verdict(report))
    return "\n".join(lines)


def verdict(report: dict[str, Any]) -> str:
    peak, budget = report["memory_bytes"]["peak"], report["budget_bytes"]
    if report["fits"]:
        return (f"fits: {_g(peak)} peak per device of a {_g(budget)} budget "
                f"({report['headroom']:.0%} headroom on {_g(report['device_memory_bytes'])})")
    return (f"does not fit: {_g(peak)} peak per device, {report['shortfall_bytes'] / GIB:.2f} "
            f"GiB over the {_g(budget)} budget ({report['headroom']:.0%} headroom on "
            f"{_g(report['device_memory_bytes'])})")
