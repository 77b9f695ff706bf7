"""Contrastive tuning, CPU-sized twin of contrastive_base_code.py.

Run:   python -m train.pretrain --config configs/pretrain_tiny.py          # the MLM backbone
       python -m train.contrastive --config configs/contrastive_tiny.py
Where: any CPU (measured on 2 shared cores); starts from the MLM checkpoint in
       runs/pretrain-tiny and tunes on the docstring/code pairs of artifacts/data-tiny, held
       out by repository (their counts: docs/data.md, "The demo's data").
What:  InfoNCE over batches of 64 pairs (every query against every positive), symmetric
       code -> query term, learned temperature from 0.05, GradCache in chunks of 32 rows.
Time:  300 steps of 64 pairs (32 + 128 tokens), 3 evals and the export; measured times in
       docs/results.md ("The README demo").
Reach: held-out retrieval (nDCG@10, MRR@10) far above the untuned backbone's, logged beside
       BM25's on the same sets, and below BM25's (the figures: docs/results.md).
Args:  `:smoke` runs 10 steps. `:features` tunes the same backbone with what issue 17 added,
       all at once: prompts ("query: " / "code: "), Matryoshka sizes 128/64/32, packed batches
       and LoRA adapters of rank 8 on the frozen MLM backbone (workdir
       runs/contrastive-tiny-features; the export is the merged model, its card and
       config_sentence_transformers.json carry the prompts and sizes).
"""

from typing import Literal

from configs import pretrain_tiny
from configs._contrastive import contrastive_stage
from jbert.training.config import TrainConfig, replace_paths


def get_config(variant: Literal["smoke", "features"] | None = None) -> TrainConfig:
    config = contrastive_stage(pretrain_tiny.get_config(), {
        "workdir": "runs/contrastive-tiny", "steps": 300, "log_every": 10, "eval_every": 100,
        "optim.learning_rate": 1e-3, "optim.warmup_steps": 30,
        "data.batch_size": 64,
        "contrastive.chunk_size": 32, "contrastive.max_query_length": 32,
        "contrastive.max_doc_length": 128, "contrastive.eval_max_pairs": 2000,
        "checkpoint.every_steps": 100, "checkpoint.keep": 2,
    })
    variants = {
        "smoke": {"steps": 10, "log_every": 5, "eval_every": 5},
        "features": {
            "workdir": "runs/contrastive-tiny-features", "lora.rank": 8,
            "optim.learning_rate": 3e-3,
            "contrastive.query_prompt": "query: ", "contrastive.doc_prompt": "code: ",
            "contrastive.matryoshka_dims": (128, 64, 32), "contrastive.pack": True,
        },
    }
    return replace_paths(config, variants[variant]) if variant else config
