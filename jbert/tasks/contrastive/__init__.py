"""Contrastive tuning, along tevatron's split: `loss` (InfoNCE over the global batch, Matryoshka
sizes, the temperature), `gradcache` (the GradCache gradient), `task` (sources, mining, the
step, evaluation). The token rows are the data layer's (`jbert.data.pair_rows`).

Callers import from here; the modules import each other directly.
"""

from jbert.tasks.contrastive.gradcache import cached_grad_fn
from jbert.tasks.contrastive.loss import (
    GROUPS,
    contrastive_loss_fn,
    info_nce,
    loss_sizes,
    paired_slots,
    sparse_slot_bound,
    summarize,
    temperature,
)
from jbert.tasks.contrastive.task import (
    contrastive_head,
    contrastive_step_fns,
    contrastive_task,
    gradcache_chunks,
    load_sources,
    pair_format,
)

__all__ = [
    "GROUPS",
    "cached_grad_fn",
    "contrastive_head",
    "contrastive_loss_fn",
    "contrastive_step_fns",
    "contrastive_task",
    "gradcache_chunks",
    "info_nce",
    "load_sources",
    "loss_sizes",
    "pair_format",
    "paired_slots",
    "sparse_slot_bound",
    "summarize",
    "temperature",
]
