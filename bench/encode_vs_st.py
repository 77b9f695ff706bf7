"""CPU `encode` tokens/s: jbert's Embedder vs sentence-transformers on jbert's own export.

    .venv/bin/python bench/encode_vs_st.py --setting mixed     # stdlib code, up to 8192 tokens
    .venv/bin/python bench/encode_vs_st.py --setting uniform   # every text exactly 512 tokens

One base-code model with random weights (`--preset`), exported with
`save_pretrained(..., self_contained=True)` and loaded by `SentenceTransformer(...,
trust_remote_code=True, device="cpu")`: the same weights and tokenizer on both sides, so the
embeddings must agree (the script reports the largest difference).

Texts are this Python's standard library (`bench.padding.stdlib_texts`): `mixed` is a seeded
sample of function/class sources plus whole modules, cut at `--max-length` tokens; `uniform` is
module prefixes truncated to exactly 512 tokens, where packing has nothing to remove. The
tokenizer is trained here on stdlib modules (random weights do not care which one it is).

- jbert: `Embedder.encode(texts, batch_size=...)` (packed rows of 512 tokens and longer, about
  `batch_size * 512` tokens per call, the attention path `auto` picks).
- sentence-transformers: `st.encode(group, batch_size=len(group), normalize_embeddings=True)`
  on texts sorted by length and grouped so that a batch pads to at most `--st-tokens` positions
  (the per-batch padding ST does itself). ST's default `batch_size=32` would pad 32 texts to the
  longest one in a batch: at 8192 tokens its [32, 12, 8192, 8192] ALiBi bias alone is 100 GB.

One warm-up of each (jbert's encodes the whole set, compiling every shape its plan uses;
torch's two short texts), then `--rounds` timed rounds, alternating and reversing the order
every other round; the embeddings compared are the last round's. Tokens/s counts real text tokens
(specials included, padding not), tokenisation included on both sides. Threads: torch
`set_num_threads(--threads)`; XLA:CPU's pool is one thread per core, so run this on a machine
with `--threads` cores (the script prints both).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine_line, peak_rss_gib, summary, timed, write_json  # noqa: E402
from bench.padding import stdlib_texts  # noqa: E402
from jbert.data.tokenizer import train_tokenizer  # noqa: E402
from jbert.evaluation.embedder import Embedder  # noqa: E402
from jbert.hf.save import save_pretrained  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402


def uniform_texts(tokenizer, count: int, length: int, seed: int = 0) -> list[str]:
    """Prefixes of stdlib modules that tokenise to more than `length` tokens (so truncation at
    `length` with specials leaves exactly `length`)."""
    texts = []
    for source in stdlib_texts("files", 4 * count, seed):
        enc = tokenizer.encode(source, add_special_tokens=False)
        if len(enc.ids) > length + 8:
            texts.append(source[: enc.offsets[length + 8][1]])
        if len(texts) == count:
            break
    return texts


def st_groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Text indices, longest first, in batches padding to at most `budget` positions."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=("mixed", "uniform"), default="mixed")
    p.add_argument("--preset", default="base-code")
    p.add_argument("--functions", type=int, default=60, help="mixed: function/class texts")
    p.add_argument("--files", type=int, default=3, help="mixed: whole modules")
    p.add_argument("--files-seed", type=int, default=2,
                   help="mixed: sample seed of the modules (2: 1810, 4235 and 8192+ tokens)")
    p.add_argument("--texts", type=int, default=32, help="uniform: texts of --length tokens")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncation (default: 8192 mixed, 512 uniform)")
    p.add_argument("--batch-size", type=int, default=32, help="Embedder.encode batch_size")
    p.add_argument("--st-tokens", type=int, default=16384,
                   help="padded positions per sentence-transformers batch")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    max_length = args.max_length or (8192 if args.setting == "mixed" else 512)

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    print("command: .venv/bin/python bench/encode_vs_st.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}; os.cpu_count()={os.cpu_count()}")
    config = preset(args.preset)
    tokenizer = train_tokenizer(stdlib_texts("files", 200, seed=1),
                                vocab_size=min(32768, config.vocab_size))
    if args.setting == "mixed":
        texts = (stdlib_texts("functions", args.functions, args.seed)
                 + stdlib_texts("files", args.files, args.files_seed))
    else:
        texts = uniform_texts(tokenizer, args.texts, max_length, args.seed)
    params = functional.init_params(config, jax.random.key(args.seed), "base")
    embedder = Embedder(config, params, tokenizer, max_length=max_length)
    lengths = [len(x) for x in embedder.tokenize(texts, max_length)]
    tokens = sum(lengths)
    print(f"model: {args.preset} ({config.num_hidden_layers} layers, {config.hidden_size} "
          f"hidden), random weights, fp32; {args.setting}: {len(texts)} texts, {tokens} tokens, "
          f"lengths {min(lengths)}-{max(lengths)} (median {int(np.median(lengths))}), "
          f"max_length {max_length}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        export = save_pretrained(Path(tmp) / "export", config, params, tokenizer,
                                 self_contained=True)
        st = SentenceTransformer(str(export), trust_remote_code=True, device="cpu")
    st.max_seq_length = max_length
    groups = st_groups(lengths, args.st_tokens)

    def run_jbert():
        return embedder.encode(texts, batch_size=args.batch_size)

    def run_st():
        out = np.zeros((len(texts), config.hidden_size), np.float32)
        for group in groups:
            out[group] = st.encode([texts[i] for i in group], batch_size=len(group),
                                   normalize_embeddings=True, convert_to_numpy=True)
        return out

    runs = {"jbert": run_jbert, "sentence-transformers": run_st}
    # Warm-ups: jbert compiles every shape of its plan (the whole set); torch has nothing to
    # compile, so two short texts load its kernels.
    warmup = {"jbert": timed(run_jbert)[0],
              "sentence-transformers": timed(lambda: st.encode(texts[:2]))[0]}
    print(f"  warm-up: {warmup}", flush=True)
    times, outputs = {name: [] for name in runs}, {}
    names = list(runs)
    for round_ in range(args.rounds):
        for name in (names[::-1] if round_ % 2 == 0 else names):
            seconds, outputs[name] = timed(runs[name])
            times[name].append(seconds)
            print(f"  round {round_} {name}: {seconds:.1f} s", flush=True)
    max_diff = float(np.abs(outputs["jbert"] - outputs["sentence-transformers"]).max())
    rows = {name: summary(t, tokens) for name, t in times.items()}
    ratio = rows["jbert"]["tok_s"] / rows["sentence-transformers"]["tok_s"]
    print(f"\n| {args.setting} | n | s median (min-max) | tok/s |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['n']} | {r['median_s']:.1f} ({r['min_s']:.1f}-{r['max_s']:.1f}) "
              f"| {r['tok_s']:.0f} |")
    print(f"\njbert / sentence-transformers tokens/s: {ratio:.2f}x; max |embedding diff| "
          f"{max_diff:.1e}; jbert padding {embedder.last_padding_fraction:.1%}; "
          f"peak RSS {peak_rss_gib():.1f} GiB")
    result = {"args": vars(args), "machine": machine_line(), "texts": len(texts),
              "tokens": tokens, "max_length": max_length, "rows": rows, "times": times,
              "warmup_s": warmup, "ratio": ratio, "max_abs_diff": max_diff,
              "jbert_padding": embedder.last_padding_fraction, "st_batches": len(groups)}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
