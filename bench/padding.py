"""Padding and tokens/s of `Embedder.encode`: packed rows vs one text per row, on real code.

    .venv/bin/python bench/padding.py                  # tiny-code, stdlib code, 512 and 8192
    .venv/bin/python bench/padding.py --throughput none --functions 5000 --files 1000

Texts are this Python's own standard library (`sysconfig.get_paths()["stdlib"]`, `test/`
left out): `functions` is every function and class body (nested ones too), `files` every
module, each a seeded sample. Tokenizer: `--tokenizer` (the built corpus's by default) or, when
absent, one trained here on the sampled texts.

1. Padding: the share of the positions the encoder computes that hold no text token, for the
   plan `encode` makes (`plan_calls`): `pack=False` (one text per row, rows
   padded to the next power of two, `batch_size` rows per call) vs packed.
2. Tokens/s (real text tokens over wall time) of `encode` with each plan on a randomly
   initialised `--preset` model with `--block-size` (512, the released models' attention block:
   the reference path up to 1024 tokens, blockwise beyond), in one process: one warm-up call
   each (compiles every shape), then `--rounds` alternating timed calls. Unpacked at 8192 the
   32 longest texts share one call padded to 8192 tokens: minutes on 2 cores, hence the
   default `--throughput` list.
"""

from __future__ import annotations

import argparse
import ast
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import cpu_name, summary, timed, write_json  # noqa: E402
from jbert.data.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from jbert.evaluation.embedder import Embedder, padding_fraction, plan_calls  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402


def stdlib_texts(kind: str, count: int, seed: int = 0) -> list[str]:
    """`count` stdlib modules (`files`) or function/class sources (`functions`), seeded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "test" not in p.parts)
    texts = []
    for path in paths:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if kind == "files":
            texts.append(source)
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines(keepends=True)
        texts += ["".join(lines[n.lineno - 1 : n.end_lineno]) for n in ast.walk(tree)
                  if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    pick = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[i] for i in sorted(pick)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny-code")
    p.add_argument("--tokenizer", default="artifacts/data/tokenizer")
    p.add_argument("--max-lengths", default="512,8192")
    p.add_argument("--block-size", type=int, default=512, help="attention_block_size")
    p.add_argument("--functions", type=int, default=600, help="function/class texts sampled")
    p.add_argument("--files", type=int, default=60, help="module texts sampled")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--throughput", default="functions@512,files@512,functions@8192",
                   help="comma list of MIX@MAX_LENGTH to time, or none")
    p.add_argument("--rounds", type=int, default=2, help="timed encodes per variant")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    mixes = {"functions": stdlib_texts("functions", args.functions),
             "files": stdlib_texts("files", args.files)}
    if Path(args.tokenizer).exists():
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        args.tokenizer = "trained here (vocab 8192)"
        tokenizer = train_tokenizer(mixes["files"], vocab_size=8192)
    config = preset(args.preset, vocab_size=tokenizer.get_vocab_size(),
                    attention_block_size=args.block_size)
    print("command: .venv/bin/python bench/padding.py " + " ".join(sys.argv[1:]))
    print(f"machine: {cpu_name()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"texts: stdlib of Python {sysconfig.get_python_version()}; tokenizer {args.tokenizer}"
          f"; model {args.preset} ({config.num_hidden_layers} layers, {config.hidden_size} "
          f"hidden, attention block {args.block_size}), random init, fp32; batch_size "
          f"{args.batch_size}")
    embedder = Embedder(config, functional.init_params(config, jax.random.key(0)), tokenizer,
                        max_length=max(int(x) for x in args.max_lengths.split(",")))

    results = {}
    print("\n| texts | max_length | texts | tokens | padding one per row | padding packed "
          "| calls one per row | calls packed | shapes one per row | shapes packed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mix, texts in mixes.items():
        for max_length in (int(x) for x in args.max_lengths.split(",")):
            lengths = [len(x) for x in embedder.tokenize(texts, max_length)]
            plans = {pack: plan_calls(lengths, max_length, args.batch_size, pack)
                     for pack in (False, True)}
            row = {"texts": len(texts), "tokens": sum(lengths)}
            for pack, name in ((False, "unpacked"), (True, "packed")):
                row[f"padding_{name}"] = padding_fraction(plans[pack], lengths)
                row[f"calls_{name}"] = len(plans[pack])
                row[f"shapes_{name}"] = len({(c.num_rows, c.length) for c in plans[pack]})
            results[f"{mix}@{max_length}"] = row
            print(f"| {mix} | {max_length} | {row['texts']} | {row['tokens']:,} "
                  f"| {row['padding_unpacked']:.1%} | {row['padding_packed']:.1%} "
                  f"| {row['calls_unpacked']} | {row['calls_packed']} "
                  f"| {row['shapes_unpacked']} | {row['shapes_packed']} |", flush=True)

    if args.throughput != "none":
        print("\ntokens/s of encode (real text tokens / wall time), alternating rounds:")
        for key in args.throughput.split(","):
            row = results[key]
            mix, max_length = key.split("@")
            texts, times = mixes[mix], {"unpacked": [], "packed": []}

            def run(pack, texts=texts, max_length=int(max_length)):
                return embedder.encode(texts, max_length=max_length,
                                       batch_size=args.batch_size, pack=pack)

            for name in times:
                first, _ = timed(lambda name=name: run(name == "packed"))
                print(f"  {key} warm-up {name}: {first:.1f} s (compiles included)", flush=True)
            for round_ in range(args.rounds):
                for name in (["unpacked", "packed"] if round_ % 2 == 0 else
                             ["packed", "unpacked"]):
                    times[name].append(timed(lambda name=name: run(name == "packed"))[0])
            stats = {n: summary(t, row["tokens"]) for n, t in times.items()}
            row["throughput"] = {**stats, "times": times}
            print(f"  {key}: one per row {stats['unpacked']['tok_s']:,.0f} tok/s "
                  f"(median {stats['unpacked']['median_s']:.2f} s), packed "
                  f"{stats['packed']['tok_s']:,.0f} tok/s ({stats['packed']['median_s']:.2f} s)"
                  f": packed / one per row = "
                  f"{stats['packed']['tok_s'] / stats['unpacked']['tok_s']:.2f}x", flush=True)
    write_json(args.json, {"args": vars(args), "machine": cpu_name(), "results": results})
    return results


if __name__ == "__main__":
    main()
