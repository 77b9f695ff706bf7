"""Contrastive tuning: InfoNCE over the global batch, the GradCache step, and the trainer Task.

Batches are dicts of token arrays, rows split over the (data, fsdp) mesh axes:
`query_ids`/`query_mask` [B, Lq], `doc_ids`/`doc_mask` [B, Ld] (row i is query i's positive),
and with hard negatives `neg_ids`/`neg_mask` [B*n, Ld] (rows i*n .. i*n+n-1 belong to query i,
so a device's negatives sit with its queries). Shapes: B global pairs, b pairs on one device,
M = B*n negatives, C = B + M candidate documents, D embedding width.

The loss scores every query against every positive and every hard negative of the global batch:
inside `jax.shard_map` each device all-gathers the documents (`lax.all_gather(tiled=True)`),
computes its queries' rows of the similarity matrix and the loss sum is `psum`med. The backward
of the gather is a reduce-scatter, so each device receives the gradient of its own documents.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jbert.data.packing import best_fit, pack_fixed, texts_per_row
from jbert.errors import ConfigError, InputError
from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.model.heads import l2_normalize
from jbert.ops.sharding import BATCH_AXES
from jbert.training.config import ContrastiveConfig, TrainConfig
from jbert.training.flops import encoder_flops_per_token
from jbert.training.step import Batch, GradFn, LossFn, strided_split

HEAD = "contrastive"
# A learned temperature is kept in [MIN, MAX]: near zero the logits and gradients explode.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.005, 1.0
# (batch key prefix, which texts) in the order they are embedded.
GROUPS = (("query", 0), ("doc", 1), ("neg", 2), ("text", 3))
# Roles of the slots of packed rows (`text_role`): queries, their positives, hard negatives.
EMPTY, QUERY, DOC, NEG = 0, 1, 2, 3


def temperature(cfg: ContrastiveConfig, params: Any) -> jax.Array:
    """The InfoNCE temperature: fixed, or `cfg.temperature * exp(learned log-scale)`."""
    if not cfg.learn_temperature:
        return jnp.asarray(cfg.temperature, jnp.float32)
    tau = cfg.temperature * jnp.exp(params["temperature_log_scale"].astype(jnp.float32))
    return jnp.clip(tau, MIN_TEMPERATURE, MAX_TEMPERATURE)


def _matryoshka(x_XD: jax.Array, size: int) -> jax.Array:
    """The leading `size` dimensions, L2-normalised again (the whole vector when it is no wider)."""
    if size >= x_XD.shape[-1]:
        return x_XD
    return l2_normalize(x_XD[..., :size].astype(jnp.float32))


def _info_nce_shard(q_bD, qp_b, d_cD, dp_c, n_mD, np_m, tau, *, axes, symmetric, sizes):
    """Loss sums for this device's query slots against all document slots of the global batch.

    Slots carry pair ids (`qp_b`, `dp_c`, `np_m`): a query's positive is the document slot with
    its id, -1 marks an empty slot (packed rows) and hard negatives have ids no query has. With
    `axes=None` the shard is the whole batch (the single-device reference).
    """
    def gather(x):
        return x if axes is None or x is None else lax.all_gather(x, axes, axis=0, tiled=True)

    # The global gather: every device sees every positive and every hard negative.
    d_CD, dp_C = gather(d_cD), gather(dp_c)
    cand_CD = d_CD if n_mD is None else jnp.concatenate([d_CD, gather(n_mD)], axis=0)
    cp_C = dp_C if np_m is None else jnp.concatenate([dp_C, gather(np_m)], axis=0)
    q_valid_b, c_valid_C = qp_b >= 0, cp_C >= 0
    pos_bC = (qp_b[:, None] == cp_C[None, :]) & q_valid_b[:, None]
    q_BD, qp_B = (gather(q_bD), gather(qp_b)) if symmetric else (None, None)

    def loss_sum(size):
        q, cand = _matryoshka(q_bD, size), _matryoshka(cand_CD, size)
        sim_bC = jnp.einsum("bd,cd->bc", q, cand, preferred_element_type=jnp.float32)
        logits_bC = jnp.where(c_valid_C[None, :], sim_bC / tau, -jnp.inf)
        pos_logit_b = jnp.sum(jnp.where(pos_bC, logits_bC, 0.0), axis=1)
        total = jnp.sum(jnp.where(q_valid_b, jax.nn.logsumexp(logits_bC, axis=1) - pos_logit_b,
                                  0.0))
        if symmetric:  # code -> query: this device's positives against all queries
            rev_cB = jnp.einsum("cd,bd->cb", _matryoshka(d_cD, size), _matryoshka(q_BD, size),
                                preferred_element_type=jnp.float32) / tau
            rev_cB = jnp.where(qp_B[None, :] >= 0, rev_cB, -jnp.inf)
            rev_pos_cB = (dp_c[:, None] == qp_B[None, :]) & (dp_c >= 0)[:, None]
            rev_pos_c = jnp.sum(jnp.where(rev_pos_cB, rev_cB, 0.0), axis=1)
            positive_c = jnp.any(rev_pos_cB, axis=1)  # not a hard negative, not empty
            total = 0.5 * (total + jnp.sum(jnp.where(
                positive_c, jax.nn.logsumexp(rev_cB, axis=1) - rev_pos_c, 0.0)))
        return total, sim_bC, logits_bC

    full = q_bD.shape[-1]
    # Each size once; the full size too, for the statistics (unused parts are dropped by XLA).
    at_size = {size: loss_sum(size) for size in dict.fromkeys([s for s, _ in sizes] + [full])}
    sums = {"loss_sum": jnp.zeros((), jnp.float32)}
    for size, weight in sizes:
        sums["loss_sum"] += weight * at_size[size][0]
        if len(sizes) > 1 or size != full:
            sums[f"loss_dim{size}_sum"] = at_size[size][0]
    _, sim_bC, logits_bC = at_size[full]
    neg_bC = c_valid_C[None, :] & ~pos_bC & q_valid_b[:, None]
    best_b = jnp.argmax(logits_bC, axis=1)
    sums |= {
        "correct": jnp.sum(q_valid_b & jnp.take_along_axis(pos_bC, best_b[:, None], 1)[:, 0]),
        "pos_sim_sum": jnp.sum(jnp.where(pos_bC, sim_bC, 0.0)),
        "neg_sim_sum": jnp.sum(jnp.where(neg_bC, sim_bC, 0.0)),
        "hardest_neg_sim_sum": jnp.sum(jnp.where(
            q_valid_b, jnp.max(jnp.where(neg_bC, sim_bC, -jnp.inf), axis=1), 0.0)),
        "neg_count": jnp.sum(neg_bC).astype(jnp.float32),
        "count": jnp.sum(q_valid_b).astype(jnp.float32),
    }
    if axes is not None:
        sums = lax.psum(sums, axes)
    return sums


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


def info_nce(q_BD: jax.Array, d_BD: jax.Array, n_MD: jax.Array | None, tau: jax.Array, *,
             symmetric: bool = False, mesh: Mesh | None = None,
             sizes: tuple[tuple[int, float], ...] = (),
             pair_ids: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """InfoNCE sums over the global batch: `loss_sum` (mean over pairs = loss_sum / count), the
    in-batch accuracy and similarity statistics, summed over the Matryoshka `sizes` (default the
    full width). Row i of `q_BD` and of `d_BD` is pair i unless `pair_ids` (`query`, `doc`,
    `neg`; -1 for an empty slot) say otherwise. With `mesh`, written per device in shard_map."""
    if pair_ids is None:
        rows = jnp.arange(q_BD.shape[0], dtype=jnp.int32)
        pair_ids = {"query": rows, "doc": rows}
        if n_MD is not None:  # ids no query has
            pair_ids["neg"] = q_BD.shape[0] + jnp.arange(n_MD.shape[0], dtype=jnp.int32)
    sizes = sizes or ((q_BD.shape[-1], 1.0),)
    body = functools.partial(_info_nce_shard, symmetric=symmetric, sizes=sizes)
    args = (q_BD, pair_ids["query"], d_BD, pair_ids["doc"], n_MD, pair_ids.get("neg"), tau)
    if mesh is None:
        sums = body(*args, axes=None)
    else:
        rows = P(BATCH_AXES)
        specs = (rows, rows, rows, rows, rows, rows, P())
        shard = functools.partial(body, axes=BATCH_AXES)
        if n_MD is None:  # shard_map takes arrays, not None
            args, specs = args[:4] + args[6:], specs[:4] + specs[6:]
            shard = functools.partial(lambda f, q, qp, d, dp, t: f(q, qp, d, dp, None, None, t),
                                      shard)
        sums = jax.shard_map(shard, mesh=mesh, in_specs=specs, out_specs=P())(*args)
    return {**sums, "temperature_sum": tau.astype(jnp.float32),
            "calls": jnp.ones((), jnp.float32)}


def _embed(config: JinaBertConfig, params: Any, ids_BL, mask_BL, segment_ids_BL,
           num_segments: int, rng) -> jax.Array:
    """Embeddings [B, D], or [B, S, D] for packed rows (`segment_ids_BL` given, S segments)."""
    return functional.embed(config, params, ids_BL, mask_BL, None, segment_ids_BL,
                            num_segments=num_segments, dropout_rng=rng)


def _rows(batch: Batch, key: str) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """A group's (ids, mask, segment ids or None) row arrays."""
    return batch[f"{key}_ids"], batch[f"{key}_mask"], batch.get(f"{key}_segment_ids")


