"""A tiny single-device training the reliability tests kill or preempt: python kill_worker.py
WORKDIR STEPS. Exits as the entry points do (75 when a signal stopped it).

Prints `STEP n` before each step's batch, `SAVE n` once a checkpoint save has started (the
write goes on in the background) and `EVAL n` at the start of an eval, which sleeps a little so
that a kill can land inside it. At the end it writes the final params to `final_params.npz`.
"""

import dataclasses
import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from helpers.synthetic import SyntheticBatches, synthetic_task, tiny_config  # noqa: E402
from jbert.training import checkpoint  # noqa: E402
from jbert.training.config import MeshConfig  # noqa: E402
from jbert.training.preemption import exit_status  # noqa: E402
from jbert.training.trainer import train  # noqa: E402

workdir, steps = sys.argv[1], int(sys.argv[2])
cfg = dataclasses.replace(tiny_config(workdir, steps=steps, mesh=MeshConfig(data=1)),
                          eval_every=4)
task = synthetic_task(cfg)
current = {"step": 0}

next_batch = SyntheticBatches.__next__


def announced_next(self):
    current["step"] = self.position + 1
    print("STEP", current["step"], flush=True)
    return next_batch(self)


SyntheticBatches.__next__ = announced_next
save = checkpoint.Checkpointer.save


def announced_save(self, step, *args, **kw):
    out = save(self, step, *args, **kw)
    print("SAVE", step, flush=True)
    return out


checkpoint.Checkpointer.save = announced_save


def slow_evaluate(params):
    print("EVAL", current["step"], flush=True)
    time.sleep(0.3)
    return {}


task.evaluate = slow_evaluate
summary = train(cfg, task)
np.savez(os.path.join(workdir, "final_params.npz"),
         *jax.tree.leaves(jax.device_get(summary["state"]["params"])))
print("STATUS", summary["status"], summary["origin"], flush=True)
sys.exit(exit_status(summary))
