"""InfoNCE over the global batch, Matryoshka sizes, the temperature, and a batch's loss.

Batches are dicts of token arrays, rows split over the (data, fsdp) mesh axes:
`query_ids`/`query_mask` [B, Lq], `doc_ids`/`doc_mask` [B, Ld] (row i is query i's positive),
and with hard negatives `neg_ids`/`neg_mask` [B*n, Ld] (rows i*n .. i*n+n-1 belong to query i,
so a device's negatives sit with its queries); packed, one group `text` of slots
(`jbert.data.pair_rows`). Shapes: B global pairs, b pairs on one device, C candidate documents
of the global batch (c on one device), D embedding width.

The loss scores every query against every positive and every hard negative of the global batch:
inside `jax.shard_map` each device all-gathers the candidates (`lax.all_gather(tiled=True)`),
computes its queries' rows of the similarity matrix and the loss sum is `psum`med. The backward
of the gather is a reduce-scatter, so each device receives the gradient of its own documents.
With a teacher's embeddings in the batch, the same candidates' teacher scores are gathered
beside them and the KL term of `distill` is added.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jbert.data.pair_rows import DOC, QUERY
from jbert.errors import ConfigError
from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.model.heads import contrastive_temperature, l2_normalize
from jbert.ops.sharding import BATCH_AXES
from jbert.tasks.contrastive.distill import Teacher, batch_teacher, kl_sum, teacher_logits
from jbert.training.config import ContrastiveConfig
from jbert.training.step import Batch, LossFn

# (batch key prefix, dropout fold-in index) in the order they are embedded: a group's dropout
# key is fold_in(rng, index), so GradCache's re-run (and a test) can rebuild it.
GROUPS = (("query", 0), ("doc", 1), ("neg", 2), ("text", 3))
# Embeddings [X, D] and their pair ids [X]: a query's positive is the candidate with its id,
# hard negatives have ids no query has, -1 marks an empty slot (packed rows).
Slots = tuple[jax.Array, jax.Array]


def temperature(cfg: ContrastiveConfig, params: Any) -> jax.Array:
    """The InfoNCE temperature: fixed, or `cfg.temperature * exp(learned log-scale)`."""
    return contrastive_temperature(cfg.temperature, params if cfg.learn_temperature else None)


def loss_sizes(cfg: ContrastiveConfig, width: int) -> tuple[tuple[int, float], ...]:
    """(embedding size, weight) pairs the loss sums over: the Matryoshka sizes, else the full
    width alone."""
    if not cfg.matryoshka_dims:
        return ((width, 1.0),)
    too_wide = [d for d in cfg.matryoshka_dims if d > width]
    if too_wide:
        raise ConfigError(f"contrastive.matryoshka_dims={cfg.matryoshka_dims}: {too_wide} wider "
                         f"than the model's hidden_size={width}")
    weights = cfg.matryoshka_weights or (1.0,) * len(cfg.matryoshka_dims)
    return tuple(zip(cfg.matryoshka_dims, weights, strict=True))


def _matryoshka(x_XD: jax.Array, size: int) -> jax.Array:
    """The leading `size` dimensions, L2-normalised again (the whole vector when it is no wider)."""
    if size >= x_XD.shape[-1]:
        return x_XD
    return l2_normalize(x_XD[..., :size].astype(jnp.float32))


def _logits(q_bD: jax.Array, cand_CD: jax.Array, tau: jax.Array, cand_valid_C: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """(similarities, logits) [b, C]; an empty candidate's logit is -inf."""
    sim_bC = jnp.einsum("bd,cd->bc", q_bD, cand_CD, preferred_element_type=jnp.float32)
    return sim_bC, jnp.where(cand_valid_C[None, :], sim_bC / tau, -jnp.inf)


def _query_to_doc(logits_bC: jax.Array, pos_bC: jax.Array, query_valid_b: jax.Array
                  ) -> jax.Array:
    """The loss sum of this device's queries, each against all candidates."""
    pos_logit_b = jnp.sum(jnp.where(pos_bC, logits_bC, 0.0), axis=1)
    return jnp.sum(jnp.where(query_valid_b, jax.nn.logsumexp(logits_bC, axis=1) - pos_logit_b,
                             0.0))