def _segments(batch: Batch, key: str) -> int:
    """Texts per row: S of a packed group's pair ids [R, S], else 1."""
    return batch[f"{key}_pair"].shape[-1] if f"{key}_pair" in batch else 1


def _groups(batch: Batch) -> list[tuple[str, int]]:
    return [(k, i) for k, i in GROUPS if f"{k}_ids" in batch]


def _tokens(batch: Batch) -> jax.Array:
    return sum(jnp.sum(batch[f"{k}_mask"]) for k, _ in _groups(batch))


def _key(rng, index):
    return None if rng is None else jax.random.fold_in(rng, index)


def _loss_sums(emb: dict[str, jax.Array], batch: Batch, tau, cfg: ContrastiveConfig,
               mesh: Mesh | None) -> dict[str, jax.Array]:
    """InfoNCE of a batch's embeddings. Packed rows ([R, S, D] under `text`) are slots: the
    query slots score against the document and negative slots, matched by pair id."""
    width = next(iter(emb.values())).shape[-1]
    sizes = loss_sizes(cfg, width)
    if "text" not in emb:
        return info_nce(emb["query"], emb["doc"], emb.get("neg"), tau, symmetric=cfg.symmetric,
                        mesh=mesh, sizes=sizes)
    slots_XD = emb["text"].reshape(-1, width)
    pair_X, role_X = batch["text_pair"].reshape(-1), batch["text_role"].reshape(-1)
    pair_ids = {"query": jnp.where(role_X == QUERY, pair_X, -1),
                "doc": jnp.where(role_X >= DOC, pair_X, -1)}
    return info_nce(slots_XD, slots_XD, None, tau, symmetric=cfg.symmetric, mesh=mesh,
                    sizes=sizes, pair_ids=pair_ids)


