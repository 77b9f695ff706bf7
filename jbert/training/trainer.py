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


def make_checkpointer(cfg: TrainConfig) -> Checkpointer:
    return Checkpointer(Path(cfg.workdir) / "checkpoints", keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)


@dataclasses.dataclass
class Start:
    """Where a run begins: its state, this process's data position (None: the beginning), the
    line that says where it came from, the resumed checkpoint's meta ({} when not resumed), and
    for LoRA the frozen base weights (not part of the state) with where they came from."""

    state: State
    data_position: dict | None
    origin: str
    meta: dict
    resumed: bool = False
    base: Any = None
    base_source: str | None = None


def resolve_start(cfg: TrainConfig, head: str, mesh, tx, abstract: State,
                  checkpointer: Checkpointer | None) -> Start:
    """The newest checkpoint that reads back intact (resume; unreadable ones are reported and
    set aside), else the `init_from` weights with a fresh optimiser, else a fresh state. A
    checkpoint of another state tree, or LoRA adapters that do not fit, is a `ConfigError`."""
    lora_cfg = cfg.lora if cfg.lora.rank else None
    restored = None
    if checkpointer is not None:
        try:
            restored = checkpointer.restore_latest(abstract)
        except StructureMismatchError as e:
            raise ConfigError(config_change_message(cfg, e)) from None
    if restored is not None:
        latest, state, data_state, meta = restored
        start = Start(state, own_position(data_state), f"resumed from step {latest}", meta,
                      resumed=True)
        if lora_cfg is not None:
            step_dir = Path(cfg.workdir) / "checkpoints" / str(latest)
            saved = _resumed_lora(lora_cfg, meta, step_dir)
            start.base_source = saved.base
            start.base = lora_base(saved, cfg.model, head, f"checkpoint {step_dir}")
    elif cfg.init_from:
        params = init_params_from(cfg.init_from, cfg.model, head)
        start = Start(init_state(mesh, cfg.model, head, tx, cfg.seed, params=params,
                                 lora_cfg=lora_cfg), None, f"weights from {cfg.init_from}", {})
        if lora_cfg is not None:
            start.base, start.base_source = params, str(Path(cfg.init_from).absolute())
    else:
        start = Start(init_state(mesh, cfg.model, head, tx, cfg.seed), None,
                      "fresh initialisation", {})
    if lora_cfg is not None:
        start.origin += (f"; LoRA rank {lora_cfg.rank} on {', '.join(lora_cfg.targets)}, "
                         f"base {start.base_source}")
    return start


@dataclasses.dataclass
class BoundStep:
    """The step as the loop calls it, `(state, this process's rows) -> (state, metrics)`;
    `plain` turns the trained params into the plain weights evaluation sees; `meta` goes into
    every checkpoint (the head; with LoRA, its base). With LoRA the frozen base is bound here,
    once: the jitted step gets it as its third argument, `plain` merges the adapters into it."""

    step: Callable
    plain: Callable[[Any], Any]
    meta: dict


def bind_step(cfg: TrainConfig, head: str, train_fn: Callable, mesh, plain_sh: Any,
              start: Start) -> BoundStep:
    # Traced with the mesh set: the model's activation constraints (`constrain`) follow it.
    step_fn, batch_sh = with_mesh(train_fn, mesh), batch_sharding(mesh)
    if not cfg.lora.rank:
        return BoundStep(lambda state, rows: step_fn(state, global_batch(rows, batch_sh)),
                         lambda params: params, {"head": head})
    base = jax.device_put(start.base, plain_sh)
    merge = jax.jit(functools.partial(lora.merge, cfg=cfg.lora), out_shardings=plain_sh)
    return BoundStep(lambda state, rows: step_fn(state, global_batch(rows, batch_sh), base),
                     lambda params: merge(base, params),
                     {"head": head, "lora": lora_meta(cfg.lora, start.base_source,
                                                      functional.encoder_params(base))})


