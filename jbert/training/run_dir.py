"""Reading a run directory: its config, its checkpoints' weights as plain params (a LoRA run's
adapters merged into its base), and the weights a run starts from (`init_from`: an HF export or
a run's checkpoint). Training, evaluation and export all read runs through these.

A LoRA run's checkpoints hold its adapters and a pointer to its base; everything here reads
them as the plain merged weights, so an export, an evaluation or an `init_from` of a LoRA run
sees the adapted model in the released layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jbert.errors import ConfigError, InputError
from jbert.hf.load import load_pretrained
from jbert.hf.sparse_head import load_sparse_head
from jbert.model import functional, lora
from jbert.model.heads import HEADS
from jbert.training.checkpoint import (
    SavedLoRA,
    check_lora_base,
    restore_meta,
    restore_weights,
    saved_lora,
)
from jbert.training.config import TrainConfig, from_dict


def is_hf_export(path: Path) -> bool:
    """An HF export (config.json, safetensors) rather than a jbert run directory, which has a
    config.json too (its TrainConfig) next to its checkpoints/."""
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json; is it a jbert run directory?")
    return from_dict(TrainConfig, json.loads(path.read_text()))


def init_params_from(source: str, config, head: str) -> Any:
    """Weights of an HF export (config.json + safetensors) or of an orbax checkpoint dir (a
    LoRA run's merged with its base) in a `head`'s tree; a source that cannot give them is a
    `ConfigError` naming `init_from`."""
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"init_from={source}: no such directory (give an HF export or a "
                          "jbert run directory)")
    try:
        if is_hf_export(path):
            # A training-only head (contrastive) starts from the export's encoder.
            hf_head = head if head in HEADS else "base"
            _, params = load_pretrained(path, head=hf_head)
            if hf_head == head:
                return params
            sparse = load_sparse_head(path, config.hidden_size)  # kept by a sparse head
            if sparse is not None:
                params = {"bert": params, "sparse": sparse[0]}
            return functional.transplant_encoder(params, config, head)
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        params, _, _ = checkpoint_params(ckpt_dir, config)
    except FileNotFoundError as e:
        raise ConfigError(f"init_from={source}: neither an HF export (config.json) nor "
                          f"a directory with orbax checkpoints ({e})") from None
    except InputError as e:  # a bad export, or weights of another model
        raise ConfigError(f"init_from={source}: {e}") from e
    return functional.transplant_encoder(params, config, head)


def lora_base(saved: SavedLoRA, config, head: str, adapters: str) -> Any:
    """The frozen base weights a LoRA run adapts (its `init_from`), checked against the
    fingerprint its checkpoint recorded; `adapters` (what refers to them) is named in the error
    when they are gone or changed."""
    try:
        base = init_params_from(saved.base, config, head)
    except ConfigError as e:
        raise ConfigError(f"{adapters} holds LoRA adapters of the base {saved.base}, which "
                          f"cannot be read ({e}); put the base back there") from None
    check_lora_base(functional.encoder_params(base), saved, adapters)
    return base


def checkpoint_params(directory: str | Path, config, step: int | None = None
                      ) -> tuple[Any, str, int]:
    """(params, head, step) of a checkpoint (the latest by default) as plain weights: a LoRA
    run's adapters are merged into its base."""
    params, head, step = restore_weights(directory, config, step)
    saved = saved_lora(restore_meta(directory, step)[0])
    if saved is not None:
        base = lora_base(saved, config, head, f"checkpoint {directory}/{step}")
        params = lora.merge(base, params, saved.cfg)
    return params, head, step


def load_run_params(run_dir: str | Path, step: int | None = None) -> tuple[Any, Any, str, int]:
    """(model config, params, head, step) of a run's checkpoint (the latest by default); a
    LoRA run's adapters merged into its base."""
    config = run_config(run_dir).model
    params, head, step = checkpoint_params(Path(run_dir) / "checkpoints", config, step)
    return config, params, head, step