def _reverse_logits(doc_cD: jax.Array, q_BD: jax.Array, query_valid_B: jax.Array,
                    tau: jax.Array) -> jax.Array:
    """Code -> query logits [c, B] of this device's document slots; an empty query's is -inf."""
    rev_cB = jnp.einsum("cd,bd->cb", doc_cD, q_BD, preferred_element_type=jnp.float32) / tau
    return jnp.where(query_valid_B[None, :], rev_cB, -jnp.inf)


def _doc_to_query(rev_cB: jax.Array, doc_ids_c: jax.Array, query_ids_B: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """(the loss sum of this device's positives (code -> query), each against all queries;
    which slots are positives [c])."""
    rev_pos_cB = (doc_ids_c[:, None] == query_ids_B[None, :]) & (doc_ids_c >= 0)[:, None]
    rev_pos_c = jnp.sum(jnp.where(rev_pos_cB, rev_cB, 0.0), axis=1)
    positive_c = jnp.any(rev_pos_cB, axis=1)  # not a hard negative, not empty
    return (jnp.sum(jnp.where(positive_c, jax.nn.logsumexp(rev_cB, axis=1) - rev_pos_c, 0.0)),
            positive_c)


def _info_nce_shard(queries: Slots, candidates: dict[str, Slots], tau: jax.Array,
                    teacher: Teacher | None, *, axes: Any, symmetric: bool,
                    sizes: tuple[tuple[int, float], ...], distill: tuple[float, float]
                    ) -> dict[str, jax.Array]:
    """Loss sums for this device's query slots against all candidate slots of the global batch.
    With `axes=None` the shard is the whole batch (the single-device reference)."""
    def gather(x):
        return x if axes is None else lax.all_gather(x, axes, axis=0, tiled=True)

    q_bD, query_ids_b = queries
    # The global gather: every device sees every positive and every hard negative.
    cand_CD = jnp.concatenate([gather(emb) for emb, _ in candidates.values()])
    cand_ids_C = jnp.concatenate([gather(ids) for _, ids in candidates.values()])
    query_valid_b, cand_valid_C = query_ids_b >= 0, cand_ids_C >= 0
    pos_bC = (query_ids_b[:, None] == cand_ids_C[None, :]) & query_valid_b[:, None]
    if symmetric:
        doc_cD, doc_ids_c = candidates["doc"]
        q_BD, query_ids_B = gather(q_bD), gather(query_ids_b)
    distill_weight, distill_temperature = distill
    if teacher is not None:  # the teacher's scores of the same candidates, gathered alike
        t_q_bT, t_cands = teacher
        t_logits_bC = teacher_logits(t_q_bT, jnp.concatenate(
            [gather(t_cands[k]) for k in candidates]), cand_valid_C, distill_temperature)
        if symmetric:
            t_rev_cB = teacher_logits(t_cands["doc"], gather(t_q_bT), query_ids_B >= 0,
                                      distill_temperature)

    def loss_at(size: int) -> tuple[jax.Array, jax.Array | None]:
        """(InfoNCE, KL to the teacher or None) at the leading `size` dimensions."""
        _, logits_bC = _logits(_matryoshka(q_bD, size), _matryoshka(cand_CD, size), tau,
                               cand_valid_C)
        loss = _query_to_doc(logits_bC, pos_bC, query_valid_b)
        kl = None if teacher is None else kl_sum(t_logits_bC, logits_bC, query_valid_b)
        if symmetric:
            rev_cB = _reverse_logits(_matryoshka(doc_cD, size), _matryoshka(q_BD, size),
                                     query_ids_B >= 0, tau)
            back, positive_c = _doc_to_query(rev_cB, doc_ids_c, query_ids_B)
            loss = 0.5 * (loss + back)
            if teacher is not None:
                kl = 0.5 * (kl + kl_sum(t_rev_cB, rev_cB, positive_c))
        return loss, kl

    full = q_bD.shape[-1]
    sums = {"loss_sum": jnp.zeros((), jnp.float32)}
    if teacher is not None:
        sums |= {"info_nce_loss_sum": jnp.zeros((), jnp.float32),
                 "distill_loss_sum": jnp.zeros((), jnp.float32)}
    for size, weight in sizes:
        loss, kl = loss_at(size)
        if kl is not None:
            sums["info_nce_loss_sum"] += weight * loss
            sums["distill_loss_sum"] += weight * kl
            if distill_weight:  # weight 0: the KL is logged, not trained on
                loss = loss + distill_weight * kl
        sums["loss_sum"] += weight * loss
        if len(sizes) > 1 or size != full:
            sums[f"loss_dim{size}_sum"] = loss
    # The statistics at the full width (XLA computes the similarities once when it is a size).
    sim_bC, logits_bC = _logits(q_bD, cand_CD, tau, cand_valid_C)
    neg_bC = cand_valid_C[None, :] & ~pos_bC & query_valid_b[:, None]
    best_b = jnp.argmax(logits_bC, axis=1)
    sums |= {
        "correct": jnp.sum(query_valid_b
                           & jnp.take_along_axis(pos_bC, best_b[:, None], 1)[:, 0]),
        "pos_sim_sum": jnp.sum(jnp.where(pos_bC, sim_bC, 0.0)),
        "neg_sim_sum": jnp.sum(jnp.where(neg_bC, sim_bC, 0.0)),
        "hardest_neg_sim_sum": jnp.sum(jnp.where(
            query_valid_b, jnp.max(jnp.where(neg_bC, sim_bC, -jnp.inf), axis=1), 0.0)),
        "neg_count": jnp.sum(neg_bC).astype(jnp.float32),
        "count": jnp.sum(query_valid_b).astype(jnp.float32),
    }
    if axes is not None:
        sums = lax.psum(sums, axes)
    return sums


def info_nce(queries: Slots, candidates: dict[str, Slots], tau: jax.Array, *,
             symmetric: bool = False, mesh: Mesh | None = None,
             sizes: tuple[tuple[int, float], ...] = (), teacher: Teacher | None = None,
             distill_weight: float = 1.0, distill_temperature: float = 0.05
             ) -> dict[str, jax.Array]:
    """InfoNCE sums over the global batch: `loss_sum` (mean over queries = loss_sum / count),
    the in-batch accuracy and similarity statistics, summed over the Matryoshka `sizes`
    (default the full width). Each query slot scores against every candidate slot
    (`{"doc": slots, "neg": slots}`); with `symmetric`, each `doc` slot also against every
    query (code -> query). With `teacher` (its embeddings of the same slots,
    `distill.Teacher`), `loss_sum` adds `distill_weight` times the KL to the teacher's scores
    (`distill_loss_sum`; InfoNCE alone is `info_nce_loss_sum`). With `mesh`, written per device
    in shard_map."""
    sizes = sizes or ((queries[0].shape[-1], 1.0),)
    body = functools.partial(_info_nce_shard, symmetric=symmetric, sizes=sizes,
                             distill=(distill_weight, distill_temperature))
    if mesh is None:
        sums = body(queries, candidates, tau, teacher, axes=None)
    else:
        rows = P(BATCH_AXES)  # a prefix: every array of the slots has its rows split
        sums = jax.shard_map(functools.partial(body, axes=BATCH_AXES), mesh=mesh,
                             in_specs=(rows, rows, P(), rows), out_specs=P())(
            queries, candidates, tau, teacher)
    return {**sums, "temperature_sum": tau.astype(jnp.float32),
            "calls": jnp.ones((), jnp.float32)}


def paired_slots(q_BD: jax.Array, d_BD: jax.Array, n_MD: jax.Array | None = None
                 ) -> tuple[Slots, dict[str, Slots]]:
    """`info_nce`'s slots of padded rows: row i of `q_BD` and `d_BD` is pair i; the hard
    negatives `n_MD` get ids no query has."""
    rows = jnp.arange(q_BD.shape[0], dtype=jnp.int32)
    candidates = {"doc": (d_BD, rows)}
    if n_MD is not None:
        candidates["neg"] = (n_MD, q_BD.shape[0] + jnp.arange(n_MD.shape[0], dtype=jnp.int32))
    return (q_BD, rows), candidates


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Logged means: loss (and each Matryoshka size's, `loss_dim128`), in-batch accuracy,
    similarity of positives and of negatives (mean and the hardest per query), the
    temperature; with a teacher, the KL to it and InfoNCE alone (`distill_loss`,
    `info_nce_loss`); with the sparse head, its InfoNCE and in-batch accuracy
    (`sparse_loss`, `sparse_accuracy`)."""
    count = max(sums.get("count", 1.0), 1.0)
    per_size = {k.removesuffix("_sum"): v / count for k, v in sums.items()
                if k.startswith(("loss_dim", "distill_loss", "info_nce_loss", "sparse_loss"))}
    if "sparse_correct" in sums:
        per_size["sparse_accuracy"] = sums["sparse_correct"] / count
    return per_size | {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct"] / count,
        "pos_sim": sums["pos_sim_sum"] / count,
        "neg_sim": sums["neg_sim_sum"] / max(sums["neg_count"], 1.0),
        "hardest_neg_sim": sums["hardest_neg_sim_sum"] / count,
        "temperature": sums["temperature_sum"] / max(sums["calls"], 1.0),
    }


# -- a batch's loss: the plain step's, and GradCache's over the embeddings ---------------------


def batch_groups(batch: Batch) -> list[tuple[str, int]]:
    """The `GROUPS` in this batch: (key prefix, dropout fold-in index)."""
    return [(k, i) for k, i in GROUPS if f"{k}_ids" in batch]


def group_rows(batch: Batch, key: str) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """A group's (ids, mask, segment ids or None) row arrays."""
    return batch[f"{key}_ids"], batch[f"{key}_mask"], batch.get(f"{key}_segment_ids")


def group_segments(batch: Batch, key: str) -> int:
    """Texts per row: S of a packed group's pair ids [R, S], else 1."""
    return batch[f"{key}_pair"].shape[-1] if f"{key}_pair" in batch else 1


def embed_rows(config: JinaBertConfig, params: Any,
               rows: tuple[jax.Array, jax.Array, jax.Array | None], segments: int,
               rng: jax.Array | None, sparse_texts: int | None = None) -> dict[str, jax.Array]:
    """Representations of `group_rows` (`functional.encode`): `dense` [B, D], and `sparse`
    [B, V] when `params` carry the sparse head; [B, S, ...] for packed rows (S `segments`),
    their sparse vectors [sparse_texts, V] in row order when that is fewer than the slots."""
    ids_BL, mask_BL, segment_ids_BL = rows
    if segment_ids_BL is None or (sparse_texts or 0) >= ids_BL.shape[0] * segments:
        sparse_texts = None  # one vector per row or per slot is no more than asked
    return functional.encode(config, params, ids_BL, mask_BL, None, segment_ids_BL,
                             num_segments=segments, dropout_rng=rng, sparse_texts=sparse_texts)


def dropout_key(rng: jax.Array | None, index: int | jax.Array) -> jax.Array | None:
    return None if rng is None else jax.random.fold_in(rng, index)


def batch_tokens(batch: Batch) -> jax.Array:
    return sum(jnp.sum(batch[f"{k}_mask"]) for k, _ in batch_groups(batch))


def batch_slots(emb: dict[str, dict[str, jax.Array]], batch: Batch, key: str,
                max_slots: int | None = None) -> tuple[Slots, dict[str, Slots]]:
    """`info_nce`'s slots of one representation (`key`: dense or sparse) of a batch's groups.
    Packed rows ([R, S, X] under `text`) are slots: the query slots score against the
    document and negative slots, matched by pair id. With `max_slots` (at least the texts the
    batch can hold), packed slots are first compacted to that many, the filled ones first:
    R * S slots are mostly empty, and the [slots, slots] scores of vocabulary-sized vectors
    would cost what the encoder does. Sparse vectors pooled compact already ([K, V], texts in
    row order: `embed_rows` with `sparse_texts`) get their slots' ids the same way."""
    if "text" not in emb:
        neg = emb["neg"][key] if "neg" in emb else None
        return paired_slots(emb["query"][key], emb["doc"][key], neg)
    x = emb["text"][key]
    pair_N, role_N = batch["text_pair"].reshape(-1), batch["text_role"].reshape(-1)
    # Already [K, X] in row order (`embed_rows` with `sparse_texts`), or [R, S, X] to compact.
    slots_NX = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
    max_slots = x.shape[0] if x.ndim == 2 else max_slots
    if max_slots is not None and max_slots < pair_N.shape[0]:
        # The filled slots in row order: each row's texts come first in it.
        filled_K = jnp.argsort(pair_N < 0, stable=True)[:max_slots]
        pair_N, role_N = pair_N[filled_K], role_N[filled_K]
        if x.ndim == 3:
            slots_NX = slots_NX[filled_K]
    return ((slots_NX, jnp.where(role_N == QUERY, pair_N, -1)),
            {"doc": (slots_NX, jnp.where(role_N >= DOC, pair_N, -1))})


def sparse_slot_bound(texts: int, mesh: Mesh | None) -> int:
    """`batch_slots`' `max_slots` for batches of at most `texts` texts: rounded up to a
    multiple of the batch devices, whose shard_map splits the slots evenly."""
    devices = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
    return -(-texts // devices) * devices


def batch_loss_sums(emb: dict[str, dict[str, jax.Array]], batch: Batch, tau: jax.Array,
                    cfg: ContrastiveConfig, mesh: Mesh | None, sparse_slots: int | None = None
                    ) -> dict[str, jax.Array]:
    """InfoNCE of a batch's representations per group (`embed_rows`'s), and the KL to the
    teacher's scores when the batch carries a teacher's embeddings (`distill.batch_teacher`).
    With sparse vectors, their own InfoNCE (logits: the dot products, no temperature: the head
    learns its scale) joins the loss at `cfg.sparse_weight`, logged as `sparse_loss_sum` and
    `sparse_correct`; packed, over `sparse_slots` compacted slots (`batch_slots`)."""
    width = next(iter(emb.values()))["dense"].shape[-1]
    sums = info_nce(*batch_slots(emb, batch, "dense"), tau, symmetric=cfg.symmetric,
                    mesh=mesh, sizes=loss_sizes(cfg, width), teacher=batch_teacher(batch),
                    distill_weight=cfg.distill_weight,
                    distill_temperature=cfg.distill_temperature)
    if "sparse" in next(iter(emb.values())):
        sparse = info_nce(*batch_slots(emb, batch, "sparse", sparse_slots),
                          jnp.ones((), jnp.float32), symmetric=cfg.symmetric, mesh=mesh)
        sums["loss_sum"] = sums["loss_sum"] + cfg.sparse_weight * sparse["loss_sum"]
        sums |= {"sparse_loss_sum": sparse["loss_sum"], "sparse_correct": sparse["correct"]}
    return sums


def contrastive_loss_fn(config: JinaBertConfig, cfg: ContrastiveConfig,
                        mesh: Mesh | None = None, sparse_slots: int | None = None) -> LossFn:
    """The plain step's loss: embed queries, positives and negatives, InfoNCE over the batch
    (`sparse_slots`: see `batch_loss_sums`)."""
    loss_sizes(cfg, config.hidden_size)  # refuse sizes wider than the model before tracing

    def loss(params, batch: Batch, dropout_rng):
        emb = {k: embed_rows(config, params, group_rows(batch, k), group_segments(batch, k),
                             dropout_key(dropout_rng, i), sparse_slots)
               for k, i in batch_groups(batch)}
        sums = batch_loss_sums(emb, batch, temperature(cfg, params), cfg, mesh, sparse_slots)
        sums["tokens"] = batch_tokens(batch)
        return sums["loss_sum"], sums

    return loss
