"""Preemption: a run told to stop (SIGTERM, SIGINT) ends at a step boundary with a checkpoint.

TPU pods, spot/preemptible GPU VMs and SLURM send SIGTERM some seconds before they take a machine
back; Ctrl-C sends SIGINT. Either one asks the training loop to finish its step, save a
checkpoint with the data position, wait until it is committed and exit with
`PREEMPTED_EXIT_STATUS`, so that a scheduler (or a shell loop) knows to start the same command
again, which resumes bitwise. A second signal while the first is being honoured stops at once.

With several processes every one must stop at the same step, or the others would wait forever in
the step's collectives. JAX's preemption service does that: `jax.distributed.initialize` installs
a SIGTERM notifier that tells every process through the coordination service, and
`reached_preemption_sync_point(step)` turns true on all of them at the same step. So in a
multi-process run SIGTERM is left to JAX, and SIGINT is passed on to it as a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL from sysexits.h: "try again later". Start the same command again to resume.
PREEMPTED_EXIT_STATUS = 75


class Preemption:
    """Context manager: signals -> a stop at the next step every process agrees on."""

    def __init__(self):
        self.signal: str | None = None  # name of the first signal received
        self._previous: dict[int, Any] = {}
        self._multiprocess = jax.process_count() > 1

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only
        handled = [signal.SIGINT] if self._multiprocess else [signal.SIGTERM, signal.SIGINT]
        for signum in handled:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # the second one: stop now, as if never handled
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signal.Signals(signum).name
        if self._multiprocess:  # JAX's notifier holds SIGTERM and tells the other processes
            os.kill(os.getpid(), signal.SIGTERM)

    def stop_at(self, step: int) -> bool:
        """Whether this step is the one to stop at; every process calls it at every step."""
        if self._multiprocess:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = self.signal or "SIGTERM"
                return True
            return False
        return self.signal is not None

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def exit_status(summary: dict) -> int:
    """The entry points' exit status for a run's summary: `PREEMPTED_EXIT_STATUS` when it
    stopped on a signal (resume by running it again), else 0."""
    return PREEMPTED_EXIT_STATUS if summary.get("status") == "preempted" else 0
