"""The README's end-to-end demo on this Python installation's own sources (no downloads).

  python -m train.demo [--workdir runs/demo] [--mlm-steps N] [--contrastive-steps N]
"""

import argparse
import sys

from jbert.training.preemption import exit_status


def main(argv: list[str] | None = None) -> dict:
    from jbert.training.cli import ArgumentParser, positive_int

    p = ArgumentParser(prog="python -m train.demo", description=__doc__,
                       formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--mlm-steps", type=positive_int, help="default: configs/pretrain_tiny.py's")
    p.add_argument("--contrastive-steps", type=positive_int,
                   help="default: configs/contrastive_tiny.py's")
    a = p.parse_args(argv)

    from jbert.tasks.demo import run

    return run(a.workdir, mlm_steps=a.mlm_steps, contrastive_steps=a.contrastive_steps)


if __name__ == "__main__":
    sys.exit(exit_status(main()))  # 75 after a SIGTERM/SIGINT stop: run it again to resume
