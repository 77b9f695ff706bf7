"""One run per workdir: `workdir/run.lock` names the run that holds it (host, pid, start time).

Two runs in one workdir would delete each other's checkpoints and log every step twice, so a
run takes the lock before it reads or writes anything there, and a second one stops with a line
naming the holder. A lock is stale when its holder is gone: on the same host, when its process
no longer exists (or the pid now belongs to a later process); from another host, when its
heartbeat (the file's modification time, renewed every `HEARTBEAT_S` by the holder) is older
than `STALE_AFTER_S`, as after a machine crashed. A stale lock is taken over with a message. In
a multi-process run process 0 holds the lock for all, and every process learns whether it got it.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jbert.errors import InputError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0


class WorkdirBusyError(InputError):
    """Another live run holds the workdir."""


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive_here(holder: dict) -> bool:
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    except (OverflowError, ValueError):
        return False
    start = _process_start(pid)
    return start is None or holder.get("process_start") in (None, start)


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host')!s}, pid {holder.get('pid')!s}, started "
            f"{holder.get('started')!s}")


class RunLock:
    """The held lock: `release()` (or the context manager's exit) gives it back and stops the
    heartbeat."""

    def __init__(self, path: Path, created: list[Path]):
        self.path, self.created = path, created
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="jbert-run-lock",
                                      daemon=True)
        self._beat.start()

    @classmethod
    def acquire(cls, workdir: Path) -> RunLock:
        created = []  # the workdir and the parents this made: removed again if the run refuses
        for directory in [workdir, *workdir.parents]:
            if directory.exists():
                break
            created.append(directory)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / LOCK_NAME
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "process_start": _process_start(os.getpid()),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        mine = path.with_name(f".{LOCK_NAME}.{me['host']}.{me['pid']}")
        mine.write_text(json.dumps(me))
        try:
            for _ in range(3):  # a lost race with another taker is tried again
                try:
                    os.link(mine, path)  # atomic: fails when a lock exists
                    return cls(path, created)
                except FileExistsError:
                    pass
                cls._take_over_if_stale(path, me)
        finally:
            mine.unlink()
        raise WorkdirBusyError(f"{workdir}: could not take {path} (other runs keep taking it)")

    @staticmethod
    def _take_over_if_stale(path: Path, me: dict) -> None:
        """Raises `WorkdirBusyError` when the lock's holder lives; else moves the stale lock
        aside (one taker wins the rename) and says so."""
        try:
            text, age = path.read_text(), time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        if holder.get("host") == me["host"]:
            alive = _alive_here(holder)
        else:  # another machine's run: only its heartbeat tells
            alive = age < STALE_AFTER_S
        if alive:
            raise WorkdirBusyError(
                f"{path.parent} is in use by another run ({_describe(holder)}; lock "
                f"{path}): wait for it to end or stop it, or give another --config.workdir")
        aside = path.with_name(f".{LOCK_NAME}.stale.{me['host']}.{me['pid']}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != text:  # another taker renewed it between our read and rename
            os.rename(aside, path)
            raise WorkdirBusyError(f"{path.parent} was just taken by another run (lock {path})")
        aside.unlink()
        why = "its process is gone" if holder.get("host") == me["host"] else (
            f"no heartbeat for {age:.0f} s")
        print(f"[jbert] taking over {path} from a run that ended without releasing it "
              f"({_describe(holder)}; {why})", file=sys.stderr, flush=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self, remove_created: bool = False) -> None:
        """Gives the lock back; with `remove_created`, also the empty dirs `acquire` made (a
        run that refused to start leaves nothing behind)."""
        self._stop.set()
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
        if isinstance(holder, dict) and holder.get("pid") == os.getpid() and \
                holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        if remove_created:
            for directory in self.created:
                try:
                    directory.rmdir()
                except OSError:
                    break


def acquire_run_lock(workdir: Path) -> RunLock | None:
    """Process 0 takes `workdir`'s lock (returned; None on the other processes); every process
    raises `WorkdirBusyError` when it could not."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock.acquire(workdir)
        except WorkdirBusyError as e:
            error = e
    if jax.process_count() > 1:
        refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            raise WorkdirBusyError(f"{workdir}: process 0 found it in use by another run "
                                   "(its error names the holder)")
    if error is not None:
        raise error
    return lock
