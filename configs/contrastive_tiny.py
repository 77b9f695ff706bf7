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

import dataclasses

from configs import pretrain_tiny
from jbert.model.lora import LoRAConfig
from jbert.training.config import CheckpointConfig, ContrastiveConfig, DataConfig, TrainConfig
from jbert.training.optim import OptimConfig


def get_config(arg: str | None = None) -> TrainConfig:
    backbone = pretrain_tiny.get_config()
    config = TrainConfig(
        model=backbone.model,  # must match the checkpoint it starts from
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=30, decay="linear",
                          weight_decay=0.01, clip_norm=1.0),
        data=DataConfig(dir=backbone.data.dir, batch_size=64, seed=0),
        contrastive=ContrastiveConfig(temperature=0.05, learn_temperature=True, symmetric=True,
                                      chunk_size=32, max_query_length=32, max_doc_length=128,
                                      eval_max_pairs=2000),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        init_from=backbone.workdir,
        workdir="runs/contrastive-tiny",
        steps=300, log_every=10, eval_every=100,
    )
    if arg == "smoke":
        config = dataclasses.replace(config, steps=10, log_every=5, eval_every=5)
    elif arg == "features":
        config = dataclasses.replace(
            config, workdir="runs/contrastive-tiny-features", lora=LoRAConfig(rank=8),
            optim=dataclasses.replace(config.optim, learning_rate=3e-3),
            contrastive=dataclasses.replace(
                config.contrastive, query_prompt="query: ", doc_prompt="code: ",
                matryoshka_dims=(128, 64, 32), pack=True))
    elif arg:
        raise ValueError(f"unknown argument {arg!r} (known: smoke, features)")
    return config
