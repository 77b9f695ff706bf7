"""MLM pretraining of a JinaBERT encoder.

  python -m train.pretrain --config configs/pretrain_tiny.py [--config.steps=500 ...]

Multi-host: start one process per host with --coordinator HOST:PORT --num_processes N
--process_id I (or --coordinator auto on TPU pods and managed clusters).
"""

import argparse
import json
import sys

from jbert.train_config import parse_cli


def main(argv: list[str] | None = None) -> dict:
    config, rest = parse_cli(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--coordinator")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args(rest)

    from jbert.sharding import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)

    import jax

    from jbert.pretrain import mlm_task
    from jbert.trainer import train

    task, facts = mlm_task(config, jax.process_count())
    summary = train(config, task)
    summary.pop("state")
    summary["data"] = facts
    if jax.process_index() == 0:
        print(json.dumps({k: summary[k] for k in ("status", "end_step", "last", "final_eval",
                                                  "data") if k in summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()
