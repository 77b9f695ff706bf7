"""Contrastive tuning, CPU-sized twin of contrastive_base_code.py: the demo's tuned model.

Run:   python -m train.pretrain --config configs/pretrain_tiny.py    # builds the data first
       python -m train.contrastive --config configs/contrastive_tiny.py
Where: any CPU (measured on 2 cores); tunes the tiny model from scratch on the docstring/code
       pairs of artifacts/data-tiny (which configs/pretrain_tiny.py builds on first use),
       held out by repository (their counts: docs/data.md, "The demo's data"). It does not
       start from the MLM backbone: at this size that start was measured worse than none
       (docs/results.md, "The README demo").
What:  InfoNCE over batches of 64 pairs (every query against every positive), symmetric
       code -> query term, learned temperature from 0.05; queries up to 64 tokens, code up to
       256 (44% of the held-out Python functions pass 128), packed into shared rows (half the
       tokens of padded rows at these lengths; at this size no GradCache is needed). The
       sparse head (a weight per token, vocabulary vectors) trains beside the dense embedding
       with an InfoNCE term of its own at weight 1; the model's score is their sum.
Time:  600 steps of 64 pairs, 3 evals and the export; measured times in docs/results.md
       ("The README demo").
Reach: held-out nDCG@10 about 0.72-0.74 (dense + sparse; the dense embedding alone about
       0.5, the sparse head alone about 0.71), above BM25's 0.57 on the same queries (the demo
       prints the difference with its paired bootstrap interval; docs/results.md).
Args:  `:smoke` runs 10 steps. `:features` tunes the MLM backbone of
       configs/pretrain_tiny.py (runs/pretrain-tiny: run it first) with what issue 17 added,
       all at once: prompts ("query: " / "code: "), Matryoshka sizes 128/64/32, packed batches
       and LoRA adapters of rank 8 on the frozen backbone (workdir
       runs/contrastive-tiny-features; the export is the merged model, its card and
       config_sentence_transformers.json carry the prompts and sizes).
"""

from typing import Literal

from configs import pretrain_tiny
from configs._contrastive import contrastive_stage
from jbert.training.config import TrainConfig, replace_paths


def get_config(variant: Literal["smoke", "features"] | None = None) -> TrainConfig:
    config = contrastive_stage(pretrain_tiny.get_config(), {
        "workdir": "runs/contrastive-tiny", "init_from": None,
        "steps": 600, "log_every": 10, "eval_every": 200,
        "optim.learning_rate": 3e-3, "optim.warmup_steps": 30,
        "data.batch_size": 64, "contrastive.pack": True,
        "contrastive.max_query_length": 64, "contrastive.max_doc_length": 256,
        "contrastive.eval_max_pairs": 2000, "contrastive.sparse_weight": 1.0,
        "checkpoint.every_steps": 100, "checkpoint.keep": 2,
    })
    variants = {
        "smoke": {"steps": 10, "log_every": 5, "eval_every": 5},
        "features": {
            "workdir": "runs/contrastive-tiny-features", "lora.rank": 8,
            "init_from": pretrain_tiny.get_config().workdir,
            "optim.learning_rate": 3e-3,
            "contrastive.query_prompt": "query: ", "contrastive.doc_prompt": "code: ",
            "contrastive.matryoshka_dims": (128, 64, 32),
        },
    }
    return replace_paths(config, variants[variant]) if variant else config
