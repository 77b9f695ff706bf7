"""Contrastive tuning of a JinaBERT encoder into a code search model, then HF export.

  python -m train.contrastive --config configs/contrastive_tiny.py [--config.steps=200 ...]

Starts from `--config.init_from` (an MLM run dir / orbax checkpoint dir, or an HF export), or
resumes the run in `--config.workdir`. At the end the encoder is written to `<workdir>/export`
in the Hugging Face / sentence-transformers layout. Multi-host flags as in train.pretrain.
"""

import json
import sys
from pathlib import Path

from jbert.errors import CorruptCheckpointError, InputError
from jbert.training.cli import parse_training_cli, usage_errors
from jbert.training.preemption import exit_status


def main(argv: list[str] | None = None) -> dict:
    with usage_errors():
        config = parse_training_cli(sys.argv[1:] if argv is None else argv, __doc__,
                                    prog="python -m train.contrastive")

    import jax

    from jbert.ops.sharding import make_mesh
    from jbert.tasks.contrastive import contrastive_task
    from jbert.training.export import export_run
    from jbert.training.trainer import train

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    with usage_errors():  # missing data or pairs
        task, facts = contrastive_task(config, mesh)
    with usage_errors(InputError, CorruptCheckpointError):  # checks before the first step
        summary = train(config, task, data_facts=facts)
    summary.pop("state")
    if config.contrastive.export and summary["status"] == "done":
        # The encoder alone (`base`): what sentence-transformers and AutoModel load. Every
        # process reads the checkpoint, process 0 writes.
        summary["export"] = str(export_run(config.workdir, Path(config.workdir) / "export",
                                           head="base", overwrite=True))
    if jax.process_index() == 0:
        print(json.dumps({k: summary[k] for k in ("status", "end_step", "last", "final_eval",
                                                  "data", "export") if k in summary},
                         indent=1, default=float))
    return summary


if __name__ == "__main__":
    sys.exit(exit_status(main()))  # 75 after a SIGTERM/SIGINT stop: run it again to resume
