"""MLM pretraining of the jina-embeddings-v2-base-code backbone (paper recipe).

Run:   python -m train.prepare_corpus --out artifacts/data --fetched data/sources
       python -m train.pretrain --config configs/pretrain_base_code.py \\
           [--coordinator HOST:PORT --num-processes N --process-id I]
Where: GPUs or TPUs: 8 x H100 (mesh data=8) or a TPU v5p-32 / v4-32 (16 devices); a CPU cannot
       run it (one step of 8 x 512 tokens takes ~30 s on 2 cores, see docs/benchmarks.md).
       Compiled (`python -m train.compile --config configs/pretrain_base_code.py --target
       h100x8`, docs/scaling.md): peak 28.0 GiB per H100 of 80, 23.8 GiB per v5p chip of 95,
       23.6 GiB per v4 chip of 32, with the layers keeping only their matmul outputs for the
       backward pass (110 GiB per H100 as first written).
What:  161 M parameters (qk-norm layout, GEGLU, vocab 61056), 30% whole-word masking, 80/10/10,
       512-token packed rows, AdamW (b2 0.98, wd 0.01 off biases and norms), 10k warmup steps,
       linear decay, clipping at 1.0, bf16 compute with fp32 weights, Pallas flash attention.
Time:  1024 x 512 tokens per step x 0.86 GFLOP/token = 4.5e14 FLOP: an estimated 0.14 s a step
       on 8 x H100 at 40% MFU (0.15 s on v5p-32, 0.26 s on v4-32), so 100k steps (52 B tokens)
       in about 4 hours on 8 x H100.
Arg:   `:8k` the long-context stage from this run: 128 rows of 8192 tokens (1M tokens a step),
       10k steps; compiled 50.0 GiB per H100 (40.6 GiB per v5p-32 chip), an estimated 0.56 s
       a step on 8 x H100 at 40% MFU (0.60 s on v5p-32), 1.6 hours.
Reach: MLM loss near 1.0 (accuracy ~75%) on held-out code, the range BERT-style code models
       report; the CPU twin is configs/pretrain_tiny.py.
"""

from typing import Literal

from jbert.model.config import preset
from jbert.training.config import (
    CheckpointConfig,
    DataConfig,
    MeshConfig,
    TrainConfig,
    replace_paths,
)
from jbert.training.optim import OptimConfig


def get_config(variant: Literal["8k"] | None = None) -> TrainConfig:
    # The scanned layers keep only the weight matmuls' outputs for the backward pass and
    # recompute the rest: without it the scan stores every LayerNorm's fp32 intermediates per
    # layer, 82 GiB per H100 instead of 28 (docs/scaling.md).
    model = preset("base-code", dtype="bfloat16", hidden_dropout_prob=0.1,
                   remat="dots_with_no_batch_dims_saveable")
    config = TrainConfig(
        model=model,
        optim=OptimConfig(learning_rate=5e-4, warmup_steps=10_000, decay="linear",
                          weight_decay=0.01, b1=0.9, b2=0.98, eps=1e-6, clip_norm=1.0),
        data=DataConfig(dir="artifacts/data", seq_len=512, batch_size=1024,
                        docs_per_chunk=256, mask_rate=0.3, whole_word=True,
                        max_predictions=224),
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        checkpoint=CheckpointConfig(every_steps=2000, keep=3),
        workdir="runs/pretrain-base-code",
        steps=100_000, log_every=50, eval_every=2000, eval_batches=16,
    )
    variants = {
        "8k": {  # the long-context stage: 128 rows of 8192 tokens (1M tokens a step)
            "workdir": "runs/pretrain-base-code-8k", "steps": 10_000,
            "init_from": "runs/pretrain-base-code",
            "optim.learning_rate": 1e-4, "optim.warmup_steps": 500,
            "data.seq_len": 8192, "data.batch_size": 128, "data.docs_per_chunk": 64,
            "data.max_predictions": 2816,
        },
    }
    return replace_paths(config, variants[variant]) if variant else config
