"""Hard negatives for the contrastive stage, written into a copy of the pairs.

  python -m train.mine_negatives --model runs/contrastive-small/export \\
      --pairs artifacts/data/pairs --out artifacts/data/pairs-mined
  python -m train.mine_negatives --bm25 --pairs artifacts/data/pairs --out artifacts/data/pairs-bm25

Dense mining (`--model`, an HF export dir or a jbert run dir) embeds every training pair's query
and positive, ranks all positives for each query, and draws `--negatives` of the documents ranked
in `--rank-window` (default ranks 10-100: the first ranks hold most false negatives), dropping
those scoring above `--margin` times the positive and those equal to the positive. `--bm25` takes
the best BM25 matches instead (no model needed). The output directory gets `train.jsonl` with a
`negatives` list per pair, the held-out `test.jsonl` and `heldout_repos.json` unchanged, and
`mining.json` saying how it was made; use it with
`--config.contrastive.sources=OUT --config.contrastive.hard_negatives=N`.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

OUTPUTS = ("train.jsonl", "test.jsonl", "heldout_repos.json", "mining.json")


def main(argv: list[str] | None = None) -> dict:
    from jbert.training.cli import ArgumentParser, ConfigError, positive_int, usage_errors

    p = ArgumentParser(prog="python -m train.mine_negatives", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True,
                   help="pairs dir with train.jsonl (and test.jsonl), a jsonl file or a hub name")
    p.add_argument("--out", required=True, help="output pairs dir")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", help="HF export dir or jbert run dir that embeds")
    who.add_argument("--bm25", action="store_true", help="mine with BM25 instead of a model")
    p.add_argument("--negatives", type=positive_int, default=7,
                   help="negatives per pair (default 7)")
    p.add_argument("--rank-window", type=int, nargs=2, default=(10, 100), metavar=("FROM", "TO"),
                   help="ranks to draw dense negatives from (default 10 100)")
    p.add_argument("--margin", type=float, default=0.95,
                   help="drop candidates scoring above margin x the positive (default 0.95)")
    p.add_argument("--max-query-length", type=positive_int, default=32)
    p.add_argument("--max-doc-length", type=positive_int, default=128)
    p.add_argument("--max-pairs", type=positive_int, default=None,
                   help="mine a seeded sample of N pairs (all languages), written alone")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    from jbert.data.atomic import atomic_dir, refuse_existing
    from jbert.data.hub import locate
    from jbert.data.pair_batches import load_pairs
    from jbert.errors import InputError
    from jbert.tasks.mining import MiningConfig, bm25_negatives, dense_negatives

    src, out = Path(args.pairs), Path(args.out)
    with usage_errors():
        refuse_existing(out, f"--out {out}", args.overwrite)
        what = f"--pairs {args.pairs}"
        file = locate(args.pairs, what, inside="train.jsonl")
        if isinstance(file, Path) and out.resolve() in (file.resolve(), file.parent.resolve()):
            raise InputError(f"--out {out}: is where --pairs {args.pairs} is read from; mining "
                             "writes a copy elsewhere")
        try:
            cfg = MiningConfig(negatives=args.negatives, rank_window=tuple(args.rank_window),
                               margin=args.margin, max_query_length=args.max_query_length,
                               max_doc_length=args.max_doc_length, seed=args.seed)
        except ValueError as e:
            raise ConfigError(f"--rank-window/--negatives: {e}") from e
        pairs = load_pairs(file, "train")
        if not pairs:
            raise InputError(f"{what}: no pairs in its train split (empty)")
        if args.max_pairs is not None and args.max_pairs < len(pairs):
            keep = np.sort(np.random.default_rng(args.seed).choice(len(pairs), args.max_pairs,
                                                                  replace=False))
            pairs = [pairs[i] for i in keep]
        if args.model:
            from jbert.evaluation.embedder import Embedder

            embedder = Embedder.from_pretrained(
                args.model, max_length=max(cfg.max_query_length, cfg.max_doc_length))
    started = time.perf_counter()
    if args.model:
        mined, stats = dense_negatives(embedder, pairs, cfg)
    else:
        mined, stats = bm25_negatives(pairs, cfg.negatives), {"pairs": len(pairs)}
    report = {"method": "dense" if args.model else "bm25", "model": args.model,
              "pairs": str(src), **{k: v for k, v in vars(args).items()
                                    if k not in ("model", "pairs", "out", "bm25", "overwrite")},
              **stats, "seconds": round(time.perf_counter() - started, 1)}
    with atomic_dir(out, lambda name: name in OUTPUTS) as tmp:  # all or nothing
        with open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
            for pair in mined:
                f.write(json.dumps(pair, ensure_ascii=False) + "\n")
        for name in ("test.jsonl", "heldout_repos.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        (tmp / "mining.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
