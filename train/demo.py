"""The README's end-to-end demo on this Python installation's own sources (no downloads).

  python -m train.demo [--workdir runs/demo] [--steps N]
"""

import argparse


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--steps", type=int, help="MLM steps (default: the tiny recipe's)")
    a = p.parse_args(argv)

    from jbert.demo import run

    run(a.workdir, steps=a.steps)


if __name__ == "__main__":
    main()
