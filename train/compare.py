"""Several training runs side by side: their curves on one figure and their final evals as a
markdown table.

  python -m train.compare runs/contrastive-small runs/contrastive-small-hardneg \
      --out runs/compare/small.png --table runs/compare/small.md
  python -m train.compare RUN_DIR [RUN_DIR ...] --out FIG.png [--metrics loss,KEY,...]
      [--table OUT.md]

Each RUN_DIR is a training run's workdir (its metrics.jsonl), named after its directory. The
figure has one panel per metric, one line per run; `--metrics` names keys of metrics.jsonl
(default: loss, eval_loss and retrieval_ndcg@10, those the runs logged). The table has each
run's last eval record: the step, eval_loss / eval_accuracy (MLM), macro nDCG@10, MRR@10 and
recall@1/10 of the model and nDCG@10 of RRF and BM25 (contrastive), and the eval keys named in
`--metrics` (`python/retrieval_ndcg@10`); printed, and written to `--table`. See
docs/evaluation.md.
"""

import argparse
from pathlib import Path


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no metric")
    return names


def main(argv: list[str] | None = None) -> str:
    from jbert.training.cli import ArgumentParser, usage_errors

    p = ArgumentParser(prog="python -m train.compare", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training runs' workdirs")
    p.add_argument("--out", required=True, metavar="FIG.png", help="the figure (PNG)")
    p.add_argument("--metrics", type=_names, metavar="KEY,...",
                   help="comma-separated keys of metrics.jsonl, one panel each")
    p.add_argument("--table", metavar="OUT.md", help="also write the table to this file")
    a = p.parse_args(argv)

    from jbert.analysis.compare import compare_runs
    from jbert.analysis.plots import save

    with usage_errors():
        figure, table = compare_runs(a.runs, a.metrics)
    save(figure, a.out)
    if a.table:
        Path(a.table).parent.mkdir(parents=True, exist_ok=True)
        Path(a.table).write_text(table)
    print(table, end="")
    return table


if __name__ == "__main__":
    main()
