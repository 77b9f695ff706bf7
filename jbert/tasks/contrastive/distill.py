"""Distillation from a teacher's embeddings: the student's in-batch scores matched to the teacher's.

With `contrastive.teacher` (a directory of `python -m train.teacher_embeddings`), every batch
carries the teacher's embedding of each of its texts beside the token rows (`{group}_teacher`
[rows, T] padded, `text_teacher` [R, S, T] packed, T the teacher's width; `jbert.data.pair_rows`).
For each query, over exactly the candidates InfoNCE ranks (every positive of the global batch
and every hard negative), the loss adds

    KL(p_teacher || p_student),  p_teacher = softmax(teacher cosines / distill_temperature),
                                 p_student = softmax(InfoNCE's logits: similarities / temperature)

summed over queries like InfoNCE (mean = sum / count), times `distill_weight`. With `symmetric`
the code -> query direction is matched too (each positive against every query, the two
directions halved as InfoNCE's are), and with Matryoshka sizes each size's student scores are
matched to the same teacher distribution, weighted like that size's InfoNCE. The teacher's
candidates are gathered in the same `shard_map` as the student's (`loss._info_nce_shard`), so
the term is exact on any mesh, under GradCache (it is a function of the embeddings) and with
packed rows (slots matched by pair id). `distill_weight=0` logs the KL without training on it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jbert.model.heads import l2_normalize
from jbert.training.step import Batch

# The teacher's embeddings of the query slots [X, T] and of each candidate group's slots
# ({"doc": [Y, T], "neg": ...}), the same structure as `info_nce`'s (queries, candidates).
Teacher = tuple[jax.Array, dict[str, jax.Array]]


def teacher_logits(t_q_XT: jax.Array, t_cand_YT: jax.Array, cand_valid_Y: jax.Array,
                   temperature: float) -> jax.Array:
    """Teacher cosines / `temperature` [X, Y] (renormalised in float32: the file holds float16);
    an empty candidate's logit is -inf. No gradient flows to the teacher."""
    t_q_XT, t_cand_YT = (l2_normalize(jax.lax.stop_gradient(x).astype(jnp.float32))
                         for x in (t_q_XT, t_cand_YT))
    cos_XY = jnp.einsum("xt,yt->xy", t_q_XT, t_cand_YT, preferred_element_type=jnp.float32)
    return jnp.where(cand_valid_Y[None, :], cos_XY / temperature, -jnp.inf)


def kl_sum(teacher_XY: jax.Array, student_XY: jax.Array, rows_X: jax.Array) -> jax.Array:
    """Sum over the rows in `rows_X` of KL(softmax(teacher) || softmax(student)) along Y; -inf
    entries (empty candidates, the same in both) take no part."""
    valid_XY = jnp.isfinite(teacher_XY)
    log_t_XY = jax.nn.log_softmax(teacher_XY, axis=1)
    log_s_XY = jax.nn.log_softmax(student_XY, axis=1)
    # Masked before the product, so the empty entries' -inf never meets the gradient.
    diff_XY = jnp.where(valid_XY, log_t_XY - log_s_XY, 0.0)
    kl_X = jnp.sum(jnp.where(valid_XY, jnp.exp(log_t_XY), 0.0) * diff_XY, axis=1)
    return jnp.sum(jnp.where(rows_X, kl_X, 0.0))


def batch_teacher(batch: Batch) -> Teacher | None:
    """The teacher embeddings a batch carries, as `info_nce`'s `teacher` (None without): packed
    slots are their own candidates, as in `loss.batch_loss_sums`."""
    if "text_teacher" in batch:
        t_XT = batch["text_teacher"].reshape(-1, batch["text_teacher"].shape[-1])
        return t_XT, {"doc": t_XT}
    if "query_teacher" not in batch:
        return None
    groups = {k: batch[f"{k}_teacher"] for k in ("doc", "neg") if f"{k}_teacher" in batch}
    return batch["query_teacher"], groups
