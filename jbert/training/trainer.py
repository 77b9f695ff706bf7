"""The one training loop both stages share (MLM pretraining and contrastive tuning).

A `Task` says what is trained (head, loss, data); the loop does the rest: mesh, sharded state,
resume or weights-only init, the jitted step with donated state, global batches assembled from
each process's own rows, metrics one step late, periodic eval, checkpoints with the data
position, a stop on non-finite numbers that keeps the last good checkpoint, a clean save on
SIGTERM or SIGINT at a step every process agrees on (`jbert.training.preemption`), and one run
per workdir (`jbert.training.run_lock`).

Precedence at start: a checkpoint in `workdir/checkpoints` (resume) beats `init_from` (weights
only, fresh optimizer and data), which beats fresh initialisation. Nothing is written before
the start is settled: a config that no longer fits the checkpoints, a bad `init_from` or bad
training data stop the run with a `ConfigError`/`InputError` and leave the workdir as it was.

With `lora.rank > 0` the state trains adapters (`jbert.model.lora`) on the frozen `init_from`
weights, which the step takes as a separate, never donated argument; a resume reloads them
from the path its checkpoint recorded, and refuses them if they changed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from jbert.errors import ConfigError
from jbert.model import functional, lora
from jbert.model.lora import LoRAConfig
from jbert.ops.sharding import batch_sharding, make_mesh, with_mesh
from jbert.training.checkpoint import (
    Checkpointer,
    SavedLoRA,
    StructureMismatchError,
    lora_meta,
    saved_lora,
)
from jbert.training.config import TrainConfig, to_json
from jbert.training.flops import peak_flops_per_device
from jbert.training.logger import MetricsLogger
from jbert.training.optim import learning_rate_schedule, make_optimizer
from jbert.training.preemption import Preemption
from jbert.training.run_dir import init_params_from, lora_base
from jbert.training.run_lock import acquire_run_lock
from jbert.training.state import State, abstract_with_shardings, init_state, param_shardings
from jbert.training.step import GradFn, LossFn, eval_step, lora_train_step, train_step


class DataIterator(Protocol):
    """Yields this process's rows of each global batch (dict of numpy arrays)."""

    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> dict: ...


@dataclasses.dataclass
class Task:
    head: str
    loss_fn: LossFn
    # (process_index, process_count, saved state or None) -> iterator of local batches
    train_data: Callable[[int, int, dict | None], DataIterator]
    # (process_index, process_count) -> local eval batches
    eval_data: Callable[[int, int], list[dict[str, np.ndarray]]] | None = None
    flops_per_token: float = 0.0
    # Extra evaluation on the params (e.g. retrieval); returns scalars to log.
    evaluate: Callable[[Any], dict[str, float]] | None = None
    # Metric sums -> logged means; the default fits `count`-averaged losses.
    summarize: Callable[[dict[str, float]], dict[str, float]] | None = None
    # (params, batch, rng) -> (grads of the loss sum, sums); default jax.grad(loss_fn).
    grad_fn: GradFn | None = None


class NonFiniteError(RuntimeError):
    pass


def default_summary(sums: dict[str, float]) -> dict[str, float]:
    count = max(sums.get("count", 1.0), 1.0)
    out = {"loss": sums["loss_sum"] / count}
    if "correct" in sums:
        out["accuracy"] = sums["correct"] / count
    if sums.get("dropped"):
        out["dropped_labels"] = sums["dropped"]
    return out