def contrastive_loss_fn(config: JinaBertConfig, cfg: ContrastiveConfig,
                        mesh: Mesh | None = None) -> LossFn:
    """The plain step's loss: embed queries, positives and negatives, InfoNCE over the batch."""
    loss_sizes(cfg, config.hidden_size)  # refuse sizes wider than the model before tracing

    def loss(params, batch: Batch, dropout_rng):
        emb = {k: _embed(config, params, *_rows(batch, k), _segments(batch, k),
                         _key(dropout_rng, i)) for k, i in _groups(batch)}
        sums = _loss_sums(emb, batch, temperature(cfg, params), cfg, mesh)
        sums["tokens"] = _tokens(batch)
        return sums["loss_sum"], sums

    return loss


def _chunked(x_BX: jax.Array, chunks: int, mesh: Mesh | None) -> jax.Array:
    """[B, ...] -> [chunks, B / chunks, ...] by `strided_split`, pinned to the batch axes."""
    x_NcX = strided_split(x_BX, chunks, f"{chunks} GradCache chunks")
    if mesh is not None:
        x_NcX = lax.with_sharding_constraint(x_NcX, NamedSharding(mesh, P(None, BATCH_AXES)))
    return x_NcX


def _unchunked(x_NcX: jax.Array) -> jax.Array:
    return jnp.swapaxes(x_NcX, 0, 1).reshape(-1, *x_NcX.shape[2:])


