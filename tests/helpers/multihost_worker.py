"""One process of a two-process CPU run: python multihost_worker.py PORT PROCESS_ID WORKDIR
[STEPS]. Prints `STEP n` before each step's batch and exits as the entry points do (75 when a
signal stopped it)."""

import os
import sys

port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 4
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jbert.training.cli import initialize_distributed  # noqa: E402

initialize_distributed(f"localhost:{port}", 2, process_id)

import jax  # noqa: E402

from helpers.synthetic import SyntheticBatches, synthetic_task, tiny_config  # noqa: E402
from jbert.training.config import MeshConfig  # noqa: E402
from jbert.training.preemption import exit_status  # noqa: E402
from jbert.training.trainer import train  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 8
next_batch = SyntheticBatches.__next__


def announced_next(self):
    print("STEP", self.position + 1, flush=True)
    return next_batch(self)


SyntheticBatches.__next__ = announced_next
cfg = tiny_config(workdir, steps=steps, mesh=MeshConfig(data=4, fsdp=2))
summary = train(cfg, synthetic_task(cfg))
print("STATUS", summary["status"], summary["end_step"], flush=True)
sys.exit(exit_status(summary))