def make_evaluate(task: Task, mesh, plain_sh: Any, plain: Callable[[Any], Any]
                  ) -> Callable[[Any], dict[str, float]]:
    """Trained params -> the logged eval figures: the task's eval batches' summarised sums
    (`eval_...`) and its own `evaluate`, both on the plain weights."""
    batch_sh = batch_sharding(mesh)
    eval_fn = with_mesh(jax.jit(functools.partial(eval_step, loss_fn=task.loss_fn),
                                in_shardings=(plain_sh, batch_sh)), mesh)
    batches = task.eval_data(jax.process_index(), jax.process_count()) if task.eval_data else []
    summarize = task.summarize or default_summary

    def evaluate(params) -> dict[str, float]:
        params, out = plain(params), {}
        if batches:
            sums: dict[str, float] = {}
            for rows in batches:
                metrics = jax.device_get(eval_fn(params, global_batch(rows, batch_sh)))
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            out.update({f"eval_{k}": v for k, v in summarize(sums).items()})
        if task.evaluate is not None:
            out.update(task.evaluate(params))
        return out

    return evaluate


class MetricsWindow:
    """A step's metrics, fetched one step late (`drain`) so that the host never waits for the
    device: a non-finite step is logged to `events.jsonl` and, with `on_nonfinite="stop"`,
    raises `NonFiniteError`; every `log_every` steps the window's summarised means, with the
    learning rate, tokens/s, ETA and MFU, are logged (`last` keeps the latest record)."""

    def __init__(self, cfg: TrainConfig, task: Task, logger: MetricsLogger,
                 last_good: Callable[[], int | None], start_step: int):
        self.cfg, self.logger, self.last_good = cfg, logger, last_good
        self.summarize = task.summarize or default_summary
        self.learning_rate = learning_rate_schedule(cfg.optim, cfg.steps)
        peak = peak_flops_per_device(cfg.peak_flops_per_device)
        self.flops_per_s = (peak * jax.device_count() / task.flops_per_token
                            if peak and task.flops_per_token else None)
        self.pending: tuple | None = None  # (step, metrics on device, data position before it)
        self.step = start_step  # the last step pushed
        self.last: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.tokens, self.since = 0.0, time.perf_counter()

    def push(self, step: int, metrics: Any, position: dict) -> None:
        """Takes step `step`'s metrics and drains the previous step's."""
        self.drain()
        self.pending, self.step = (step, metrics, position), step

    def drain(self) -> None:
        if self.pending is None:
            return
        (step, metrics, position), self.pending = self.pending, None
        cfg = self.cfg
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not values.pop("finite"):
            event = {"event": "nonfinite", "step": step, "data_position": position,
                     "action": cfg.on_nonfinite, **values}
            self.logger.write(step, event)
            if jax.process_index() == 0:
                with (Path(cfg.workdir) / "events.jsonl").open("a") as f:
                    f.write(json.dumps(event, default=float) + "\n")
            if cfg.on_nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss or gradient at step {step} (data "
                                     f"position {position}); last good checkpoint: "
                                     f"{self.last_good()}")
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.tokens += values.get("tokens", 0.0)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - self.since
            record = self.summarize(self.sums)
            record.update(grad_norm=values["grad_norm"],
                          learning_rate=float(self.learning_rate(step - 1)),
                          tokens_per_s=self.tokens / max(elapsed, 1e-9),
                          steps_remaining=cfg.steps - step)
            record["eta_s"] = (cfg.steps - step) * elapsed / cfg.log_every
            if self.flops_per_s:
                record["mfu"] = record["tokens_per_s"] / self.flops_per_s
            self.logger.write(step, record)
            self.last = record
            self._reset()
        self.logger.advance(step)


def run_steps(cfg: TrainConfig, start: Start, data: DataIterator, bound: BoundStep,
              evaluate: Callable, checkpointer: Checkpointer, window: MetricsWindow,
              stop_at: int | None) -> tuple[State, str]:
    """The steps after the start's, to `cfg.steps` or an earlier stop: `stop_at`, or a
    SIGTERM/SIGINT (`Preemption`: a step every process agrees on). Checkpoints every
    `checkpoint.every_steps` and at the stop, evaluates every `eval_every`; returns the last
    state and the status (done, stopped or preempted)."""
    state, logger = start.state, window.logger

    def log_eval(step: int) -> None:
        record = evaluate(state["params"])
        if record:
            logger.write(step, record)

    with Preemption() as preemption:
        if start.meta.get("eval_pending"):  # skipped when a signal stopped the run at that step
            log_eval(int(state["step"]))
        for step in range(int(state["step"]) + 1, cfg.steps + 1):
            position = data.get_state()
            state, metrics = bound.step(state, next(data))
            window.push(step, metrics, position)
            preempted = preemption.stop_at(step)  # every process, every step
            stopping = preempted or step == stop_at
            eval_due = step % cfg.eval_every == 0 and step != cfg.steps
            if step % cfg.checkpoint.every_steps == 0 or step == cfg.steps or stopping:
                window.drain()  # never checkpoint a state whose step was non-finite
                # A signal skips the eval (the stop stays prompt): the resumed run does it.
                checkpointer.save(step, state, all_positions(data.get_state()),
                                  {"step": step, **bound.meta, **window.last,
                                   "eval_pending": eval_due and preempted}, force=True)
            if eval_due and not preempted:
                log_eval(step)
            if preempted:
                checkpointer.wait()  # until the checkpoint is committed
                logger.print(f"[jbert] preempted ({preemption.signal}): saved step {step}; "
                             "run the same command again to resume")
                return state, "preempted"
            if stopping:
                logger.print(f"[jbert] stopped: saved step {step}, exiting")
                return state, "stopped"
    window.drain()
    return state, "done"


