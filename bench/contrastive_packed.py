"""Packed against padded contrastive batches: real tokens/s of the train step on the same pairs,
as a ratio in one run.

    .venv/bin/python bench/contrastive_packed.py   # configs/contrastive_small.py, the CPU recipe
    .venv/bin/python bench/contrastive_packed.py --config configs/contrastive_tiny.py --batches 4

The same `--batches` raw pair batches (the config's batch size, from its training pairs) become
padded rows (one text per row, each group padded to its length limit) and packed rows
(`contrastive.pack`: queries and code end to end in the rows `plan_pack_rows` plans for the
average batch, segment ids keeping them apart; pairs that do not fit wait for the next batch).
Both steps are `jit_train_step` as the trainer builds it, on one device. Before timing, the
loss of the first packed batch and of the same pairs padded are computed with the same weights
(dropout off): they must agree. One warm-up step each (compiles), then every batch once per
variant per round, alternating the order; tokens/s counts real tokens only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import cpu_name, timed, write_json  # noqa: E402
from jbert.data.pair_batches import PairBatcher  # noqa: E402
from jbert.data.pair_rows import QUERY, TokenizedPairs, plan_pack_rows  # noqa: E402
from jbert.data.tokenizer import load_tokenizer  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.contrastive import (  # noqa: E402
    contrastive_head,
    contrastive_loss_fn,
    load_sources,
    pair_format,
)
from jbert.training.config import load_config  # noqa: E402
from jbert.training.optim import make_optimizer  # noqa: E402
from jbert.training.state import init_state, state_shardings  # noqa: E402
from jbert.training.trainer import jit_train_step  # noqa: E402


def batches(cfg, sources, tokenizer, n: int, pack_rows) -> tuple[list[dict], list[dict]]:
    """(token batches, the raw pair batches they came from)."""
    name, pairs = next(iter(sources.items()))
    raw = [next(b) for b in [PairBatcher(pairs, cfg.data.batch_size, source=name,
                                         seed=cfg.data.seed)] for _ in range(n)]
    tokenized = TokenizedPairs(iter(raw), tokenizer, pair_format(cfg.contrastive),
                               pack_rows=pack_rows)
    return [next(tokenized) for _ in range(n)], raw


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/contrastive_small.py")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--padding-batches", type=int, default=100,
                   help="batches of the padding-only pass (no steps)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, contrastive=dataclasses.replace(
        cfg.contrastive, hard_negatives=0, chunk_size=0))
    c = cfg.contrastive
    root = Path(cfg.data.dir)
    tokenizer = load_tokenizer(root / "tokenizer")
    sources = load_sources(cfg, root)
    pack_rows = plan_pack_rows(sources, tokenizer, pair_format(c), cfg.data.batch_size, 1,
                               seed=cfg.data.seed)
    data, raw = {}, None
    for name, rows in (("padded", None), ("packed", pack_rows)):
        data[name], raw = batches(cfg, sources, tokenizer, args.batches, rows)
    pairs = {k: [int((b["query_mask"].sum(1) > 0).sum()) if k == "padded"
                 else int((b["text_role"] == QUERY).sum()) for b in v] for k, v in data.items()}
    tokens = {k: [int(sum(a.sum() for n, a in b.items() if n.endswith("_mask"))) for b in v]
              for k, v in data.items()}
    positions = {k: sum(a.size for b in v for n, a in b.items() if n.endswith("_mask"))
                 for k, v in data.items()}
    padding = {k: 1 - sum(tokens[k]) / positions[k] for k in data}
    # The timed batches start with an empty waiting line; padding over a longer stream:
    steady = batches(cfg, sources, tokenizer, args.padding_batches, pack_rows)[0]
    padding["packed, steady"] = 1 - sum(int(b["text_mask"].sum()) for b in steady) / sum(
        b["text_mask"].size for b in steady)
    # The loss check: the first packed batch against the same pairs padded.
    first = {key: raw[0][key][:pairs["packed"][0]] for key in ("query", "positive")}
    check = {"padded": next(TokenizedPairs(iter([first]), tokenizer, pair_format(c))),
             "packed": data["packed"][0]}

    mesh = make_mesh(data=1, devices=jax.devices()[:1])
    tx = make_optimizer(cfg.optim, cfg.steps)
    head = contrastive_head(cfg.contrastive)
    _, state_sh = state_shardings(mesh, cfg.model, head, tx)
    batch_sh = batch_sharding(mesh)
    loss_fn = contrastive_loss_fn(cfg.model, c, mesh)
    params = functional.init_params(cfg.model, jax.random.key(0), head)
    losses = {k: float(jax.jit(loss_fn)(params, b, None)[0]) / pairs["packed"][0]
              for k, b in check.items()}

    print("command: .venv/bin/python bench/contrastive_packed.py " + " ".join(sys.argv[1:]))
    print(f"machine: {cpu_name()}, jax {jax.__version__} ({jax.default_backend()}); "
          f"{args.config}: {cfg.model.num_hidden_layers} layers x {cfg.model.hidden_size}, "
          f"{cfg.data.batch_size} pairs of <= {c.max_query_length} + <= {c.max_doc_length} "
          f"tokens; {pack_rows} packed rows of {max(c.max_query_length, c.max_doc_length)} "
          "tokens (queries and code together)")
    print(f"pairs per step: padded {pairs['padded']}, packed {pairs['packed']} (the rest "
          "waits for the next batch)")
    print(f"loss of packed batch 1 and of its pairs padded (same weights, dropout off): "
          f"packed {losses['packed']:.6f}, padded {losses['padded']:.6f}")
    steps = {}
    for name, batch_list in data.items():
        step = jit_train_step(loss_fn, tx, state_sh, batch_sh)
        holder = {"state": init_state(mesh, cfg.model, head, tx, seed=0)}
        on_device = [jax.device_put(b, batch_sh) for b in batch_list]

        def run(i, step=step, holder=holder, on_device=on_device):
            holder["state"], metrics = step(holder["state"], on_device[i])
            return float(jax.block_until_ready(metrics)["loss_sum"])

        seconds, _ = timed(lambda run=run: run(0))
        print(f"  warm-up {name}: {seconds:.1f} s (compile included)", flush=True)
        steps[name] = run
    times = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(args.rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            for i in range(args.batches):
                times[name].append(timed(lambda name=name, i=i: steps[name](i))[0])
    rows = {}
    for name in names:
        total_s = sum(times[name])
        rows[name] = {"steps": len(times[name]), "median_s": float(np.median(times[name])),
                      "tok_s": sum(tokens[name]) * args.rounds / total_s,
                      "padding": padding[name]}
    ratio = rows["packed"]["tok_s"] / rows["padded"]["tok_s"]
    print("\n| batches | steps | s/step median | real tok/s | padding |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['steps']} | {r['median_s']:.2f} | {r['tok_s']:.0f} | "
              f"{r['padding']:.1%} |")
    print(f"\npacked / padded real tokens/s: {ratio:.2f}x; packed padding over "
          f"{args.padding_batches} batches: {padding['packed, steady']:.1%}")
    result = {"args": vars(args), "pack_rows": pack_rows, "rows": rows, "times": times,
              "padding": padding,
              "loss_first_batch": losses, "packed_over_padded": ratio}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
