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
       sizes and packed batches"); `:smoke` 10 steps (tests). `data=DIR` (e.g. `:hardneg,data=DIR`)
       reads the build in DIR instead of artifacts/data, and `:hardneg` its DIR/pairs-mined.
       `:sparse` is `:single-size` with the sparse head beside the dense embedding
       (`contrastive.sparse_weight=1`): held-out macro nDCG@10 0.605 (dense + sparse, one
       seed), above all-MiniLM-L6-v2 and above BM25 on every language, in about 56 min
       (scripts/recipe_small_sparse.sh; docs/results.md, the top section).
       `:distill` is the first stage with a teacher's in-batch scores distilled into it
       (InfoNCE + KL to the teacher, weight 1, teacher temperature 0.05), read from
       `teacher=DIR` (default DATA/teacher), which this writes (the baselines extra; not yet
       measured here):
       python -m train.teacher_embeddings --teacher artifacts/baselines/all-mpnet-base-v2 \
           --pairs artifacts/data/pairs --out artifacts/data/teacher
       python -m train.contrastive --config configs/contrastive_small.py:distill
"""

from typing import Literal

from configs import pretrain_small
from configs._contrastive import contrastive_stage
from jbert.training.config import TrainConfig, replace_paths


def get_config(variant: Literal["hardneg", "matryoshka", "single-size", "sparse", "smoke",
                                 "distill"] | None = None,
               *, data: str = "artifacts/data", teacher: str = "") -> TrainConfig:
    config = contrastive_stage(pretrain_small.get_config(data=data), {
        "workdir": "runs/contrastive-small", "steps": 1800, "log_every": 20, "eval_every": 300,
        "optim.learning_rate": 1e-3, "optim.warmup_steps": 100,
        "data.batch_size": 128,
        "contrastive.max_query_length": 32, "contrastive.max_doc_length": 128,
        "contrastive.eval_max_pairs": 500,
        "checkpoint.every_steps": 200, "checkpoint.keep": 2,
    })
    # Issue 17's measurement (matryoshka, single-size): contrastive only (the short MLM stage
    # did not help, docs/results.md), packed batches, the loss over four nested sizes or the
    # full one.
    measurement = {"init_from": None, "steps": 900, "contrastive.pack": True}
    variants = {
        "hardneg": {
            "init_from": config.workdir, "workdir": "runs/contrastive-small-hardneg",
            "steps": 150, "eval_every": 75,
            "data.batch_size": 64,
            "optim.learning_rate": 2e-4, "optim.warmup_steps": 30,
            "contrastive.hard_negatives": 3, "contrastive.sources": f"{data}/pairs-mined",
        },
        "matryoshka": {**measurement, "workdir": "runs/contrastive-small-matryoshka",
                       "contrastive.matryoshka_dims": (256, 128, 64, 32)},
        "single-size": {**measurement, "workdir": "runs/contrastive-small-single-size"},
        "sparse": {**measurement, "workdir": "runs/contrastive-small-sparse",
                   "contrastive.sparse_weight": 1.0},
        "smoke": {"steps": 10, "log_every": 5, "eval_every": 5},
        "distill": {"workdir": "runs/contrastive-small-distill",
                    "contrastive.teacher": teacher or f"{data}/teacher"},
    }
    return replace_paths(config, variants[variant]) if variant else config
