"""A training run's checkpoint -> a Hugging Face / sentence-transformers directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax

from jbert import functional
from jbert.checkpoint import restore_weights
from jbert.hf_export import save_pretrained
from jbert.train_config import TrainConfig, from_dict


def run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json; is it a jbert run directory?")
    return from_dict(TrainConfig, json.loads(path.read_text()))


def load_run_params(run_dir: str | Path, step: int | None = None) -> tuple[Any, Any, str, int]:
    """(model config, params, head, step) of a run's checkpoint (the latest by default)."""
    config = run_config(run_dir).model
    params, head, step = restore_weights(Path(run_dir) / "checkpoints", config, step)
    return config, params, head, step


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               tokenizer: Any = None, head: str | None = None, overwrite: bool = False,
               self_contained: bool = False) -> Path:
    """Writes the run's weights in the released layout; the tokenizer defaults to the one in
    the run's data directory. `head="base"` exports only the encoder (an embedding model);
    `self_contained` ships jbert's own modeling code with it (see `save_pretrained`)."""
    config, params, trained_head, _ = load_run_params(run_dir, step)
    if tokenizer is None:
        candidate = Path(run_config(run_dir).data.dir) / "tokenizer"
        tokenizer = candidate if candidate.is_dir() else None
    if head == "base":
        params = functional.encoder_params(params)
        # The MLM head has no pooler; the export gets a fresh one, as HF's AutoModel would.
        if "pooler" not in params:
            fresh = functional.init_params(config, jax.random.key(0), "base")
            params = {**params, "pooler": fresh["pooler"]}
    return save_pretrained(out, config, params, tokenizer=tokenizer,
                           head=head or trained_head, overwrite=overwrite,
                           self_contained=self_contained)
