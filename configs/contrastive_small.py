"""Contrastive tuning of the small code model (CPU recipe): the second stage after
`pretrain_small.py`, on the docstring/code pairs of the full multi-language build.

Run:   python -m train.pretrain --config configs/pretrain_small.py
       python -m train.contrastive --config configs/contrastive_small.py
       then, hard negatives mined with that model and a short second pass from it:
       python -m train.mine_negatives --model runs/contrastive-small/export \\
           --pairs artifacts/data/pairs --out artifacts/data/pairs-mined \\
           --max-pairs 15000 --negatives 3
       python -m train.contrastive --config configs/contrastive_small.py:hardneg
Where: any CPU; measured on 2 shared cores.
What:  InfoNCE over batches of 128 pairs (every query against every positive of the batch),
       symmetric code -> query term, temperature learned from 0.05; 32-token queries,
       128-token code. `:hardneg` continues from it at batch 64 with 3 dense-mined negatives
       per pair (15,000 pairs mined).
Time:  1800 steps, then `:hardneg` 150 steps; each stage's measured time and the whole chain's
       (scripts/recipe_small.sh, MLM to evaluation) are in docs/results.md ("Code search on
       the stratified held-out split").
Reach: held-out macro nDCG@10 over six languages above BM25's (above on Java, JavaScript, Rust
       and TypeScript, below on Go and Python), and fused with BM25 above both; the curve
       crosses BM25 between steps 900 and 1200, and `:hardneg` leaves the figure where it was.
       The figures: docs/results.md, same section.
Args:  `:hardneg` the hard-negative pass; `:matryoshka` / `:single-size` contrastive only, packed
       batches, 900 steps, the loss over sizes 256/128/64/32 or the full size alone (what the
       smaller sizes keep of the full size's nDCG@10, and the times: docs/results.md, "Matryoshka
       sizes and packed batches"); `:smoke` 10 steps (tests).
"""

import dataclasses

from configs import pretrain_small
from jbert.training.config import CheckpointConfig, ContrastiveConfig, DataConfig, TrainConfig
from jbert.training.optim import OptimConfig


def get_config(arg: str | None = None) -> TrainConfig:
    backbone = pretrain_small.get_config()
    config = TrainConfig(
        model=backbone.model,  # must match the checkpoint it starts from
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=100, decay="linear",
                          weight_decay=0.01, clip_norm=1.0),
        data=DataConfig(dir=backbone.data.dir, batch_size=128, seed=0),
        contrastive=ContrastiveConfig(temperature=0.05, learn_temperature=True, symmetric=True,
                                      max_query_length=32, max_doc_length=128,
                                      eval_max_pairs=500),
        checkpoint=CheckpointConfig(every_steps=200, keep=2),
        init_from=backbone.workdir,
        workdir="runs/contrastive-small",
        steps=1800, log_every=20, eval_every=300,
    )
    if arg == "hardneg":
        config = dataclasses.replace(
            config, init_from=config.workdir, workdir="runs/contrastive-small-hardneg",
            steps=150, eval_every=75,
            data=dataclasses.replace(config.data, batch_size=64),
            optim=dataclasses.replace(config.optim, learning_rate=2e-4, warmup_steps=30),
            contrastive=dataclasses.replace(
                config.contrastive, hard_negatives=3, sources=backbone.data.dir + "/pairs-mined"))
    elif arg in ("matryoshka", "single-size"):
        # Issue 17's measurement: contrastive only (the short MLM stage did not help,
        # docs/results.md), packed batches, the loss over four nested sizes or the full one.
        dims = (256, 128, 64, 32) if arg == "matryoshka" else ()
        config = dataclasses.replace(
            config, init_from=None, workdir=f"runs/contrastive-small-{arg}", steps=900,
            contrastive=dataclasses.replace(config.contrastive, pack=True,
                                            matryoshka_dims=dims))
    elif arg == "smoke":
        config = dataclasses.replace(config, steps=10, log_every=5, eval_every=5)
    elif arg:
        raise ValueError(f"unknown argument {arg!r} (known: hardneg, matryoshka, single-size, "
                         "smoke)")
    return config
