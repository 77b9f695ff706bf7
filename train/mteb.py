"""Evaluate a jbert model on mteb retrieval tasks (MTEB(Code), CoIR, CodeSearchNet, ...).

  python -m train.mteb --model DIR --benchmark "MTEB(Code, v1)" --out runs/mteb-code
  python -m train.mteb --model DIR --benchmark CoIR --out runs/mteb-coir
  python -m train.mteb --model DIR --tasks CodeSearchNetRetrieval,CosQA --out runs/mteb
  python -m train.mteb --model DIR --beir data/my-beir-set --out runs/mteb   # local, offline

`--model` is an HF export dir or a jbert run dir (its latest checkpoint's encoder). mteb
downloads the task data from the Hugging Face hub (`pip install -e '.[mteb]'`, network needed;
`--beir` reads a local BEIR directory: corpus.jsonl, queries.jsonl, qrels/test.tsv). mteb's
result JSON goes to OUT/results/jbert__<model dir name>/local/<Task>.json; nDCG@10 per task
is printed and kept with the settings in OUT/jbert_mteb.json. See docs/evaluation.md.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from jbert.training.cli import ArgumentParser, ConfigError, positive_int, usage_errors

    parser = ArgumentParser(prog="python -m train.mteb", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF export dir or jbert run dir")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tasks", help="comma-separated mteb task names, e.g. CosQA,AppsRetrieval")
    which.add_argument("--benchmark", help='an mteb benchmark: "MTEB(Code, v1)" or CoIR')
    which.add_argument("--beir", help="comma-separated local BEIR-layout directories")
    parser.add_argument("--out", required=True, help="results directory")
    parser.add_argument("--max-query-length", type=positive_int, default=512,
                        help="tokens, default 512")
    parser.add_argument("--max-doc-length", type=positive_int, default=512,
                        help="tokens, default 512")
    parser.add_argument("--query-prompt", default="", help="prefix of every query (default none)")
    parser.add_argument("--document-prompt", default="", help="prefix of every document")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="rows of 512 tokens per encoder call (default 32)")
    parser.add_argument("--name", help='model name in the results, "org/model" '
                        "(default jbert/<model dir name>)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="keep results already in --out (same model only)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the results already in --out")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from jbert.data.atomic import refuse_existing, write_text
    from jbert.evaluation.mteb_encoder import mteb_encoder, run, select_tasks

    def names(arg: str | None) -> list[str]:
        return [x.strip() for x in (arg or "").split(",") if x.strip()]

    prompts = {k: v for k, v in (("query", args.query_prompt),
                                 ("document", args.document_prompt)) if v}
    with usage_errors():
        refuse_existing(args.out, f"--out {args.out}", args.overwrite or args.resume,
                        entries=("results", "jbert_mteb.json"))
        try:
            tasks = select_tasks(tasks=names(args.tasks), benchmark=args.benchmark,
                                 beir=names(args.beir))
            encoder = mteb_encoder(args.model, name=args.name, prompts=prompts,
                                   max_query_length=args.max_query_length,
                                   max_doc_length=args.max_doc_length, batch_size=args.batch_size)
        except (KeyError, ValueError, ImportError) as e:
            raise ConfigError(e.args[0] if e.args else repr(e)) from e
    scores = run(encoder, tasks, args.out, overwrite=not args.resume)
    for task, s in scores.items():
        print(f"{task:40s} nDCG@10 {s['ndcg@10']:.4f}")
    if len(scores) > 1:
        print(f"{'mean':40s} nDCG@10 {np.mean([s['ndcg@10'] for s in scores.values()]):.4f}")
    report = {"model": args.model, "name": encoder.mteb_model_meta.name,
              "max_query_length": args.max_query_length, "max_doc_length": args.max_doc_length,
              "prompts": dict(encoder.model_prompts or {}), "scores": scores}
    write_text(Path(args.out, "jbert_mteb.json"), json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
