"""Code retrieval figures of an encoder, BM25 and their fusion, on BEIR-layout sets or on our
held-out docstring/code pairs (one set per language), as JSON.

  python -m train.evaluate --model runs/contrastive-small/export --pairs artifacts/data/pairs
  python -m train.evaluate --model runs/pretrain-small --pairs artifacts/data/pairs  # untuned
  python -m train.evaluate --model EXPORT --beir path/to/cosqa path/to/other_set
  python -m train.evaluate --pairs artifacts/data/pairs --write-beir artifacts/beir  # export
  python -m train.evaluate --model EXPORT --pairs artifacts/data/pairs \
      --baseline artifacts/baselines/all-MiniLM-L6-v2 \
      --baseline artifacts/baselines/all-mpnet-base-v2

`--model` is an HF export dir or a jbert run dir (its latest checkpoint's encoder); leave it out
for BM25 alone. A BEIR-layout dir holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv (the
layout CoIR and CodeSearchNet-style sets ship in). Every query is ranked against the whole
corpus of its set; per set and macro-averaged over the sets: nDCG@10 (as pytrec_eval computes
it), MRR@10, recall@1/10/100 for `dense`, `bm25` (identifiers split), `rrf` (reciprocal-rank
fusion) and `linear` (z-scored scores mixed with a weight chosen by 2-fold cross-validation
over the queries). A model trained with prompts gets them (an export's
config_sentence_transformers.json, a run's contrastive.query_prompt / doc_prompt); `--dims`
reports dense and hybrid figures at smaller Matryoshka sizes too (default: the sizes the model
was trained with), from one embedding pass. `--baseline DIR` (repeatable; `python -m
train.fetch_baselines` fetches all-MiniLM-L6-v2 and all-mpnet-base-v2) adds a
sentence-transformers model as a system named after its folder, run with its documented
settings (its own max_seq_length, normalised embeddings, cosine; `--max-*-length` apply to
`--model` only). Every comparison of the model with another system (without `--model`: of each
baseline with BM25) gets a paired bootstrap 95% interval over queries of the macro nDCG@10
difference (`--resamples`). The JSON goes to stdout (and `--out`), a table to stderr. See
docs/evaluation.md.
"""

import argparse
import json
import sys
from pathlib import Path


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers") from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return dims


def main(argv: list[str] | None = None) -> dict:
    from jbert.training.cli import ArgumentParser, positive_int, usage_errors

    parser = ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF export dir or jbert run dir (none: BM25 only)")
    parser.add_argument("--baseline", action="append", default=[], metavar="DIR",
                        help="a sentence-transformers folder scored beside the model "
                             "(repeatable; named after the folder)")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", help="pairs dir/file/hub name; one set per language")
    data.add_argument("--beir", nargs="+", metavar="DIR", help="BEIR-layout dirs")
    parser.add_argument("--split", default="test", help="pairs split / qrels file (test)")
    parser.add_argument("--max-queries", type=positive_int, default=None,
                        help="sample at most N queries per set (seeded; the corpus stays whole)")
    parser.add_argument("--max-query-length", type=positive_int, default=64)
    parser.add_argument("--max-doc-length", type=positive_int, default=256)
    parser.add_argument("--dims", type=_dims, default=None, metavar="D,D,...",
                        help="Matryoshka sizes to report besides the full one, e.g. 256,128 "
                             "(default: the model's own; '' for none)")
    parser.add_argument("--no-bm25", dest="bm25", action="store_false",
                        help="skip BM25 and the hybrids")
    parser.add_argument("--write-beir", metavar="DIR",
                        help="also write the sets in BEIR layout under DIR/<set name>")
    parser.add_argument("--resamples", type=positive_int, default=1000,
                        help="paired bootstrap resamples of the queries (1000)")
    parser.add_argument("--baseline-batch-size", type=positive_int, default=32,
                        help="texts per forward pass of the baselines (32)")
    parser.add_argument("--baseline-cache", metavar="DIR",
                        help="keep the baselines' embeddings here (a run again reuses them)")
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file and --write-beir sets")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.model is None and not args.bm25 and not args.write_beir and not args.baseline:
        parser.error("nothing to evaluate: give --model or --baseline, or drop --no-bm25")

    from jbert.data.atomic import refuse_existing, write_text
    from jbert.errors import InputError
    from jbert.evaluation.beir import load_evaluation_sets, write_beir
    from jbert.evaluation.embedder import Embedder
    from jbert.evaluation.report import interval_lines, retrieval_report, summary_table
    from jbert.evaluation.sentence_models import check_baselines

    with usage_errors():
        if args.out:
            refuse_existing(args.out, f"--out {args.out}", args.overwrite)
        baselines = check_baselines(args.baseline)
        sets = load_evaluation_sets(args.pairs, args.beir or (), args.split, args.max_queries)
        if args.write_beir:
            for rs in sets:
                where = Path(args.write_beir) / rs.name
                refuse_existing(where, f"--write-beir {args.write_beir}: {where}",
                                args.overwrite)
        embedder = (Embedder.from_pretrained(
            args.model, max_length=max(args.max_query_length, args.max_doc_length))
            if args.model is not None else None)
        if embedder is not None and args.dims and max(args.dims) > embedder.config.hidden_size:
            raise InputError(f"--dims {','.join(map(str, args.dims))}: sizes must be at most "
                             f"the model's hidden_size {embedder.config.hidden_size}")
    if args.write_beir:
        for rs in sets:
            write_beir(rs, Path(args.write_beir) / rs.name, args.split)
    result = {"model": args.model, "data": args.pairs or args.beir, "split": args.split}
    if embedder is not None:
        result["prompts"] = embedder.prompts
    result.update(retrieval_report(
        embedder, sets, baselines=baselines, bm25=args.bm25,
        max_query_length=args.max_query_length, max_doc_length=args.max_doc_length,
        dims=args.dims, resamples=args.resamples, baseline_batch_size=args.baseline_batch_size,
        baseline_cache=args.baseline_cache))
    print(json.dumps(result, indent=1))
    if "macro" in result:
        print("\n".join([summary_table(result), *interval_lines(result.get("intervals"))]),
              file=sys.stderr)
    if args.out:
        write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
