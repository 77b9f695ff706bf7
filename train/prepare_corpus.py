"""Build the corpus, tokenizer and docstring/code pairs both training stages read.

  python -m train.prepare_corpus --out artifacts/data-tiny --max-bytes 167772160 \
      --vocab-size 8192 --tokenizer-max-bytes 16777216 \
      --split-identifiers --lowercase                                            # the demo's data
  scripts/fetch_sources.sh data/sources                                           # more languages
  python -m train.prepare_corpus --out artifacts/data --fetched data/sources      # docs/data.md

--fetched DIR also copies DIR/manifest.json (each fetched package's version and archive
SHA-256, written by scripts/fetch_sources.sh) into summary.json under "fetched".

With no --source, the sources are the running Python's stdlib, site-packages and C headers.
"""

import argparse
import sys

from jbert.data.atomic import refuse_existing
from jbert.data.corpus import default_sources, fetched_sources, parse_source
from jbert.data.hub import locate
from jbert.data.prepare import BUILD, PrepareConfig, fetched_manifest, prepare_data
from jbert.data.tokenizer import load_tokenizer
from jbert.errors import InputError
from jbert.training.cli import ArgumentParser, usage_errors


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="python -m train.prepare_corpus", description=__doc__,
                       formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="artifacts/data", help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the corpus, tokenizer and pairs of an earlier build in --out")
    p.add_argument("--source", action="append", default=[], help="NAME=PATH[@DEPTH], repeatable")
    p.add_argument("--fetched", help="also walk what scripts/fetch_sources.sh put in this folder")
    p.add_argument("--no-default-sources", action="store_true", help="skip the Python install")
    p.add_argument("--max-files", type=int)
    p.add_argument("--max-bytes", type=int, help="stop the walk after this much kept text")
    p.add_argument("--max-file-bytes", type=int, default=1 << 20)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=61056)
    p.add_argument("--tokenizer-max-bytes", type=int, default=64 << 20)
    p.add_argument("--tokenizer", help="use this tokenizer (file, directory or hub name)")
    p.add_argument("--split-identifiers", action="store_true",
                   help="tokenizer without whitespace, identifiers cut into words (retrieval)")
    p.add_argument("--lowercase", action="store_true",
                   help="tokenizer that folds case, camel-case words kept apart (retrieval)")
    p.add_argument("--no-pairs", action="store_true")
    p.add_argument("--pair-workers", type=int, default=1)
    p.add_argument("--no-measure", action="store_true", help="skip the throughput measurements")
    a = p.parse_args(argv)

    # Extra languages first: a --max-bytes cap then trims the (large) Python installation.
    with usage_errors():
        refuse_existing(a.out, f"--out {a.out}", a.overwrite, entries=BUILD)
        sources = fetched_sources(a.fetched) if a.fetched else []
        if a.fetched and not sources:
            raise InputError(f"--fetched {a.fetched}: no deb/ or npm/ packages there (what "
                             "scripts/fetch_sources.sh unpacks)")
        fetched = fetched_manifest(a.fetched) if a.fetched else None
        if a.fetched and fetched is None:
            print(f"warning: --fetched {a.fetched} has no manifest.json, so the build cannot "
                  f"say which versions it read: scripts/fetch_sources.sh {a.fetched} "
                  "--manifest-only writes it", file=sys.stderr)
        sources += [parse_source(s) for s in a.source]
        if a.tokenizer:  # checked before the corpus is built, not after
            load_tokenizer(locate(a.tokenizer, f"--tokenizer {a.tokenizer}", repo_type="model"))
    sources += [] if a.no_default_sources else default_sources()
    if not sources:
        p.error("no sources: drop --no-default-sources or give --source/--fetched")
    cfg = PrepareConfig(
        max_files=a.max_files,
        max_bytes=a.max_bytes,
        max_file_bytes=a.max_file_bytes,
        test_fraction=a.test_fraction,
        seed=a.seed,
        vocab_size=a.vocab_size,
        tokenizer_max_bytes=a.tokenizer_max_bytes,
        tokenizer=a.tokenizer,
        split_identifiers=a.split_identifiers,
        lowercase=a.lowercase,
        pairs=not a.no_pairs,
        pair_workers=a.pair_workers,
        measure=not a.no_measure,
    )
    with usage_errors(InputError):  # sources that keep no file
        prepare_data(sources, a.out, cfg, fetched=fetched)


if __name__ == "__main__":
    main()
