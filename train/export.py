"""Export a training run's checkpoint to the released Hugging Face layout.

  python -m train.export --checkpoint runs/pretrain-tiny --out artifacts/export [--step N]
      [--head base] [--tokenizer DIR] [--overwrite] [--self-contained]

`--head base` writes only the encoder (an embedding model for AutoModel/SentenceTransformer);
by default the trained head is exported (JinaBertForMaskedLM for an MLM run).
`--self-contained` ships jbert's own modeling code in the directory, which transformers 4.x and
5.x load offline with trust_remote_code=True; without it `auto_map` points at jina's released
code, as the released checkpoints do (transformers 4.x only). See docs/export.md.
"""

import argparse


def main(argv: list[str] | None = None) -> None:
    from jbert.training.cli import ArgumentParser, usage_errors

    p = ArgumentParser(prog="python -m train.export", description=__doc__,
                       formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run directory (its workdir)")
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int)
    p.add_argument("--head", choices=["base", "masked_lm"])
    p.add_argument("--tokenizer", help="default: the tokenizer of the run's data directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--self-contained", action="store_true",
                   help="ship jbert's own modeling code (loads with transformers 4 and 5)")
    a = p.parse_args(argv)

    from jbert.data.atomic import refuse_existing
    from jbert.training.export import export_run

    with usage_errors():
        refuse_existing(a.out, f"--out {a.out}", a.overwrite)  # before the checkpoint is read
        out = export_run(a.checkpoint, a.out, step=a.step, tokenizer=a.tokenizer, head=a.head,
                         overwrite=a.overwrite, self_contained=a.self_contained)
    print(f"exported {a.checkpoint} to {out}")


if __name__ == "__main__":
    main()
