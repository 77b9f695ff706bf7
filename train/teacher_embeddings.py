"""Embed a pair split's texts with a sentence-transformers teacher, for distillation.

  python -m train.teacher_embeddings --teacher artifacts/baselines/all-mpnet-base-v2 \
      --pairs artifacts/data/pairs --out artifacts/teacher/mpnet [--split train]
      [--max-query-length N --max-doc-length N] [--query-prompt S --doc-prompt S] [--overwrite]

Every distinct query and document text (positives and `negatives`) of the split is embedded
once (L2-normalised, float16) and written to OUT/teacher.safetensors with OUT/teacher.json,
keyed by the SHA-1 of the stripped text (the format: jbert/data/teacher.py). The max lengths
default to the teacher's own `max_seq_length`. `--config.contrastive.teacher=OUT` trains
against it. Needs the baselines extra: pip install -e '.[baselines]'.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    from jbert.training.cli import ArgumentParser, positive_int, usage_errors

    p = ArgumentParser(prog="python -m train.teacher_embeddings", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a sentence-transformers folder")
    p.add_argument("--pairs", required=True, help="pairs dir/file/hub name")
    p.add_argument("--out", required=True, help="the teacher folder to write")
    p.add_argument("--split", default="train", help="pairs split (train)")
    p.add_argument("--max-query-length", type=positive_int, default=None,
                   help="tokens (default: the teacher's max_seq_length)")
    p.add_argument("--max-doc-length", type=positive_int, default=None,
                   help="tokens (default: the teacher's max_seq_length)")
    p.add_argument("--query-prompt", default="", help="prefix of every query (default none)")
    p.add_argument("--doc-prompt", default="", help="prefix of every document (default none)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing teacher")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)

    from jbert.data.atomic import refuse_existing
    from jbert.data.hub import locate
    from jbert.data.pair_batches import load_pairs
    from jbert.data.teacher import CONFIG_FILE, WEIGHTS_FILE
    from jbert.errors import InputError
    from jbert.evaluation.sentence_models import check_installed, check_model_dir, load_model
    from jbert.evaluation.teacher_embeddings import write_teacher

    with usage_errors():
        refuse_existing(a.out, f"--out {a.out}", a.overwrite, entries=(CONFIG_FILE, WEIGHTS_FILE))
        check_model_dir(a.teacher, f"--teacher {a.teacher}")
        check_installed("--teacher")
        what = f"--pairs {a.pairs}"
        pairs = load_pairs(locate(a.pairs, what, inside=f"{a.split}.jsonl"), a.split)
        if not pairs:
            raise InputError(f"{what}: no pairs in split {a.split!r} (empty)")
    out = write_teacher(a.out, load_model(a.teacher), pairs, teacher=a.teacher,
                        pairs_name=a.pairs, split=a.split,
                        max_query_length=a.max_query_length, max_doc_length=a.max_doc_length,
                        query_prompt=a.query_prompt, doc_prompt=a.doc_prompt,
                        batch_size=a.batch_size, overwrite=a.overwrite)
    print(f"wrote {out}/{WEIGHTS_FILE}: {len(pairs)} pairs of split {a.split!r}")


if __name__ == "__main__":
    main()