def global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """This process's rows -> one global array per key (rows of all processes, in order)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def jit_train_step(loss_fn: LossFn, tx, state_sh, batch_sh, *, grad_accum: int = 1,
                   skip_nonfinite: bool = False, grad_fn: GradFn | None = None,
                   lora_cfg: LoRAConfig | None = None, base_sh: Any = None) -> Callable:
    """`train_step` jitted as `train` runs it: explicit shardings, the state donated. The
    benchmarks time this same function. With `lora_cfg` it is `lora_train_step(state, batch,
    base)`: the frozen base an argument sharded by `base_sh` and never donated."""
    options = dict(loss_fn=loss_fn, tx=tx, grad_accum=grad_accum,
                   skip_nonfinite=skip_nonfinite, grad_fn=grad_fn)
    if lora_cfg is None:
        return jax.jit(functools.partial(train_step, **options), in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, None), donate_argnums=0)
    return jax.jit(functools.partial(lora_train_step, lora_cfg=lora_cfg, **options),
                   in_shardings=(state_sh, batch_sh, base_sh), out_shardings=(state_sh, None),
                   donate_argnums=0)


def build_train_step(cfg: TrainConfig, mesh, tx, head: str, loss_fn: LossFn,
                     grad_fn: GradFn | None = None) -> tuple[Callable, State, Any]:
    """(jitted step, abstract state with shardings, plain-param shardings): the step `train`
    runs for `cfg` on `mesh`, unlowered; `jbert.tasks.aot` compiles this same function for
    hardware this machine does not have. With LoRA the step takes the frozen base third,
    sharded like plain params."""
    lora_cfg = cfg.lora if cfg.lora.rank else None
    abstract = abstract_with_shardings(mesh, cfg.model, head, tx, lora_cfg)
    plain_sh = param_shardings(mesh, cfg.model, head)
    step = jit_train_step(
        loss_fn, tx, jax.tree.map(lambda a: a.sharding, abstract), batch_sharding(mesh),
        grad_accum=cfg.grad_accum, skip_nonfinite=cfg.on_nonfinite == "skip", grad_fn=grad_fn,
        lora_cfg=lora_cfg, base_sh=plain_sh)
    return step, abstract, plain_sh


def check_batch_layout(cfg: TrainConfig, mesh) -> int:
    """Rows per process; errors name the config keys that do not fit together."""
    rows, processes = cfg.data.batch_size, jax.process_count()
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % (batch_devices * cfg.grad_accum):
        raise ValueError(
            f"data.batch_size={rows} does not split over mesh data x fsdp = {batch_devices} "
            f"devices times grad_accum={cfg.grad_accum}")
    if rows % processes:
        raise ValueError(f"data.batch_size={rows} does not split over {processes} processes")
    return rows // processes


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_change_message(cfg: TrainConfig, error: StructureMismatchError) -> str:
    """One line for a resume whose config no longer builds the checkpointed state: what differs,
    the config fields changed since the run's `config.json`, and how to go on."""
    saved_file = Path(cfg.workdir) / "config.json"
    changed = []
    if saved_file.is_file():
        old, new = _flat(json.loads(saved_file.read_text())), _flat(json.loads(to_json(cfg)))
        changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                   if k.split(".")[0] in ("model", "optim", "contrastive", "lora")
                   and old.get(k) != new.get(k)]
    cause = (f"; changed since {saved_file}: {', '.join(changed)}" if changed else
             f"; {saved_file} records no change to model.*, optim.*, contrastive.* or lora.* "
             "(another head, or another jbert version?)")
    if error.per_layer:  # the error says how to carry the weights over
        return f"cannot resume: {error}. Nothing was moved"
    if error.params_changed:
        advice = ("its weights do not fit this model: resume with the config it was saved with, "
                  "or start afresh in a new --config.workdir")
    else:
        advice = ("to keep its weights with a fresh optimiser, start a new --config.workdir with "
                  f"--config.init_from={cfg.workdir}; or resume with the config it was saved with")
    return f"cannot resume: {error}{cause}. Nothing was moved; {advice}"


def _earlier_wall_time(workdir: Path) -> float:
    """Seconds the run's earlier invocations recorded in `summary.json` (0 when none did)."""
    try:
        return float(json.loads((workdir / "summary.json").read_text()).get("wall_time_s", 0.0))
    except (OSError, ValueError):
        return 0.0


