"""Preemption (SIGTERM, SIGINT) and one run per workdir: a signalled run stops at a step every
process agrees on, with a committed checkpoint and exit status 75, and its resumption equals an
uninterrupted run; a second run on a live workdir is refused, a dead run's lock taken over.
Rows of docs/reliability.md."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.contrastive import make_data_dir
from helpers.synthetic import synthetic_task, tiny_config

from jbert.training import run_lock
from jbert.training.preemption import PREEMPTED_EXIT_STATUS
from jbert.training.run_lock import LOCK_NAME, WorkdirBusyError
from jbert.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"
# From the signal to the exit: a step, a checkpoint and its commit on a loaded 2-core machine.
STOP_BOUND_S = 60.0


def _env(devices: int | None = None) -> dict:
    """The test's environment; the workers set their device count, the entry points get
    `devices` CPU devices."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JBERT_DEBUG")}
    if devices:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu")
    return env


def _records(workdir: Path) -> dict[tuple[int, str], float]:
    """The last value logged for each (step, metric) of the losses and eval figures
    (metrics.jsonl is appended to across restarts)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if "loss" in key or key.startswith("eval_") or "retrieval" in key:
                out[record["step"], key] = value
    return out


def _committed(workdir: Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _uncommitted(workdir: Path) -> list[str]:
    return [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


def _signal_when(procs: list[subprocess.Popen], outputs: list[list[str]], watch: int,
                 marker: str | None, delay: float, signum: int, target: int) -> float | None:
    """Reads every process's output (threads); once process `watch` prints a line starting
    with `marker`, waits `delay` and sends `signum` to process `target`. Returns the time of
    the signal."""
    sent: list[float] = []
    seen = threading.Event()

    def read(i: int) -> None:
        for line in procs[i].stdout:
            outputs[i].append(line)
            if i == watch and marker and line.startswith(marker):
                seen.set()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for r in readers:
        r.start()
    while marker is not None and not seen.wait(0.05):
        if all(p.poll() is not None for p in procs):
            break
    if seen.is_set():
        time.sleep(delay)
        if procs[target].poll() is None:
            sent.append(time.monotonic())
            procs[target].send_signal(signum)
    for p in procs:
        p.wait(timeout=600)
    for r in readers:
        r.join(timeout=10)
    return sent[0] if sent else None


def _run(commands: list[list[str]], marker=None, delay=0.0, signum=signal.SIGTERM, target=0,
         watch=0, devices=None) -> tuple[list[int], list[str], float | None]:
    """Runs the processes to their end (signalling one as `_signal_when` says); returns their
    exit statuses, outputs and the seconds from the signal to the last exit."""
    procs = [subprocess.Popen(c, env=_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs: list[list[str]] = [[] for _ in procs]
    sent = _signal_when(procs, outputs, watch, marker, delay, signum, target)
    took = time.monotonic() - sent if sent is not None else None
    return [p.returncode for p in procs], ["".join(o) for o in outputs], took


def _stopped_at(output: str) -> int:
    for line in output.splitlines():
        if "[jbert] preempted" in line:
            return int(line.split("saved step ")[1].split(";")[0])
    raise AssertionError("no preemption line:\n" + output[-3000:])


@pytest.mark.slow
def test_sigterm_or_sigint_at_random_points_stops_at_a_step_and_resumes_bitwise(tmp_path):
    """Seven signals (SIGTERM or SIGINT) into one synthetic MLM run: during a step, right after
    an async save started, during an eval. Each run stops within the bound with status 75, its
    newest checkpoint committed and holding the step it names, nothing half written; each
    restart resumes there, and the run ends bitwise equal to an uninterrupted one, every loss
    and eval figure included (an eval a signal skipped is done on resume)."""
    worker, steps = str(HELPERS / "kill_worker.py"), 34
    reference = tmp_path / "reference"
    codes, outs, _ = _run([[sys.executable, worker, str(reference), str(steps)]])
    assert codes == [0], outs[0][-3000:]
    workdir, rng = tmp_path / "signalled", np.random.default_rng(1)
    kinds = rng.permutation(["step"] * 3 + ["save"] * 2 + ["eval"] * 2)
    resumed_from = 0
    for kind in kinds:
        if kind == "save":
            at, delay = ("SAVE", 3 * (resumed_from // 3 + 1)), rng.uniform(0, 0.02)
        elif kind == "eval":
            at, delay = ("EVAL", 4 * (resumed_from // 4 + 1)), rng.uniform(0, 0.2)
        else:
            at, delay = ("STEP", resumed_from + int(rng.integers(1, 4))), rng.uniform(0, 0.05)
        signum = signal.SIGINT if rng.random() < 0.3 else signal.SIGTERM
        codes, outs, took = _run([[sys.executable, worker, str(workdir), str(steps)]],
                                 f"{at[0]} {at[1]}\n", delay, signum)
        assert codes == [PREEMPTED_EXIT_STATUS], f"{kind} {at}:\n{outs[0][-3000:]}"
        assert took is not None and took < STOP_BOUND_S, took
        stopped = _stopped_at(outs[0])
        assert f"[jbert] preempted ({signal.Signals(signum).name})" in outs[0]
        assert stopped >= at[1] and _committed(workdir)[-1] == stopped
        assert not _uncommitted(workdir)
        expected = f"resumed from step {resumed_from}" if resumed_from else "fresh initialisation"
        assert f"[jbert] {expected};" in outs[0]
        assert not (workdir / LOCK_NAME).exists()
        resumed_from = stopped
    codes, outs, _ = _run([[sys.executable, worker, str(workdir), str(steps)]])
    assert codes == [0] and f"resumed from step {resumed_from}" in outs[0], outs[0][-3000:]
    with np.load(reference / "final_params.npz") as want, \
            np.load(workdir / "final_params.npz") as got:
        for name in want.files:
            np.testing.assert_array_equal(want[name], got[name])
    assert _records(workdir) == _records(reference)
    assert any(key == "eval_loss" for _, key in _records(reference))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    """SIGTERM reaches process 1 only; JAX's preemption sync point makes both stop at the same
    step with a committed checkpoint and status 75, and the resumed pair ends with the losses
    of an uninterrupted two-process run, bit for bit."""
    worker, steps = str(HELPERS / "multihost_worker.py"), 10

    def pair(workdir: Path) -> list[list[str]]:
        port = str(_port())
        return [[sys.executable, worker, port, str(i), str(workdir), str(steps)]
                for i in range(2)]

    codes, outs, _ = _run(pair(tmp_path / "reference"))
    assert codes == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    workdir = tmp_path / "signalled"
    codes, outs, took = _run(pair(workdir), "STEP 4\n", 0.05, target=1, watch=1)
    assert codes == [PREEMPTED_EXIT_STATUS] * 2, outs[0][-2000:] + outs[1][-2000:]
    assert took < STOP_BOUND_S
    stopped = _stopped_at(outs[0])  # process 0 logs; each process says where it ended
    assert all(f"STATUS preempted {stopped}\n" in out for out in outs)
    assert _committed(workdir)[-1] == stopped and not _uncommitted(workdir)
    codes, outs, _ = _run(pair(workdir))
    assert codes == [0, 0] and "resumed from step" in outs[0], outs[0][-2000:]
    assert _records(workdir) == _records(tmp_path / "reference")


def _contrastive_commands(argv: list[str], processes: int) -> list[list[str]]:
    command = [sys.executable, "-m", "train.contrastive", *argv]
    if processes == 1:
        return [command]
    port = str(_port())
    return [command + ["--coordinator", f"localhost:{port}", "--num-processes", "2",
                       "--process-id", str(i)] for i in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_contrastive_run_with_packing_gradcache_and_lora_resumes_bitwise_after_sigterm(
        tmp_path, processes):
    """`train.contrastive` (packed rows, GradCache chunks, LoRA adapters), one process or two,
    gets SIGTERM during a step: it exits 75 with a committed checkpoint and, run again, ends
    with the losses, eval figures and exported weights of an uninterrupted run."""
    from helpers.synthetic import tiny_lora_cli
    from safetensors.numpy import load_file

    data = make_data_dir(tmp_path / "data")
    argv, _, _ = tiny_lora_cli(data, tmp_path, **{
        "contrastive.pack": True, "steps": 8, "log_every": 1, "eval_every": 4,
        "checkpoint.every_steps": 3, "checkpoint.async_save": True,
        "progress": True})  # one plain line per step (not a terminal), to signal at
    argv = [a for a in argv if not a.startswith("--config.workdir=")]
    devices = 8 // processes  # the (2, 2, 2) mesh's 8 devices over the processes

    def commands(workdir: Path) -> list[list[str]]:
        return _contrastive_commands(argv + [f"--config.workdir={workdir}"], processes)

    reference, workdir = tmp_path / "reference", tmp_path / "signalled"
    codes, outs, _ = _run(commands(reference), devices=devices)
    assert codes == [0] * processes, outs[0][-3000:]
    # The step's log line comes one step late: the signal lands in step 4 or 5. (The tiny
    # recipe trains the sparse head: its lines carry that head's name.)
    codes, outs, took = _run(commands(workdir), "[contrastive_sparse] step 3/", 0.05,
                             devices=devices)
    assert codes == [PREEMPTED_EXIT_STATUS] * processes, outs[0][-3000:]
    assert took < STOP_BOUND_S
    assert _committed(workdir)[-1] == _stopped_at(outs[0])  # process 0 logs
    assert not _uncommitted(workdir) and not (workdir / "export").exists()
    codes, outs, _ = _run(commands(workdir), devices=devices)
    assert codes == [0] * processes and "resumed from step" in outs[0], outs[0][-3000:]
    assert _records(workdir) == _records(reference)
    want = load_file(reference / "export" / "model.safetensors")
    got = load_file(workdir / "export" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(want[name], got[name])


HOLDER = """
import sys, time
from pathlib import Path
from jbert.training.run_lock import RunLock
RunLock.acquire(Path(sys.argv[1]))
print("HELD", flush=True)
time.sleep(600)
"""


def _snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file()}


def test_a_second_run_on_a_live_workdir_is_refused_and_a_dead_runs_lock_taken_over(
        tmp_path, capsys):
    """A live holder (another process): the run stops with one line naming its host, pid and
    start time, and the workdir stays byte for byte as it was. Once the holder is killed (-9:
    its lock stays behind), the next run takes the lock over with a message."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], env=_env(),
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "HELD\n"
        before = _snapshot(workdir)
        cfg = tiny_config(workdir, steps=2)
        with pytest.raises(WorkdirBusyError) as refused:
            train(cfg, synthetic_task(cfg))
        message = str(refused.value)
        assert f"{workdir} is in use by another run (host {socket.gethostname()}, pid " \
               f"{holder.pid}, started 20" in message and "another --config.workdir" in message
        assert _snapshot(workdir) == before
    finally:
        holder.kill()
        holder.wait()
    assert (workdir / LOCK_NAME).exists()  # left behind by the kill
    taken = run_lock.acquire_run_lock(workdir)  # what the next train() does first
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    taken.release()
    assert (workdir / "notes.txt").read_text() == "the user's\n"
    assert f"taking over {workdir / LOCK_NAME} from a run that ended without releasing it " \
           f"(host {socket.gethostname()}, pid {holder.pid}" in capsys.readouterr().err
    assert not (workdir / LOCK_NAME).exists()


