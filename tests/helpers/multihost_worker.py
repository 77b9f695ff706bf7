"""One process of a two-process CPU run: python multihost_worker.py PORT PROCESS_ID WORKDIR."""

import os
import sys

port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jbert.training.cli import initialize_distributed  # noqa: E402

initialize_distributed(f"localhost:{port}", 2, process_id)

import jax  # noqa: E402

from helpers.synthetic import synthetic_task, tiny_config  # noqa: E402
from jbert.training.config import MeshConfig  # noqa: E402
from jbert.training.trainer import train  # noqa: E402

assert jax.process_count() == 2 and jax.device_count() == 8
cfg = tiny_config(workdir, steps=4, mesh=MeshConfig(data=4, fsdp=2))
summary = train(cfg, synthetic_task(cfg))
print("STATUS", summary["status"], flush=True)
