"""MLM pretraining of the small code model on the full multi-language build (CPU recipe).

Run:   bash scripts/build_data.sh        # artifacts/data: 26 languages, tokenizer, pairs
       python -m train.pretrain --config configs/pretrain_small.py
Where: any CPU; measured on 2 shared cores.
What:  the code layout (QK-norm, GLU) at 2 layers x 256 wide, 61,056-token BPE vocabulary,
       whole-word masking at 30% over packed 128-token rows of the train split (the held-out
       pairs' repos are left out, `jbert.data.split`).
Time:  300 steps of 64 x 128 tokens; the measured time is in docs/results.md ("Code search on
       the stratified held-out split", its stage table).
Reach: a held-out MLM loss still above the unigram loss at step 300: too short to help the
       contrastive stage (a short contrastive run from it does worse than one from random
       weights: the ablation in docs/results.md, with the figures); the chain keeps it as the
       recipe's first stage, and a longer MLM run is the open question there.
Args:  `configs/pretrain_small.py:smoke` runs 20 steps (tests); `data=DIR` (e.g.
       `:smoke,data=DIR`) reads the build in DIR instead of artifacts/data.
"""

from typing import Literal

from jbert.model.config import preset
from jbert.training.config import CheckpointConfig, DataConfig, TrainConfig, replace_paths
from jbert.training.optim import OptimConfig

VOCAB = 61056  # what scripts/build_data.sh trains


def small_model():
    """The small code model both stages share."""
    return preset("tiny-code", vocab_size=VOCAB, hidden_size=256, num_attention_heads=4,
                  intermediate_size=512, num_hidden_layers=2, hidden_dropout_prob=0.0)


def get_config(variant: Literal["smoke"] | None = None, *,
               data: str = "artifacts/data") -> TrainConfig:
    config = TrainConfig(
        model=small_model(),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=30, decay="linear",
                          weight_decay=0.01, clip_norm=1.0),
        data=DataConfig(dir=data, seq_len=128, batch_size=64, docs_per_chunk=256,
                        mask_rate=0.3, whole_word=True, max_predictions=20),
        checkpoint=CheckpointConfig(every_steps=200, keep=2),
        workdir="runs/pretrain-small",
        steps=300, log_every=20, eval_every=100, eval_batches=8,
    )
    variants = {"smoke": {"steps": 20, "log_every": 5, "eval_every": 10}}
    return replace_paths(config, variants[variant]) if variant else config
