"""The shared trainer: sharding equivalence, resume, other meshes, multi-process, bad numbers."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.synthetic import global_batch, synthetic_task, tiny_config
from jax.sharding import NamedSharding, PartitionSpec

from jbert.ops.sharding import batch_sharding, make_mesh, with_mesh
from jbert.training.config import MeshConfig
from jbert.training.optim import make_optimizer
from jbert.training.state import init_state
from jbert.training.step import train_step
from jbert.training.trainer import NonFiniteError, train

ROOT = Path(__file__).resolve().parent.parent


def _losses(workdir):
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _run_steps(cfg, mesh, steps=3):
    """`steps` jitted train steps on `mesh`; returns the losses and the final params."""
    task = synthetic_task(cfg)
    tx = make_optimizer(cfg.optim, cfg.steps)
    state = init_state(mesh, cfg.model, task.head, tx, cfg.seed)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    # with the mesh set, as the trainer runs it: the activation constraints apply
    step_fn = with_mesh(jax.jit(lambda s, b: train_step(s, b, loss_fn=task.loss_fn, tx=tx),
                                in_shardings=(state_sh, batch_sharding(mesh)),
                                out_shardings=(state_sh, None), donate_argnums=0), mesh)
    losses = []
    for i in range(steps):
        batch = {**global_batch(i), "scale": np.ones(16, np.float32)}
        state, metrics = step_fn(state, jax.device_put(batch, batch_sharding(mesh)))
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    return losses, jax.device_get(state["params"])


@pytest.mark.parametrize("shape", [
    dict(data=2, fsdp=2, tensor=2),
    pytest.param(dict(data=2, fsdp=4), marks=pytest.mark.slow),
    pytest.param(dict(data=8), marks=pytest.mark.slow),
    pytest.param(dict(fsdp=8, data=1), marks=pytest.mark.slow),
    pytest.param(dict(data=2, tensor=4), marks=pytest.mark.slow),
], ids=["2x2x2", "2x4", "8x1", "1x8", "2x(tp4)"])
def test_sharded_step_equals_single_device(tmp_path, shape):
    cfg = tiny_config(tmp_path)
    ref_losses, ref_params = _run_steps(cfg, make_mesh(data=1, devices=jax.devices()[:1]))
    losses, params = _run_steps(cfg, make_mesh(**shape))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_params_and_moments_are_sharded(tmp_path):
    cfg = tiny_config(tmp_path)
    tx = make_optimizer(cfg.optim, cfg.steps)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state = init_state(mesh, cfg.model, "masked_lm", tx, 0)
    kernel = state["params"]["bert"]["encoder"]["layer"]["mlp"]["gated_layers"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (
        2, 16, 64)
    adam_mu = state["opt_state"][1][0].mu["bert"]["encoder"]["layer"]["mlp"]["gated_layers"]
    assert adam_mu["kernel"].sharding == kernel.sharding
    assert isinstance(state["step"].sharding, NamedSharding)


@pytest.mark.slow
def test_loss_falls_and_logs_are_written(tmp_path):
    cfg = tiny_config(tmp_path, steps=30)
    summary = train(cfg, synthetic_task(cfg))
    losses = _losses(tmp_path)
    assert summary["status"] == "done" and len(losses) == 30
    first, last = (np.mean([losses[s] for s in r]) for r in (range(1, 6), range(26, 31)))
    assert last < first - 0.4, (first, last)  # from ln(V) = 4.8 towards the Zipf entropy
    assert "eval_loss" in summary["final_eval"]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[5])
    assert {"loss", "accuracy", "grad_norm", "learning_rate", "tokens_per_s", "eta_s"} <= set(
        record)
    assert list((tmp_path / "tensorboard").iterdir())


def test_stop_and_resume_is_bitwise_identical(tmp_path):
    full = tiny_config(tmp_path / "full", steps=6)
    summary = train(full, synthetic_task(full))
    split = tiny_config(tmp_path / "split", steps=6)
    first = train(split, synthetic_task(split), stop_at=4)
    assert first["status"] == "stopped" and first["end_step"] == 4
    started = time.perf_counter()
    second = train(split, synthetic_task(split))
    elapsed = time.perf_counter() - started
    assert second["origin"] == "resumed from step 4"
    # The wall time (the model card's) adds the earlier invocation's to this one's.
    assert elapsed < second["wall_time_s"] <= first["wall_time_s"] + elapsed
    for a, b in zip(jax.tree.leaves(jax.device_get(summary["state"])),
                    jax.tree.leaves(jax.device_get(second["state"])), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")


@pytest.mark.slow
def test_resume_onto_another_mesh(tmp_path):
    full = tiny_config(tmp_path / "full", steps=6, mesh=MeshConfig(data=8))
    reference = train(full, synthetic_task(full))
    first = tiny_config(tmp_path / "moved", steps=6, mesh=MeshConfig(data=8))
    train(first, synthetic_task(first), stop_at=3)
    moved = tiny_config(tmp_path / "moved", steps=6, mesh=MeshConfig(data=1, fsdp=4, tensor=2))
    second = train(moved, synthetic_task(moved))
    kernel = second["state"]["params"]["bert"]["encoder"]["layer"]["mlp"]["wo"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(None, "tensor", "fsdp")
    for a, b in zip(jax.tree.leaves(jax.device_get(reference["state"]["params"])),
                    jax.tree.leaves(jax.device_get(second["state"]["params"])), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow  # two short runs: about 6 s on 2 cores
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, steps=8)
    with pytest.raises(NonFiniteError, match="step 5"):
        train(cfg, synthetic_task(cfg, poison_step=5))
    event = json.loads((tmp_path / "events.jsonl").read_text())
    assert event["step"] == 5 and event["data_position"] == {"position": 4}
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3]


@pytest.mark.slow
def test_nonfinite_skip_keeps_training(tmp_path):
    cfg = tiny_config(tmp_path, steps=6, on_nonfinite="skip")
    summary = train(cfg, synthetic_task(cfg, poison_step=2))
    assert summary["status"] == "done"
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(
        jax.device_get(summary["state"]["params"])))


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits(tmp_path):
    cfg = tiny_config(tmp_path, steps=8)
    summary = train(cfg, synthetic_task(cfg, sigterm_step=5))
    assert summary["status"] == "preempted" and summary["end_step"] == 5
    resumed = train(cfg, synthetic_task(cfg))
    assert resumed["origin"] == "resumed from step 5" and resumed["status"] == "done"


def test_batch_that_does_not_divide_the_mesh(tmp_path):
    cfg = tiny_config(tmp_path, mesh=MeshConfig(data=1, fsdp=8))
    cfg = cfg.__class__(**{**cfg.__dict__, "grad_accum": 4})
    with pytest.raises(ValueError, match="data.batch_size=16"):
        train(cfg, synthetic_task(cfg))


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(hidden_dropout_prob=0.0)})
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    task = synthetic_task(cfg)
    tx = make_optimizer(cfg.optim, cfg.steps)
    batch = jax.device_put({**global_batch(0), "scale": np.ones(16, np.float32)},
                           batch_sharding(mesh))
    results = []
    for accum in (1, 4):
        state = init_state(mesh, cfg.model, task.head, tx, 0)
        state, metrics = jax.jit(lambda s, b, a=accum: train_step(
            s, b, loss_fn=task.loss_fn, tx=tx, grad_accum=a))(state, batch)
        results.append((float(metrics["grad_norm"]), jax.device_get(state["params"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = ROOT / "tests" / "helpers" / "multihost_worker.py"
    procs = [subprocess.Popen([sys.executable, str(worker), str(port), str(i),
                               str(tmp_path / "multi")], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    assert all("STATUS done" in out for out in outputs)
    single = tiny_config(tmp_path / "single", steps=4, mesh=MeshConfig(data=4, fsdp=2))
    train(single, synthetic_task(single))
    multi, one = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
    assert multi.keys() == one.keys()
    np.testing.assert_allclose([multi[k] for k in sorted(multi)], [one[k] for k in sorted(one)],
                               rtol=1e-5)
