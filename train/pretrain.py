"""MLM pretraining of a JinaBERT encoder.

  python -m train.pretrain --config configs/pretrain_tiny.py [--config.steps=500 ...]

Multi-host: start one process per host with --coordinator HOST:PORT --num-processes N
--process-id I (or --coordinator auto on TPU pods and managed clusters).
"""

import json
import sys

from jbert.errors import CorruptCheckpointError, InputError
from jbert.training.cli import parse_training_cli, usage_errors
from jbert.training.preemption import exit_status


def main(argv: list[str] | None = None) -> dict:
    with usage_errors():
        config = parse_training_cli(sys.argv[1:] if argv is None else argv, __doc__,
                                    prog="python -m train.pretrain")

    import jax

    from jbert.tasks.mlm import mlm_task
    from jbert.training.trainer import train

    with usage_errors():  # a missing data.dir
        task, facts = mlm_task(config, jax.process_count())
    with usage_errors(InputError, CorruptCheckpointError):  # checks before the first step
        summary = train(config, task, data_facts=facts)
    summary.pop("state")
    if jax.process_index() == 0:
        print(json.dumps({k: summary[k] for k in ("status", "end_step", "last", "final_eval",
                                                  "data") if k in summary}, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(exit_status(main()))  # 75 after a SIGTERM/SIGINT stop: run it again to resume
