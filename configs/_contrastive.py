"""The contrastive stage the contrastive recipes share (not a recipe: no get_config)."""

from typing import Any

from jbert.training.config import ContrastiveConfig, DataConfig, TrainConfig, replace_paths


def contrastive_stage(backbone: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Contrastive tuning of the MLM run `backbone`: its model (which must match the checkpoint
    it starts from), data dir and workdir (`init_from`); InfoNCE with the symmetric code -> query
    term and the temperature learned from 0.05; the optimizer's defaults (AdamW, b2 0.98, weight
    decay 0.01, linear decay, clipping at 1.0). `values` sets the rest, as `replace_paths`."""
    config = TrainConfig(
        model=backbone.model,
        data=DataConfig(dir=backbone.data.dir),
        contrastive=ContrastiveConfig(temperature=0.05, learn_temperature=True, symmetric=True),
        init_from=backbone.workdir,
    )
    return replace_paths(config, values)