def train(cfg: TrainConfig, task: Task, *, stop_at: int | None = None,
          data_facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs (or resumes) training to `cfg.steps`; returns the final summary.

    `stop_at` ends this run early with a checkpoint at that step (the schedule still spans
    `cfg.steps`): runs split into time-limited chunks, and the resume tests. `data_facts` (what
    the task says about its data: sizes, sources) goes into `summary.json` under `data`, next to
    the hardware and the wall time, for the export's model card.
    """
    started, workdir = time.perf_counter(), Path(cfg.workdir)
    if cfg.lora.rank and not cfg.init_from:
        raise ConfigError(f"lora.rank={cfg.lora.rank} trains adapters on given weights: set "
                          "init_from to the base (an HF export or a run directory)")
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    local_rows = check_batch_layout(cfg, mesh)
    tx = make_optimizer(cfg.optim, cfg.steps)
    train_fn, abstract, plain_sh = build_train_step(cfg, mesh, tx, task.head, task.loss_fn,
                                                    task.grad_fn)
    # Before anything in the workdir is read or written. Until the data iterator exists
    # nothing else is written; a failure before the loop gives the lock back.
    lock = acquire_run_lock(workdir)
    checkpointer = None
    try:
        if _has_checkpoints(workdir / "checkpoints"):
            checkpointer = make_checkpointer(cfg)
        start = resolve_start(cfg, task.head, mesh, tx, abstract, checkpointer)
        data = task.train_data(jax.process_index(), jax.process_count(), start.data_position)
        checkpointer = checkpointer or make_checkpointer(cfg)
        if jax.process_index() == 0:
            (workdir / "config.json").write_text(to_json(cfg))
        bound = bind_step(cfg, task.head, train_fn, mesh, plain_sh, start)
        evaluate = make_evaluate(task, mesh, plain_sh, bound.plain)
        start_step = int(start.state["step"])
        logger = MetricsLogger(workdir, total_steps=cfg.steps, start_step=start_step,
                               progress=cfg.progress, prefix=task.head, config=cfg)
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release(remove_created=True)
        raise
    logger.print(f"[jbert] {start.origin}; {jax.device_count()} devices, mesh "
                 f"{dict(mesh.shape)}, {local_rows} rows per process; logs in {workdir}")
    summary: dict[str, Any] = {"start_step": start_step, "origin": start.origin,
                               "status": "running", "device_kind": jax.devices()[0].device_kind,
                               "device_count": jax.device_count(),
                               "process_count": jax.process_count()}
    if data_facts is not None:
        summary["data"] = data_facts
    # The wall time adds up over the invocations that reached this step (resumed chunks).
    earlier_s = _earlier_wall_time(workdir) if start.resumed else 0.0
    window = MetricsWindow(cfg, task, logger, checkpointer.latest_step, start_step)
    try:
        state, summary["status"] = run_steps(cfg, start, data, bound, evaluate, checkpointer,
                                             window, stop_at)
        if summary["status"] == "done":
            summary["final_eval"] = evaluate(state["params"])
            logger.write(cfg.steps, summary["final_eval"])
    except NonFiniteError as e:
        summary.update(status="nonfinite", error=str(e))
        logger.print(f"[jbert] stopped: {e}")
        raise
    finally:
        checkpointer.close()
        logger.close()
        if lock is not None:
            lock.release()
        if window.last:
            summary["last"] = window.last
        summary["end_step"] = window.step
        summary["wall_time_s"] = earlier_s + time.perf_counter() - started
        if jax.process_index() == 0:
            (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    summary["state"] = state
    return summary
