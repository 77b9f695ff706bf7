"""A training run's checkpoint -> a Hugging Face / sentence-transformers directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.training.checkpoint import restore_weights
from jbert.training.config import TrainConfig, from_dict
from jbert.training.run_card import run_card


def is_hf_export(path: Path) -> bool:
    """An HF export (config.json, safetensors) rather than a jbert run directory, which has a
    config.json too (its TrainConfig) next to its checkpoints/."""
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


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
    `self_contained` ships jbert's own modeling code with it (see `save_pretrained`). The run's
    `contrastive.query_prompt` / `doc_prompt` become the export's "query" / "document" prompts
    and its `contrastive.matryoshka_dims` are recorded beside them; the model card tells the
    run's recipe, data, hardware, time and evaluation (`run_card`)."""
    config, params, trained_head, step = load_run_params(run_dir, step)
    contrastive = run_config(run_dir).contrastive
    if tokenizer is None:
        candidate = Path(run_config(run_dir).data.dir) / "tokenizer"
        tokenizer = candidate if candidate.is_dir() else None
    if head == "base":  # an MLM head has no pooler: a fresh one, as HF's AutoModel would
        params = functional.transplant_encoder(params, config, "base")
    return save_pretrained(out, config, params, tokenizer=tokenizer,
                           head=head or trained_head, overwrite=overwrite,
                           self_contained=self_contained,
                           prompts={"query": contrastive.query_prompt,
                                    "document": contrastive.doc_prompt},
                           matryoshka_dims=contrastive.matryoshka_dims,
                           card=run_card(run_dir, run_config(run_dir), trained_head, step))
