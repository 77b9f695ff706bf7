"""Training logs: JSONL (the record), TensorBoard (the curves), a progress bar (the terminal),
and Weights & Biases when `wandb.project` is set (`start_wandb`).

Only process 0 writes. Metrics arrive as sums with denominators and are turned into means here;
throughput and MFU (FLOP counts from `jbert.training.flops`) are computed from wall time
between two log points. When stderr is not a
terminal (CI, nohup, a file) the bar is replaced by one plain line per logged record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax

from jbert.errors import ConfigError

WANDB_RUN_ID = "wandb_run_id"  # in the workdir: the W&B run a resumed run goes on with


def repair_torn_line(path: Path) -> None:
    """Drops a last line cut short by a kill mid-write (its step is logged again after the
    restart), so every line of the file parses; a complete last record only gets its newline."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start, tail = end, b""
        while start > 0 and b"\n" not in tail:  # back to the last complete line, in blocks
            size = min(start, 1 << 16)
            start -= size
            f.seek(start)
            tail = f.read(size) + tail
        cut = tail.rfind(b"\n") + 1  # 0: the whole file is one torn line
        try:
            json.loads(tail[cut:])
        except ValueError:  # also UnicodeDecodeError: a multi-byte character cut in two
            f.truncate(start + cut)
            return
        f.seek(0, os.SEEK_END)
        f.write(b"\n")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a logged record, without its step and time: what the curves show."""
    return {k: v for k, v in record.items() if isinstance(v, (int, float))
            and k not in ("step", "time") and math.isfinite(v)}


def start_wandb(config: Any, workdir: Path, *, resume: bool) -> Any:
    """The W&B run of `config.wandb` (a `TrainConfig`), or None when no project is set.

    The whole config is the run's config; every metric is plotted against `step`, a key of its
    own rather than W&B's `_step`, so a resumed run may log again the steps after its checkpoint
    (W&B drops records whose `_step` goes back). With `resume`, the run whose id the workdir
    keeps goes on; otherwise a new run starts and its id replaces the kept one. W&B's files go
    to `$WANDB_DIR`, else into the workdir."""
    settings = config.wandb
    if not settings.project:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError(f"wandb.project={settings.project!r} logs to Weights & Biases, whose "
                          "package is not installed: pip install 'jbert[wandb]'") from None
    id_file = workdir / WANDB_RUN_ID
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    try:
        run = wandb.init(
            project=settings.project, entity=settings.entity or None,
            name=settings.name or workdir.resolve().name, tags=list(settings.tags),
            mode=os.environ.get("WANDB_MODE") or settings.mode,
            config=dataclasses.asdict(config), id=run_id, resume="allow" if run_id else None,
            **({} if os.environ.get("WANDB_DIR") else {"dir": str(workdir)}))
    except wandb.errors.UsageError as e:  # no API key, a bad entity: the user's to fix
        raise ConfigError(f"wandb: {e} (--config.wandb.mode=offline logs without an "
                          "account)") from None
    id_file.write_text(run.id + "\n")
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


class MetricsLogger:
    def __init__(self, workdir: str | Path, *, total_steps: int, start_step: int,
                 progress: bool = True, prefix: str = "", config: Any = None):
        """`config`, the run's `TrainConfig`, is needed for W&B only (its `wandb` section);
        a `start_step` past 0 is a resumed run, which goes on in the workdir's W&B run."""
        self.is_main = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = self._bar = self._wandb = None
        if not self.is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            repair_torn_line(self.path)
        if config is not None:  # first: a W&B error leaves nothing open
            self._wandb = start_wandb(config, Path(workdir), resume=start_step > 0)
        self._file = self.path.open("a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        except ImportError:  # TensorBoard is optional; the JSONL is the record
            self._tb = None
        self._plain = progress and not sys.stderr.isatty()  # no redrawn bar in log files
        self._total, self._prefix = total_steps, prefix or "train"
        if progress and not self._plain:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=prefix or "train",
                             dynamic_ncols=True, mininterval=1.0)

    def write(self, step: int, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **record}
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in scalars(record).items():
                self._tb.add_scalar(key, value, step)
        self._to_wandb("log", {"step": step, **scalars(record)})
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in record.items()
                     if k in ("loss", "accuracy", "eval_loss", "tokens_per_s", "mfu")}
            self._bar.set_postfix(shown, refresh=False)
        elif self._plain:
            shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in (
                "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool))
            print(f"[{self._prefix}] step {step}/{self._total} {shown}", file=sys.stderr,
                  flush=True)

    def _to_wandb(self, method: str, *args: Any) -> None:
        """A call on the W&B run that must not stop training when it fails (its service gone: a
        job's SIGTERM reaches it too): W&B logging ends with one line, the rest goes on."""
        if self._wandb is None:
            return
        try:
            getattr(self._wandb, method)(*args)
        except Exception as e:  # any failure: W&B is a side channel
            self._wandb = None
            self.print(f"[jbert] W&B logging stopped ({type(e).__name__}: {e}); metrics.jsonl "
                       "and TensorBoard go on")

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def print(self, message: str) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._to_wandb("finish")
        self._file.close()
