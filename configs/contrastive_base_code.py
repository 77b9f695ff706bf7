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

from typing import Literal

from configs import pretrain_base_code
from configs._contrastive import contrastive_stage
from jbert.training.config import TrainConfig, replace_paths


def get_config(variant: Literal["hardneg", "8k"] | None = None) -> TrainConfig:
    config = contrastive_stage(pretrain_base_code.get_config(), {
        "workdir": "runs/contrastive-base-code", "steps": 10_000, "log_every": 50,
        "eval_every": 1000,
        "model.remat": "none",  # the compiled peaks above keep every activation of a chunk
        "optim.learning_rate": 1e-4, "optim.warmup_steps": 500,
        "data.batch_size": 4096,
        "contrastive.chunk_size": 256, "contrastive.max_query_length": 64,
        "contrastive.max_doc_length": 512, "contrastive.eval_max_pairs": 10_000,
        "checkpoint.every_steps": 1000, "checkpoint.keep": 3,
    })
    # Both later stages tune the stage-1 export for 2000 steps, in GradCache chunks of 32 rows.
    later = {"init_from": f"{config.workdir}/export", "steps": 2000,
             "optim.learning_rate": 2e-5, "optim.warmup_steps": 100,
             "contrastive.chunk_size": 32}
    variants = {
        "hardneg": {**later, "workdir": "runs/contrastive-base-code-hardneg",
                    "data.batch_size": 256, "contrastive.hard_negatives": 15},
        # long documents: code files up to 8192 tokens
        "8k": {**later, "workdir": "runs/contrastive-base-code-8k",
               "data.batch_size": 1024, "contrastive.max_doc_length": 8192},
    }
    return replace_paths(config, variants[variant]) if variant else config
