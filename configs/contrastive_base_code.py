"""Contrastive tuning of the base-code backbone into a code search model (paper recipe).

Run:   python -m train.contrastive --config configs/contrastive_base_code.py \\
           [--coordinator HOST:PORT --num-processes N --process-id I]
       then the hard-negative stage from that run:
       python -m train.contrastive --config configs/contrastive_base_code.py:hardneg
Where: GPUs or TPUs: 8 x H100 (mesh data=8) or a TPU v4-32 (16 devices). A CPU cannot run it.
       Compiled (`python -m train.compile --config configs/contrastive_base_code.py --target
       h100x8`, docs/scaling.md): peak 21.2 GiB per H100 of 80, 14.6 GiB per v4 chip of 32;
       `:hardneg` 37.4 / 24.1 GiB; `:8k` 39.5 GiB per H100, 24.9 GiB per v5p-32 chip of 95.
What:  InfoNCE with mean pooling over global batches of 4096 docstring/code (query/code) pairs,
       each batch from one pair source, every query against all 4096 positives (gathered over
       devices), symmetric term, temperature 0.05 learned; GradCache in chunks of 256 rows keeps
       activations to one chunk. Stage 2 (`:hardneg`): 15 hard negatives per pair (the pairs'
       own or BM25-mined), batch 256, from the stage-1 export.
Time:  4096 x (64 + 512) tokens x 0.95 GFLOP/token (GradCache's second forward included) =
       2.2e15 FLOP a step: an estimated 0.71 s on 8 x H100 at 40% MFU (1.27 s on v4-32), so 10k
       steps in about 2 hours; `:hardneg` 0.65 s a step, 2000 steps in 22 minutes.
Arg:   `:8k` tunes the stage-1 export on code files of up to 8192 tokens: 1024 pairs a step,
       GradCache chunks of 32 rows, 2000 steps; an estimated 4.1 s a step on 8 x H100, 2.3 hours.
Reach: the published jina-embeddings-v2-base-code reaches CodeSearchNet MRR 67.2 with the
       paper's data (far more pairs than this repository's offline corpus).
"""

import dataclasses

from jbert.model.config import preset
from jbert.training.config import (
    CheckpointConfig,
    ContrastiveConfig,
    DataConfig,
    MeshConfig,
    TrainConfig,
)
from jbert.training.optim import OptimConfig


def get_config(arg: str | None = None) -> TrainConfig:
    config = TrainConfig(
        model=preset("base-code", dtype="bfloat16", hidden_dropout_prob=0.1),
        optim=OptimConfig(learning_rate=1e-4, warmup_steps=500, decay="linear",
                          weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-6, clip_norm=1.0),
        data=DataConfig(dir="artifacts/data", batch_size=4096),
        contrastive=ContrastiveConfig(temperature=0.05, learn_temperature=True, symmetric=True,
                                      chunk_size=256, max_query_length=64, max_doc_length=512,
                                      eval_max_pairs=10_000),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every_steps=1000, keep=3),
        init_from="runs/pretrain-base-code",
        workdir="runs/contrastive-base-code",
        steps=10_000, log_every=50, eval_every=1000,
    )
    if arg == "hardneg":
        config = dataclasses.replace(
            config, init_from="runs/contrastive-base-code/export",
            workdir="runs/contrastive-base-code-hardneg", steps=2000,
            data=dataclasses.replace(config.data, batch_size=256),
            optim=dataclasses.replace(config.optim, learning_rate=2e-5, warmup_steps=100),
            contrastive=dataclasses.replace(config.contrastive, hard_negatives=15,
                                            chunk_size=32))
    elif arg == "8k":  # long documents: code files up to 8192 tokens, from the stage-1 export
        config = dataclasses.replace(
            config, init_from="runs/contrastive-base-code/export",
            workdir="runs/contrastive-base-code-8k", steps=2000,
            data=dataclasses.replace(config.data, batch_size=1024),
            optim=dataclasses.replace(config.optim, learning_rate=2e-5, warmup_steps=100),
            contrastive=dataclasses.replace(config.contrastive, max_doc_length=8192,
                                            chunk_size=32))
    elif arg:
        raise ValueError(f"unknown argument {arg!r} (known: hardneg, 8k)")
    return config