def _resumed_lora(cfg: LoRAConfig, meta: dict, step_dir: Path) -> SavedLoRA:
    """A LoRA checkpoint's record of its base, once its adapters are known to be this
    config's."""
    saved = saved_lora(meta)
    if saved is None or saved.cfg != cfg:
        raise ConfigError(
            f"cannot resume: checkpoint {step_dir} holds "
            f"{'no LoRA adapters' if saved is None else f'adapters of {saved.cfg}'}, this config "
            f"asks for {cfg}. Nothing was moved; resume with the lora.* it was saved with")
    return saved


def all_positions(position: dict) -> dict:
    """Every process's data position, as one checkpoint item: orbax writes the JSON of process
    0 only, and each process reads its own rows (`{"per_process": [...]}` with several)."""
    if jax.process_count() == 1:
        return position
    blob = np.frombuffer(json.dumps(position).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(blob.size))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    rows = multihost_utils.process_allgather(padded)
    return {"per_process": [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes,
                                                                          strict=True)]}


def own_position(saved: dict | None) -> dict | None:
    """This process's data position from a checkpoint's `all_positions`."""
    if saved is None or "per_process" not in saved:
        return saved
    positions = saved["per_process"]
    if len(positions) != jax.process_count():
        if jax.process_index() == 0:
            print(f"[jbert] warning: the checkpoint holds the data positions of {len(positions)} "
                  f"processes, this run has {jax.process_count()}: each process goes on from "
                  "process 0's, so the data order is not the uninterrupted run's",
                  file=sys.stderr, flush=True)
        return positions[0]
    return positions[jax.process_index()]