def cached_grad_fn(config: JinaBertConfig, cfg: ContrastiveConfig,
                   mesh: Mesh | None = None, chunks: int | None = None) -> GradFn:
    """GradCache: the gradient of the plain loss with memory for one chunk of activations.

    1. embed every chunk of rows without keeping activations (lax.map);
    2. the loss and its gradient with respect to the embeddings (and the temperature);
    3. per chunk, re-run the encoder under `jax.vjp` with those embedding cotangents and sum
       the parameter gradients (lax.scan). Dropout keys depend only on (group, chunk), so the
       re-run sees the same masks as step 1.

    `chunks` splits every group's rows in that many parts (packed batches: the pairs' global
    batch over `chunk_size`); by default the query rows over `cfg.chunk_size`.
    """
    if cfg.chunk_size <= 0:
        raise ConfigError(f"contrastive.chunk_size={cfg.chunk_size}: GradCache needs a chunk "
                          "size > 0")
    loss_sizes(cfg, config.hidden_size)

    def grad_fn(params, batch: Batch, dropout_rng):
        encoder = params["bert"]
        rest = {k: v for k, v in params.items() if k != "bert"}
        n_chunks = chunks or batch["query_ids"].shape[0] // cfg.chunk_size
        groups = _groups(batch)
        inputs = {k: (jax.tree.map(lambda x: _chunked(x, n_chunks, mesh), _rows(batch, k)),
                      jnp.arange(n_chunks) + i * n_chunks) for k, i in groups}

        def embed_chunk(enc, k, rows, index):
            return _embed(config, {"bert": enc}, *rows, _segments(batch, k),
                          _key(dropout_rng, index))

        emb = {k: _unchunked(lax.map(lambda xs, k=k: embed_chunk(encoder, k, *xs), inputs[k]))
               for k, _ in groups}

        def loss_of_embeddings(emb, rest):
            sums = _loss_sums(emb, batch, temperature(cfg, rest), cfg, mesh)
            return sums["loss_sum"], sums

        (_, sums), (g_emb, g_rest) = jax.value_and_grad(
            loss_of_embeddings, argnums=(0, 1), has_aux=True)(emb, rest)

        def backward(k):
            def step(acc, xs):
                rows, index, g_cX = xs
                _, vjp = jax.vjp(lambda enc: embed_chunk(enc, k, rows, index), encoder)
                return jax.tree.map(jnp.add, acc, vjp(g_cX)[0]), None
            return step

        g_encoder = jax.tree.map(jnp.zeros_like, encoder)
        for k, _ in groups:
            g_encoder, _ = lax.scan(backward(k), g_encoder,
                                    (*inputs[k], _chunked(g_emb[k], n_chunks, mesh)))
        sums["tokens"] = _tokens(batch)
        return {**g_rest, "bert": g_encoder}, sums

    return grad_fn


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Logged means: loss (and each Matryoshka size's, `loss_dim128`), in-batch accuracy,
    similarity of positives and of negatives (mean and the hardest per query), the
    temperature."""
    count = max(sums.get("count", 1.0), 1.0)
    per_size = {k.removesuffix("_sum"): v / count for k, v in sums.items()
                if k.startswith("loss_dim")}
    return per_size | {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct"] / count,
        "pos_sim": sums["pos_sim_sum"] / count,
        "neg_sim": sums["neg_sim_sum"] / max(sums["neg_count"], 1.0),
        "hardest_neg_sim": sums["hardest_neg_sim_sum"] / count,
        "temperature": sums["temperature_sum"] / max(sums["calls"], 1.0),
    }


# -- data ------------------------------------------------------------------------------------


def _side_texts(raw: dict, cfg: ContrastiveConfig) -> dict[str, tuple[list[str], int]]:
    """{group: (texts with their prompt, token limit)} of a raw pair batch."""
    texts = {"query": ([cfg.query_prompt + t for t in raw["query"]], cfg.max_query_length),
             "doc": ([cfg.doc_prompt + t for t in raw["positive"]], cfg.max_doc_length)}
    if cfg.hard_negatives:
        texts["neg"] = ([cfg.doc_prompt + t for negs in raw["negatives"]
                         for t in negs[:cfg.hard_negatives]], cfg.max_doc_length)
    return texts


def _pair_texts(raw: dict, tokenizer: Any, cfg: ContrastiveConfig) -> list[list[tuple[int, list]]]:
    """Per pair of a raw batch: (role, token ids) of its query, positive and hard negatives,
    prompts prefixed (`_side_texts`), each group tokenised in one call."""
    from jbert.data.tokenizer import encode_with_specials

    ids = {k: encode_with_specials(tokenizer, t, n) for k, (t, n) in _side_texts(raw, cfg).items()}
    n_neg = cfg.hard_negatives
    return [[(QUERY, ids["query"][i]), (DOC, ids["doc"][i])]
            + [(NEG, x) for x in ids.get("neg", [])[i * n_neg:(i + 1) * n_neg]]
            for i in range(len(ids["query"]))]


def fitting_prefix(counts: Sequence[Sequence[int]], num_rows: int, length: int) -> int:
    """How many pairs from the front of a line fit `num_rows` packed rows of `length` tokens;
    `counts[i]` are pair i's texts' token counts (query, document, negatives)."""
    def fits(k: int) -> bool:
        return len(best_fit([n for c in counts[:k] for n in c], lambda _: length)[0]) <= num_rows

    low, high = 0, len(counts)
    while low < high:  # rows needed grow with the prefix: the longest that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


class TokenizedPairs:
    """Raw pair batches (`PairBatcher` or `MultiSourceBatcher`) -> fixed-shape token arrays,
    prompts prefixed.

    Padded (default): one text per row, `{group}_ids` / `{group}_mask` [B, L] for the groups
    query, doc (and neg). Packed (`pack_rows` = R): every text of the batch, queries and
    documents alike, laid end to end in R rows of the longer length limit (`text_ids`,
    `text_mask`, `text_segment_ids` [R, L]) with each slot's pair id and role (`text_pair`,
    `text_role` [R, S]: -1 / EMPTY for an empty slot, hard negatives with ids of their own).
    The rows are planned for the average batch with a little room (`plan_pack_rows`): pairs
    that do not fit wait for the next batch (first in line there), so no text is cut, a step
    holds `data.batch_size` pairs on average, and the waiting pairs are part of the data
    position (`get_state`), so resume stays exact. Pair ids are unique over the global batch:
    process p's start at p * R * S.
    """

    def __init__(self, batcher: Iterator[dict], tokenizer: Any, cfg: ContrastiveConfig, *,
                 pack_rows: int | None = None, process_index: int = 0,
                 process_count: int = 1):
        from jbert.data.tokenizer import special_ids

        self.batcher, self.tokenizer, self.cfg = batcher, tokenizer, cfg
        self.pack_rows = pack_rows
        self.process_index, self.process_count = process_index, process_count
        self.pad_id = special_ids(tokenizer).pad
        self.waiting: list[dict] = []  # pairs of earlier batches that did not fit (packed)

    def __next__(self) -> dict[str, np.ndarray]:
        from jbert.data.tokenizer import tokenize_texts

        raw = next(self.batcher)
        if self.pack_rows is None:
            out = {}
            for key, (batch_texts, length) in _side_texts(raw, self.cfg).items():
                arrays = tokenize_texts(self.tokenizer, batch_texts, length, pad_to=length)
                out[f"{key}_ids"] = arrays["input_ids"]
                out[f"{key}_mask"] = arrays["attention_mask"]
            return out
        return self._packed(raw)

    def _packed(self, raw: dict) -> dict[str, np.ndarray]:
        cfg, n_neg = self.cfg, self.cfg.hard_negatives
        fresh = [{"query": q, "positive": d, "negatives": list(negs[:n_neg])}
                 for q, d, negs in zip(raw["query"], raw["positive"],
                                       raw.get("negatives") or [[]] * len(raw["query"]),
                                       strict=True)]
        # A waiting pair sharing a text with this batch would be a false negative: it waits on.
        taken = {t for p in fresh for t in (p["query"], p["positive"], *p["negatives"])}
        clash = [p for p in self.waiting
                 if {p["query"], p["positive"], *p["negatives"]} & taken]
        line = [p for p in self.waiting if p not in clash] + fresh
        texts = _pair_texts({"query": [p["query"] for p in line],
                             "positive": [p["positive"] for p in line],
                             "negatives": [p["negatives"] for p in line]}, self.tokenizer, cfg)
        length = packed_length(cfg)
        k = fitting_prefix([[len(ids) for _, ids in t] for t in texts], self.pack_rows, length)
        if k == 0:
            raise ValueError(f"a single pair does not fit {self.pack_rows} packed rows; plan "
                             "them with plan_pack_rows")
        self.waiting = clash + line[k:]
        if len(self.waiting) > WAITING_BATCHES * len(fresh):  # planned to drain: never grows
            raise InputError(
                f"{len(self.waiting)} pairs wait for packed rows, more than {WAITING_BATCHES} "
                f"batches of {len(fresh)}: {self.pack_rows} rows of {length} tokens take too few "
                "pairs per step for these texts (plan them with plan_pack_rows)")
        segments = texts_per_row(length)
        first = self.process_index * self.pack_rows * segments
        first_neg = (self.process_count + self.process_index) * self.pack_rows * segments
        flat = [(role, ids, first + i if role != NEG else first_neg + i * n_neg + j - 2)
                for i, t in enumerate(texts[:k]) for j, (role, ids) in enumerate(t)]
        packed = pack_fixed([ids for _, ids, _ in flat], self.pack_rows, length, self.pad_id)
        pair_RS = np.full((self.pack_rows, segments), -1, np.int32)
        role_RS = np.full((self.pack_rows, segments), EMPTY, np.int32)
        pair_RS.reshape(-1)[packed.text_slot] = [pair for _, _, pair in flat]
        role_RS.reshape(-1)[packed.text_slot] = [role for role, _, _ in flat]
        return {"text_ids": packed.ids_RL,
                "text_mask": (packed.segment_ids_RL > 0).astype(np.int32),
                "text_segment_ids": packed.segment_ids_RL, "text_pair": pair_RS,
                "text_role": role_RS}

    def get_state(self) -> dict:
        if self.pack_rows is None:
            return self.batcher.get_state()
        return {"batcher": self.batcher.get_state(), "waiting": list(self.waiting)}

    def set_state(self, state: dict) -> None:
        if self.pack_rows is None:
            if "batcher" in state:
                raise ConfigError("contrastive.pack=false: this data position is of a packed "
                                  "run; resume it with contrastive.pack=true")
            self.batcher.set_state(state)
            return
        if "batcher" not in state:
            raise ConfigError("contrastive.pack=true: this data position is of a padded run; "
                              "resume it with contrastive.pack=false")
        self.batcher.set_state(state["batcher"])
        self.waiting = [dict(p) for p in state["waiting"]]


def packed_length(cfg: ContrastiveConfig) -> int:
    """Tokens per packed row: the longer length limit, so any text fits a row alone."""
    return max(cfg.max_query_length, cfg.max_doc_length)


SLACK = 1.02  # packed rows' room over the average batch (see plan_pack_rows)
# With SLACK the line drains: more than this many batches waiting means the plan does not fit.
WAITING_BATCHES = 8


def plan_pack_rows(sources: dict[str, list[dict]], tokenizer: Any, cfg: ContrastiveConfig,
                   local_pairs: int, row_multiple: int, seed: int = 0, batches: int = 32
                   ) -> int:
    """Packed rows per batch: the fewest (the mean need of random batches of `local_pairs`
    pairs, times a factor from 1.00 up, rounded up to `row_multiple`) that take `SLACK` times
    `local_pairs` pairs per step on average from a long line of every source (`batches`
    simulated steps), so that the waiting line of `TokenizedPairs` drains. Never more rows than
    texts."""

    rng = np.random.default_rng(seed)
    length = packed_length(cfg)
    samples = []  # per source: the token counts of each sampled pair's texts
    mean_rows = 0.0
    for pairs in sources.values():
        size = min(len(pairs), max(4096, 4 * local_pairs))
        sample = [pairs[i] for i in rng.choice(len(pairs), size, replace=False)]
        raw = {"query": [p["query"] for p in sample], "positive": [p["positive"] for p in sample],
               "negatives": [p.get("negatives", []) for p in sample]}
        counts = [[len(ids) for _, ids in t] for t in _pair_texts(raw, tokenizer, cfg)]
        needs = [len(best_fit([n for i in rng.choice(size, min(local_pairs, size), replace=False)
                               for n in counts[i]], lambda _: length)[0]) for _ in range(8)]
        mean_rows = max(mean_rows, float(np.mean(needs)))
        samples.append(counts)
    most = local_pairs * (2 + cfg.hard_negatives)

    def rows_at(factor: float) -> int:
        return min(most, -(-int(np.ceil(mean_rows * factor)) // row_multiple) * row_multiple)

    def capacity(rows: int) -> float:
        """Pairs a step takes when the line is long, on average (the least over sources)."""
        return min(float(np.mean([
            fitting_prefix([counts[i] for i in rng.choice(len(counts), min(
                2 * local_pairs, len(counts)), replace=False)], rows, length)
            for _ in range(batches)])) for counts in samples)

    # A little more room than a batch needs on average, so the waiting line drains (at exactly
    # the need it would grow like a random walk).
    factor = 1.0
    while rows_at(factor) < most and capacity(rows_at(factor)) < SLACK * local_pairs:
        factor += 0.01
    return rows_at(factor)


def load_sources(cfg: TrainConfig, root: Path) -> dict[str, list[dict]]:
    """Training pairs per source (`contrastive.sources`, default `<data.dir>/pairs`), with hard
    negatives mined by BM25 (cached beside the pairs) where the pairs have fewer than asked
    for."""
    from jbert.data.hub import locate
    from jbert.data.pair_batches import load_pairs
    from jbert.tasks.mining import cached_bm25_negatives

    specs = [s.strip() for s in cfg.contrastive.sources.split(",") if s.strip()]
    key = "contrastive.sources" if specs else "data.dir"
    specs = specs or [str(root / "pairs")]
    names = [Path(spec).name or spec for spec in specs]
    for name in names:  # batchers, their state and the logs know a source by this name
        if names.count(name) > 1:
            raise ConfigError(f"contrastive.sources: two sources are named {name!r} "
                              f"({cfg.contrastive.sources!r}); give their folders distinct names")
    files = [locate(spec, f"{key}: {spec}", inside="train.jsonl") for spec in specs]
    sources = {}
    for name, file in zip(names, files, strict=True):
        pairs = load_pairs(file, "train")
        if cfg.contrastive.hard_negatives:
            pairs = cached_bm25_negatives(pairs, cfg.contrastive.hard_negatives, file)
            pairs = [p for p in pairs if len(p["negatives"]) >= cfg.contrastive.hard_negatives]
        sources[name] = pairs
    return sources


def gradcache_chunks(cfg: TrainConfig) -> int:
    """GradCache chunks per step: the global batch over `contrastive.chunk_size` (1 without)."""
    c = cfg.contrastive
    if c.chunk_size and cfg.data.batch_size % c.chunk_size:
        raise ConfigError(f"contrastive.chunk_size={c.chunk_size} does not divide "
                          f"data.batch_size={cfg.data.batch_size}")
    return cfg.data.batch_size // c.chunk_size if c.chunk_size else 1


def contrastive_step_fns(cfg: TrainConfig, mesh: Mesh | None = None
                         ) -> tuple[LossFn, GradFn | None, float]:
    """What the trainer's step runs for this config: (loss, GradCache gradient or None,
    training FLOPs per token). Needs no data: `jbert.tasks.aot` compiles the same step. Refuses
    a chunk size or Matryoshka sizes that do not fit the batch and the model."""
    c = cfg.contrastive
    chunks = gradcache_chunks(cfg)
    mean_len = (c.max_query_length + (1 + c.hard_negatives) * c.max_doc_length) / (
        2 + c.hard_negatives)
    recompute = 4 / 3 if c.chunk_size else 1.0  # GradCache runs every forward twice
    return (contrastive_loss_fn(cfg.model, c, mesh),
            cached_grad_fn(cfg.model, c, mesh, chunks) if c.chunk_size else None,
            recompute * encoder_flops_per_token(cfg.model, int(mean_len)))


def contrastive_task(cfg: TrainConfig, mesh: Mesh | None = None) -> tuple[Any, dict]:
    """The contrastive Task (plain or GradCache step, retrieval eval with the BM25 line) and
    facts about its data."""
    from jbert.data.hub import locate
    from jbert.data.pair_batches import MultiSourceBatcher, PairBatcher, load_pairs
    from jbert.data.tokenizer import load_tokenizer
    from jbert.evaluation.beir import pairs_to_sets
    from jbert.evaluation.retrieval import SetEvaluator, logged_metrics, named_evaluators
    from jbert.training.trainer import Task

    c = cfg.contrastive
    # The step first: a chunk size or Matryoshka sizes that do not fit stop the run here.
    loss_fn, grad_fn, flops_per_token = contrastive_step_fns(cfg, mesh)
    root = Path(cfg.data.dir)
    if not root.is_dir():  # always local: never tried as a hub name
        raise FileNotFoundError(f"data.dir={cfg.data.dir}: no such directory (build one with "
                                f"`python -m train.prepare_corpus --out {cfg.data.dir}`)")
    tokenizer = load_tokenizer(root / "tokenizer")
    # Evaluation first: a bad `eval_sets` entry stops the run before mining writes its cache.
    held_out = load_pairs(locate(c.eval_pairs or root / "pairs",
                                 f"contrastive.eval_pairs: {c.eval_pairs}" if c.eval_pairs
                                 else f"data.dir: {root / 'pairs'}", inside="test.jsonl"), "test")
    sets = pairs_to_sets(held_out, c.eval_max_pairs, seed=cfg.data.seed)
    # Tokenised (after the run's prompts) and compiled once; sizes reported per Matryoshka dim.
    eval_kwargs = dict(max_query_length=c.max_query_length, max_doc_length=c.max_doc_length,
                       query_prompt=c.query_prompt, doc_prompt=c.doc_prompt,
                       dims=c.matryoshka_dims)
    evaluator = SetEvaluator(cfg.model, tokenizer, sets, **eval_kwargs)
    bm25 = evaluator()  # BM25 alone: the reference line, the same at every eval
    # The user's own sets (`contrastive.eval_sets`), each logged under its name.
    named = named_evaluators(c.eval_sets, cfg.model, tokenizer, max_queries=c.eval_max_pairs,
                             seed=cfg.data.seed, reserved=[rs.name for rs in sets],
                             **eval_kwargs)
    sources = load_sources(cfg, root)

    chunks = gradcache_chunks(cfg)
    pack_rows = None
    if c.pack:
        processes = jax.process_count()
        batch_devices = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        # Global rows split into the GradCache chunks, each over the batch devices.
        multiple = chunks * batch_devices
        pack_rows = plan_pack_rows(sources, tokenizer, c, cfg.data.batch_size // processes,
                                   multiple // np.gcd(multiple, processes), seed=cfg.data.seed)

    def train_data(process_index, process_count, state):
        batchers = [PairBatcher(pairs, cfg.data.batch_size, source=name, seed=cfg.data.seed,
                                process_index=process_index, process_count=process_count)
                    for name, pairs in sources.items()]
        batcher = (batchers[0] if len(batchers) == 1
                   else MultiSourceBatcher(batchers, seed=cfg.data.seed))
        tokenized = TokenizedPairs(batcher, tokenizer, c, pack_rows=pack_rows,
                                   process_index=process_index, process_count=process_count)
        if state is not None:
            tokenized.set_state(state)
        return tokenized

    def evaluate(params) -> dict[str, float]:
        out = logged_metrics(evaluator(params, linear=False)) if sets else {}
        for name, ev in named.items():  # one set (a BEIR dir): its macro keys say it all
            out.update(logged_metrics(ev(params, linear=False), f"{name}/", len(ev.sets) > 1))
        return out

    task = Task(head=HEAD, loss_fn=loss_fn, train_data=train_data, evaluate=evaluate,
                summarize=summarize, grad_fn=grad_fn, flops_per_token=flops_per_token)
    facts = {"data_dir": str(root), "train_pairs": {k: len(v) for k, v in sources.items()},
             "eval_sets": bm25["sizes"], **logged_metrics(bm25)}
    for name, ev in named.items():
        alone = ev()  # BM25 on the named set
        facts[f"{name}/eval_sets"] = alone["sizes"]
        facts.update(logged_metrics(alone, f"{name}/", len(ev.sets) > 1))
    if pack_rows is not None:
        facts["pack_rows"] = pack_rows  # per process, for `data.batch_size` pairs
    return task, facts
