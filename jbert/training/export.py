"""A training run's checkpoint -> a Hugging Face / sentence-transformers directory, with the
run's prompts, Matryoshka sizes and model card (the run is read by `jbert.training.run_dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.training.run_card import run_card
from jbert.training.run_dir import load_run_params, run_config


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               tokenizer: Any = None, head: str | None = None, overwrite: bool = False,
               self_contained: bool = False) -> Path:
    """Writes the run's weights in the released layout; the tokenizer defaults to the one in
    the run's data directory. `head="base"` exports only the encoder (an embedding model);
    `self_contained` ships jbert's own modeling code with it (see `save_pretrained`). The run's
    `contrastive.query_prompt` / `doc_prompt` become the export's "query" / "document" prompts
    and its `contrastive.matryoshka_dims` are recorded beside them; the model card tells the
    run's recipe, data, hardware, time and evaluation (`run_card`).

    In a multi-process run every process calls it (orbax reads a checkpoint collectively:
    process 0 alone would wait for the others forever) and process 0 writes."""
    config, params, trained_head, step = load_run_params(run_dir, step)
    if jax.process_index() != 0:
        return Path(out)
    cfg = run_config(run_dir)
    if tokenizer is None:
        candidate = Path(cfg.data.dir) / "tokenizer"
        tokenizer = candidate if candidate.is_dir() else None
    if head == "base":  # an MLM head has no pooler: a fresh one, as HF's AutoModel would
        params = functional.transplant_encoder(params, config, "base")
    return save_pretrained(out, config, params, tokenizer=tokenizer,
                           head=head or trained_head, overwrite=overwrite,
                           self_contained=self_contained,
                           prompts=cfg.contrastive.prompts,
                           matryoshka_dims=cfg.contrastive.matryoshka_dims,
                           card=run_card(run_dir, cfg, trained_head, step))