def _has_checkpoints(directory: Path) -> bool:
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def train(cfg: TrainConfig, task: Task, *, stop_at: int | None = None,
          data_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or resumes) training to `cfg.steps`; returns the final summary.

    `stop_at` ends this run early with a checkpoint at that step (the schedule still spans
    `cfg.steps`): runs split into time-limited chunks, and the resume tests. `data_facts` (what
    the task says about its data: sizes, sources) goes into `summary.json` under `data`, next to
    the hardware and the wall time, for the export's model card.
    """
    started = time.perf_counter()
    workdir = Path(cfg.workdir)
    lora_cfg = cfg.lora if cfg.lora.rank else None
    if lora_cfg is not None and not cfg.init_from:
        raise ConfigError(f"lora.rank={cfg.lora.rank} trains adapters on given weights: set "
                          "init_from to the base (an HF export or a run directory)")
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    local_rows = check_batch_layout(cfg, mesh)
    tx = make_optimizer(cfg.optim, cfg.steps)
    learning_rate = learning_rate_schedule(cfg.optim, cfg.steps)  # for the logs
    model_config = cfg.model
    train_fn, abstract, plain_sh = build_train_step(cfg, mesh, tx, task.head, task.loss_fn,
                                                    task.grad_fn)
    summarize = task.summarize or default_summary
    # Before anything in the workdir is read or written; given back (and a workdir it made
    # removed) when the start fails.
    lock = acquire_run_lock(workdir)

    def make_checkpointer() -> Checkpointer:
        return Checkpointer(workdir / "checkpoints", keep=cfg.checkpoint.keep,
                            async_save=cfg.checkpoint.async_save)

    # Newest checkpoint that reads back intact; unreadable ones are reported and set aside.
    # Until the data iterator exists nothing but the lock is written (the checkpointer creates
    # its dir); a failure before the loop gives the lock back.
    checkpointer = None
    meta: dict[str, Any] = {}
    try:
        if _has_checkpoints(workdir / "checkpoints"):
            checkpointer = make_checkpointer()
        restored = None
        if checkpointer is not None:
            try:
                restored = checkpointer.restore_latest(abstract)
            except StructureMismatchError as e:
                raise ConfigError(config_change_message(cfg, e)) from None
        data_state = None
        base, base_source = None, None  # LoRA: the frozen weights, not part of the state
        if restored is not None:
            latest, state, data_state, meta = restored
            data_state = own_position(data_state)
            origin = f"resumed from step {latest}"
            if lora_cfg is not None:
                step_dir = workdir / "checkpoints" / str(latest)
                saved = _resumed_lora(lora_cfg, meta, step_dir)
                base_source = saved.base
                base = lora_base(saved, model_config, task.head, f"checkpoint {step_dir}")
        elif cfg.init_from:
            params = init_params_from(cfg.init_from, model_config, task.head)
            if lora_cfg is not None:
                base, base_source = params, str(Path(cfg.init_from).absolute())
            state = init_state(mesh, model_config, task.head, tx, cfg.seed, params=params,
                               lora_cfg=lora_cfg)
            origin = f"weights from {cfg.init_from}"
        else:
            state = init_state(mesh, model_config, task.head, tx, cfg.seed)
            origin = "fresh initialisation"
        if lora_cfg is not None:
            origin += (f"; LoRA rank {lora_cfg.rank} on {', '.join(lora_cfg.targets)}, "
                       f"base {base_source}")
        data = task.train_data(jax.process_index(), jax.process_count(), data_state)
        start_step = int(state["step"])
        workdir.mkdir(parents=True, exist_ok=True)
        checkpointer = checkpointer or make_checkpointer()
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(to_json(cfg))

        batch_sh = batch_sharding(mesh)
        # Traced with the mesh set: the model's activation constraints (`constrain`) follow it.
        step_fn = with_mesh(train_fn, mesh)
        eval_fn = with_mesh(jax.jit(
            functools.partial(eval_step, loss_fn=task.loss_fn),
            in_shardings=(plain_sh, batch_sh)), mesh)
        meta_extra: dict[str, Any] = {}
        if lora_cfg is not None:
            base = jax.device_put(base, plain_sh)
            lora_step_fn = step_fn
            step_fn = lambda state, batch: lora_step_fn(state, batch, base)  # noqa: E731
            merge_fn = jax.jit(functools.partial(lora.merge, cfg=lora_cfg),
                               out_shardings=plain_sh)
            meta_extra["lora"] = lora_meta(lora_cfg, base_source,
                                           functional.encoder_params(base))
        eval_batches = (task.eval_data(jax.process_index(), jax.process_count())
                        if task.eval_data else [])

        logger = MetricsLogger(workdir, total_steps=cfg.steps, start_step=start_step,
                               progress=cfg.progress, prefix=task.head)
        logger.print(f"[jbert] {origin}; {jax.device_count()} devices, mesh {dict(mesh.shape)}, "
                     f"{local_rows} rows per process; logs in {workdir}")
        peak = peak_flops_per_device(cfg.peak_flops_per_device)
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release(remove_created=True)
        raise

    def run_eval(params) -> dict[str, float]:
        if lora_cfg is not None:  # the adapted model, as plain weights
            params = merge_fn(base, params)
        out: dict[str, float] = {}
        if eval_batches:
            sums: dict[str, float] = {}
            for local in eval_batches:
                metrics = jax.device_get(eval_fn(params, global_batch(local, batch_sh)))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            out.update({f"eval_{k}": v for k, v in summarize(sums).items()})
        if task.evaluate is not None:
            out.update(task.evaluate(params))
        return out

    def save(step: int, state, data_position: dict, meta: dict, force: bool = False) -> None:
        checkpointer.save(step, state, data_position, meta, force=force)

    summary: dict[str, Any] = {"start_step": start_step, "origin": origin, "status": "running",
                               "device_kind": jax.devices()[0].device_kind,
                               "device_count": jax.device_count(),
                               "process_count": jax.process_count()}
    if data_facts is not None:
        summary["data"] = data_facts
    # The wall time adds up over the invocations that reached this step (resumed chunks).
    earlier_s = _earlier_wall_time(workdir) if restored is not None else 0.0
    pending = None  # (step, metrics on device, data position before the batch)
    window = {"tokens": 0.0, "time": time.perf_counter(), "sums": {}}

    def drain(pending) -> dict[str, float]:
        """Fetches a step's metrics (one step late), logs them, stops on non-finite numbers."""
        step, metrics, position = pending
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not values.pop("finite"):
            event = {"event": "nonfinite", "step": step, "data_position": position,
                     "action": cfg.on_nonfinite, **values}
            logger.write(step, event)
            if jax.process_index() == 0:
                with (workdir / "events.jsonl").open("a") as f:
                    f.write(json.dumps(event, default=float) + "\n")
            if cfg.on_nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss or gradient at step {step} (data "
                                     f"position {position}); last good checkpoint: "
                                     f"{checkpointer.latest_step()}")
        for k, v in values.items():
            window["sums"][k] = window["sums"].get(k, 0.0) + v
        window["tokens"] += values.get("tokens", 0.0)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window["time"]
            record = summarize(window["sums"])
            record.update(grad_norm=values["grad_norm"],
                          learning_rate=float(learning_rate(step - 1)),
                          tokens_per_s=window["tokens"] / max(elapsed, 1e-9),
                          steps_remaining=cfg.steps - step)
            record["eta_s"] = (cfg.steps - step) * elapsed / cfg.log_every
            if peak and task.flops_per_token:
                record["mfu"] = (record["tokens_per_s"] * task.flops_per_token
                                 / (peak * jax.device_count()))
            logger.write(step, record)
            summary["last"] = record
            window.update(tokens=0.0, time=time.perf_counter(), sums={})
        logger.advance(step)
        return values


    with Preemption() as preemption:
        try:
            if meta.get("eval_pending"):  # skipped when a signal stopped the run at that step
                record = run_eval(state["params"])
                if record:
                    logger.write(start_step, record)
            for step in range(start_step + 1, cfg.steps + 1):
                position = data.get_state()
                state, metrics = step_fn(state, global_batch(next(data), batch_sh))
                if pending is not None:
                    drain(pending)
                pending = (step, metrics, position)
                preempted = preemption.stop_at(step)  # every process, every step
                stopping = preempted or step == stop_at
                checkpoint_due = step % cfg.checkpoint.every_steps == 0 or step == cfg.steps
                eval_due = step % cfg.eval_every == 0 and step != cfg.steps
                if checkpoint_due or stopping:
                    drain(pending)  # never checkpoint a state whose step was non-finite
                    pending = None
                    # A signal skips the eval (the stop stays prompt): the resumed run does it.
                    save(step, state, all_positions(data.get_state()),
                         {"step": step, "head": task.head, **meta_extra,
                          **summary.get("last", {}), "eval_pending": eval_due and preempted},
                         force=True)
                if eval_due and not preempted:
                    record = run_eval(state["params"])
                    if record:
                        logger.write(step, record)
                if stopping:
                    if preempted:
                        summary["status"] = "preempted"
                        checkpointer.wait()  # until the checkpoint is committed
                        logger.print(f"[jbert] preempted ({preemption.signal}): saved step "
                                     f"{step}; run the same command again to resume")
                    else:
                        summary["status"] = "stopped"
                        logger.print(f"[jbert] stopped: saved step {step}, exiting")
                    break
            else:
                if pending is not None:
                    drain(pending)
                summary["final_eval"] = run_eval(state["params"])
                logger.write(cfg.steps, summary["final_eval"])
                summary["status"] = "done"
        except NonFiniteError as e:
            summary["status"] = "nonfinite"
            summary["error"] = str(e)
            logger.print(f"[jbert] stopped: {e}")
            raise
        finally:
            checkpointer.close()
            logger.close()
            if lock is not None:
                lock.release()
            summary["end_step"] = int(jax.device_get(state["step"]))
            summary["wall_time_s"] = earlier_s + time.perf_counter() - started
            if jax.process_index() == 0:
                (workdir / "summary.json").write_text(json.dumps(summary, indent=1,
                                                                 default=float))
    summary["state"] = state
    return summary
