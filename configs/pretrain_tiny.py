"""MLM pretraining, CPU-sized twin of pretrain_base_code.py.

Run:   python -m train.pretrain --config configs/pretrain_tiny.py
Where: any CPU (measured on 2 cores); builds its data from the running Python's own sources
       into artifacts/data-tiny on first use (stdlib and site-packages up to 160 MiB: the
       whole of the project venv's base install; an 8,192-token tokenizer that cuts
       identifiers into words, as the research recipe's, and folds case, so a docstring's
       `Thread` and the code's `thread` are one token; sizes and build time in docs/data.md),
       then trains.
Time:  200 steps of 32 x 128 tokens; the measured time is in docs/pretraining.md.
Reach: held-out MLM loss below the unigram loss (the loss of predicting every masked token by
       its corpus frequency, printed at the end as data.unigram_loss); the measured figures
       are in docs/pretraining.md. At this size the MLM start does not help the contrastive
       stage (docs/results.md), so configs/contrastive_tiny.py starts from scratch.
Arg:   `configs/pretrain_tiny.py:smoke` runs 20 steps (tests).
"""

from typing import Literal

from jbert.model.config import preset
from jbert.training.config import CheckpointConfig, DataConfig, TrainConfig, replace_paths
from jbert.training.optim import OptimConfig


def get_config(variant: Literal["smoke"] | None = None) -> TrainConfig:
    vocab = 8192
    config = TrainConfig(
        model=preset("tiny-code", vocab_size=vocab, hidden_size=128, num_attention_heads=4,
                     intermediate_size=256, num_hidden_layers=2, hidden_dropout_prob=0.0),
        optim=OptimConfig(learning_rate=4e-3, warmup_steps=30, decay="linear",
                          weight_decay=0.01, clip_norm=1.0),
        data=DataConfig(dir="artifacts/data-tiny", prepare_if_missing=True,
                        prepare_max_bytes=160 << 20, prepare_vocab_size=vocab,
                        prepare_split_identifiers=True, prepare_lowercase=True, seq_len=128,
                        batch_size=32, docs_per_chunk=64, mask_rate=0.3, whole_word=True,
                        max_predictions=64),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        workdir="runs/pretrain-tiny",
        steps=200, log_every=10, eval_every=100, eval_batches=4,
    )
    variants = {"smoke": {"steps": 20, "eval_every": 10, "log_every": 5}}
    return replace_paths(config, variants[variant]) if variant else config
