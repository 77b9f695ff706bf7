"""Code retrieval metrics of an encoder on held-out docstring/code pairs, with BM25 beside it.

  python -m train.evaluate --model runs/contrastive-tiny/export --pairs artifacts/data-tiny/pairs
  python -m train.evaluate --model runs/pretrain-tiny --pairs artifacts/data-tiny/pairs --bm25

`--model` is an HF export dir or a jbert run dir (its latest checkpoint's encoder: the untuned
MLM backbone). Every held-out query is ranked against every held-out code snippet; prints
MRR@10, nDCG@10, recall@1/10 as JSON.
"""

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", required=True, help="an HF export dir or a jbert run dir")
    parser.add_argument("--pairs", required=True, help="pairs dir/file/hub name")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_pairs", type=int, default=None)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--max_doc_length", type=int, default=256)
    parser.add_argument("--bm25", action="store_true", help="also score BM25 on the same set")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from jbert.data.pair_batches import load_pairs
    from jbert.errors import InputError
    from jbert.evaluation import evaluate_embeddings, load_encoder
    from jbert.train_config import usage_errors

    with usage_errors():
        config, params, tokenizer = load_encoder(args.model)
        pairs = load_pairs(args.pairs, args.split)
        if not pairs:
            raise InputError(f"--pairs {args.pairs}: no pairs in split {args.split!r} (empty)")
    result = evaluate_embeddings(
        config, params, tokenizer, pairs,
        max_pairs=args.max_pairs, max_query_length=args.max_query_length,
        max_doc_length=args.max_doc_length, bm25=args.bm25)
    result = {"model": args.model, "pairs": args.pairs, "split": args.split, **result}
    print(json.dumps(result, indent=1))
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