def test_a_refused_run_in_a_new_workdir_leaves_nothing(tmp_path):
    """The lock makes the workdir first; a start that fails after it (here a LoRA run whose
    base does not exist) removes what it made."""
    from jbert.errors import InputError

    workdir = tmp_path / "runs" / "new"
    cfg = tiny_config(workdir, init_from=str(tmp_path / "missing"))
    with pytest.raises(InputError):
        train(cfg, synthetic_task(cfg))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("holder,age,live", [
    ({"host": "other-host"}, 10.0, True),  # another machine's heartbeat is fresh
    ({"host": "other-host"}, run_lock.STALE_AFTER_S + 60, False),  # a crashed machine
    ({"host": socket.gethostname(), "process_start": -1}, 0.0, False),  # a reused pid
    ({"host": socket.gethostname(), "pid": 2 ** 22 + 1}, 0.0, False),  # no such process
    ({}, run_lock.STALE_AFTER_S + 60, False),  # not a lock this writes (torn, edited)
])
def test_who_holds_a_lock(tmp_path, holder, age, live):
    """Liveness: the pid (and its start time) on this host, the heartbeat from another."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "started": "then", **holder}))
    os.utime(lock, (time.time() - age, time.time() - age))
    if live:
        with pytest.raises(WorkdirBusyError, match="host other-host, pid"):
            run_lock.acquire_run_lock(workdir)
        return
    taken = run_lock.acquire_run_lock(workdir)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    taken.release()
    assert not lock.exists() and workdir.exists()


@pytest.mark.slow  # two entry-point runs: about 13 s on 2 cores
def test_the_entry_point_refuses_a_busy_workdir_in_one_line(tmp_path, capsys, monkeypatch):

    from train.contrastive import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / LOCK_NAME).write_text(json.dumps(
        {"host": "node-7", "pid": 4242, "started": "2026-12-07T05:00:00+00:00"}))
    data = make_data_dir(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", "configs/contrastive_tiny.py:smoke", f"--config.data.dir={data}",
              f"--config.workdir={workdir}", "--config.model.vocab_size=320",
              "--config.model.num_hidden_layers=1", "--config.progress=false"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"error: {workdir} is in use by another run (host node-7, pid 4242, "
                   f"started 2026-12-07T05:00:00+00:00; lock {workdir / LOCK_NAME}): wait for "
                   "it to end or stop it, or give another --config.workdir\n")
