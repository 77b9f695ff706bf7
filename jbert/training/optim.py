"""AdamW with warmup and decay, gradient clipping, and weight decay kept off biases and norms."""

from __future__ import annotations

import dataclasses

import jax
import optax

from jbert.errors import check_ranges


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 1000
    decay: str = "linear"  # linear | cosine | constant (after warmup)
    end_learning_rate_fraction: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    clip_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.decay not in ("linear", "cosine", "constant"):
            raise ValueError(f"optim.decay={self.decay!r}: must be linear, cosine or constant")
        check_ranges("optim", self, {
            "learning_rate": "> 0", "warmup_steps": ">= 0", "end_learning_rate_fraction": "[0, 1]",
            "weight_decay": ">= 0", "b1": "[0, 1)", "b2": "[0, 1)", "eps": ">= 0",
            "clip_norm": "> 0"})


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then the chosen decay until `total_steps`."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_learning_rate_fraction
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    if cfg.decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_learning_rate_fraction)
    else:
        after = optax.constant_schedule(peak)
    warmup = optax.linear_schedule(0.0, peak, max(cfg.warmup_steps, 1))
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(params):
    """True where weight decay applies: matrices and embeddings, not biases or norm scales."""
    def decays(path, _):
        leaf = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
        return leaf in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    chain = [] if cfg.clip_norm is None else [optax.clip_by_global_norm(cfg.clip_norm)]
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*chain)
