"""A training run's checkpoint -> a Hugging Face / sentence-transformers directory, with the
run's prompts, Matryoshka sizes and model card (the run is read by `jbert.training.run_dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.model.heads import contrastive_temperature
from jbert.training.config import ContrastiveConfig
from jbert.training.run_card import run_card
from jbert.training.run_dir import load_run_params, run_config


def dense_scale(c: ContrastiveConfig, params: Any) -> float:
    """The dense cosine's weight in the model's own score beside its sparse head's: 1 / the
    temperature its InfoNCE was trained at (so the sum adds the two terms' logits)."""
    return 1.0 / float(contrastive_temperature(c.temperature,
                                               params if c.learn_temperature else None))


def export_run(run_dir: str | Path, out: str | Path, *, step: int | None = None,
               tokenizer: Any = None, head: str | None = None, overwrite: bool = False,
               self_contained: bool = False) -> Path:
    """Writes the run's weights in the released layout; the tokenizer defaults to the one in
    the run's data directory. `head="base"` exports only the encoder (an embedding model);
    `self_contained` ships jbert's own modeling code with it (see `save_pretrained`). The run's
    `contrastive.query_prompt` / `doc_prompt` become the export's "query" / "document" prompts
    and its `contrastive.matryoshka_dims` are recorded beside them; the model card tells the
    run's recipe, data, hardware, time and evaluation (`run_card`). A run with the sparse head
    (`contrastive.sparse_weight`) exported as `base` carries it in `sparse_head.safetensors`.

    In a multi-process run every process calls it (orbax reads a checkpoint collectively:
    process 0 alone would wait for the others forever) and process 0 writes."""
    config, params, trained_head, step = load_run_params(run_dir, step)
    if jax.process_index() != 0:
        return Path(out)
    cfg = run_config(run_dir)
    if tokenizer is None:
        candidate = Path(cfg.data.dir) / "tokenizer"
        tokenizer = candidate if candidate.is_dir() else None
    sparse = functional.sparse_head(params)
    if sparse is not None and head == "base":  # the head goes beside the encoder
        sparse = (sparse, dense_scale(cfg.contrastive, params))
    else:
        sparse = None
    if head == "base":  # an MLM head has no pooler: a fresh one, as HF's AutoModel would
        params = functional.transplant_encoder(params, config, "base")
    return save_pretrained(out, config, params, tokenizer=tokenizer,
                           head=head or trained_head, overwrite=overwrite,
                           self_contained=self_contained,
                           prompts=cfg.contrastive.prompts,
                           matryoshka_dims=cfg.contrastive.matryoshka_dims,
                           card=run_card(run_dir, cfg, trained_head, step),
                           sparse_head=sparse)
