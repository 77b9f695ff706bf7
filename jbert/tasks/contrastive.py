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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jbert.model import functional
from jbert.model.config import JinaBertConfig
from jbert.ops.sharding import BATCH_AXES
from jbert.training.config import ContrastiveConfig, TrainConfig
from jbert.training.step import Batch, GradFn, LossFn, strided_split

HEAD = "contrastive"
# A learned temperature is kept in [MIN, MAX]: near zero the logits and gradients explode.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.005, 1.0
# (batch key prefix, which texts) in the order they are embedded.
GROUPS = (("query", 0), ("doc", 1), ("neg", 2))


def temperature(cfg: ContrastiveConfig, params: Any) -> jax.Array:
    """The InfoNCE temperature: fixed, or `cfg.temperature * exp(learned log-scale)`."""
    if not cfg.learn_temperature:
        return jnp.asarray(cfg.temperature, jnp.float32)
    tau = cfg.temperature * jnp.exp(params["temperature_log_scale"].astype(jnp.float32))
    return jnp.clip(tau, MIN_TEMPERATURE, MAX_TEMPERATURE)


def _info_nce_shard(q_bD, d_bD, n_mD, tau, *, axes, symmetric):
    """Loss sums for this device's queries against all documents of the global batch.

    With `axes=None` the shard is the whole batch (the single-device reference).
    """
    b = q_bD.shape[0]
    if axes is None:
        d_BD, n_MD, q_BD, first = d_bD, n_mD, q_bD, 0
    else:
        # The global gather: every device sees every positive and every hard negative.
        d_BD = lax.all_gather(d_bD, axes, axis=0, tiled=True)
        n_MD = None if n_mD is None else lax.all_gather(n_mD, axes, axis=0, tiled=True)
        q_BD = lax.all_gather(q_bD, axes, axis=0, tiled=True) if symmetric else None
        first = lax.axis_index(axes) * b  # global index of this device's first pair
    cand_CD = d_BD if n_MD is None else jnp.concatenate([d_BD, n_MD], axis=0)
    sim_bC = jnp.einsum("bd,cd->bc", q_bD, cand_CD, preferred_element_type=jnp.float32)
    # A mask, not a gather: query i's positive is candidate first + i.
    pos_bC = (first + jnp.arange(b))[:, None] == jnp.arange(cand_CD.shape[0])[None, :]
    logits_bC = sim_bC / tau
    pos_logit_b = jnp.sum(jnp.where(pos_bC, logits_bC, 0.0), axis=1)
    loss_b = jax.nn.logsumexp(logits_bC, axis=1) - pos_logit_b
    if symmetric:  # code -> query: this device's documents against all queries
        rev_bB = jnp.einsum("bd,cd->bc", d_bD, q_BD, preferred_element_type=jnp.float32) / tau
        rev_pos_b = jnp.sum(jnp.where(pos_bC[:, :q_BD.shape[0]], rev_bB, 0.0), axis=1)
        loss_b = 0.5 * (loss_b + jax.nn.logsumexp(rev_bB, axis=1) - rev_pos_b)
    sim_pos_b = jnp.sum(jnp.where(pos_bC, sim_bC, 0.0), axis=1)
    sim_neg_bC = jnp.where(pos_bC, -jnp.inf, sim_bC)
    sums = {
        "loss_sum": jnp.sum(loss_b),
        "correct": jnp.sum(jnp.argmax(logits_bC, axis=1) == first + jnp.arange(b)),
        "pos_sim_sum": jnp.sum(sim_pos_b),
        "neg_sim_sum": jnp.sum(jnp.where(pos_bC, 0.0, sim_bC)),
        "hardest_neg_sim_sum": jnp.sum(jnp.max(sim_neg_bC, axis=1)),
        "neg_count": jnp.asarray(b * (cand_CD.shape[0] - 1), jnp.float32),
    }
    if axes is not None:
        sums = lax.psum(sums, axes)
    return sums


def info_nce(q_BD: jax.Array, d_BD: jax.Array, n_MD: jax.Array | None, tau: jax.Array, *,
             symmetric: bool = False, mesh: Mesh | None = None) -> dict[str, jax.Array]:
    """InfoNCE sums over the global batch: `loss_sum` (mean over pairs = loss_sum / B), the
    in-batch accuracy and similarity statistics. With `mesh`, written per device in shard_map."""
    if mesh is None:
        sums = _info_nce_shard(q_BD, d_BD, n_MD, tau, axes=None, symmetric=symmetric)
    else:
        rows = P(BATCH_AXES)
        body = functools.partial(_info_nce_shard, axes=BATCH_AXES, symmetric=symmetric)
        if n_MD is None:
            body = functools.partial(lambda f, q, d, t: f(q, d, None, t), body)
            args, specs = (q_BD, d_BD, tau), (rows, rows, P())
        else:
            args, specs = (q_BD, d_BD, n_MD, tau), (rows, rows, rows, P())
        sums = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P())(*args)
    return {**sums, "count": jnp.asarray(q_BD.shape[0], jnp.float32),
            "temperature_sum": tau.astype(jnp.float32), "calls": jnp.ones((), jnp.float32)}


def _embed(config: JinaBertConfig, params: Any, ids_BL, mask_BL, rng) -> jax.Array:
    return functional.embed(config, params, ids_BL, mask_BL, dropout_rng=rng)


def _groups(batch: Batch) -> list[tuple[str, int]]:
    return [(k, i) for k, i in GROUPS if f"{k}_ids" in batch]


def _tokens(batch: Batch) -> jax.Array:
    return sum(jnp.sum(batch[f"{k}_mask"]) for k, _ in _groups(batch))


def _key(rng, index):
    return None if rng is None else jax.random.fold_in(rng, index)


def contrastive_loss_fn(config: JinaBertConfig, cfg: ContrastiveConfig,
                        mesh: Mesh | None = None) -> LossFn:
    """The plain step's loss: embed queries, positives and negatives, InfoNCE over the batch."""

    def loss(params, batch: Batch, dropout_rng):
        emb = {k: _embed(config, params, batch[f"{k}_ids"], batch[f"{k}_mask"],
                         _key(dropout_rng, i)) for k, i in _groups(batch)}
        sums = info_nce(emb["query"], emb["doc"], emb.get("neg"), temperature(cfg, params),
                        symmetric=cfg.symmetric, mesh=mesh)
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
                   mesh: Mesh | None = None) -> GradFn:
    """GradCache: the gradient of the plain loss with memory for one chunk of activations.

    1. embed every chunk of `cfg.chunk_size` rows without keeping activations (lax.map);
    2. the loss and its gradient with respect to the embeddings (and the temperature);
    3. per chunk, re-run the encoder under `jax.vjp` with those embedding cotangents and sum
       the parameter gradients (lax.scan). Dropout keys depend only on (group, chunk), so the
       re-run sees the same masks as step 1.
    """
    if cfg.chunk_size <= 0:
        raise ValueError("cached_grad_fn needs contrastive.chunk_size > 0")

    def grad_fn(params, batch: Batch, dropout_rng):
        encoder = params["bert"]
        rest = {k: v for k, v in params.items() if k != "bert"}
        chunks = batch["query_ids"].shape[0] // cfg.chunk_size
        groups = _groups(batch)
        inputs = {k: (_chunked(batch[f"{k}_ids"], chunks, mesh),
                      _chunked(batch[f"{k}_mask"], chunks, mesh),
                      jnp.arange(chunks) + i * chunks) for k, i in groups}

        def embed_chunk(enc, ids_cL, mask_cL, index):
            return _embed(config, {"bert": enc}, ids_cL, mask_cL, _key(dropout_rng, index))

        emb = {k: _unchunked(lax.map(lambda xs: embed_chunk(encoder, *xs), inputs[k]))
               for k, _ in groups}

        def loss_of_embeddings(emb, rest):
            sums = info_nce(emb["query"], emb["doc"], emb.get("neg"), temperature(cfg, rest),
                            symmetric=cfg.symmetric, mesh=mesh)
            return sums["loss_sum"], sums

        (_, sums), (g_emb, g_rest) = jax.value_and_grad(
            loss_of_embeddings, argnums=(0, 1), has_aux=True)(emb, rest)

        def backward(acc, xs):
            ids_cL, mask_cL, index, g_cD = xs
            _, vjp = jax.vjp(lambda enc: embed_chunk(enc, ids_cL, mask_cL, index), encoder)
            return jax.tree.map(jnp.add, acc, vjp(g_cD)[0]), None

        g_encoder = jax.tree.map(jnp.zeros_like, encoder)
        for k, _ in groups:
            g_encoder, _ = lax.scan(backward, g_encoder,
                                    (*inputs[k], _chunked(g_emb[k], chunks, mesh)))
        sums["tokens"] = _tokens(batch)
        return {**g_rest, "bert": g_encoder}, sums

    return grad_fn


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Logged means: loss, in-batch accuracy, similarity of positives and of negatives (mean and
    the hardest per query), and the temperature."""
    count = max(sums.get("count", 1.0), 1.0)
    return {
        "loss": sums["loss_sum"] / count,
        "accuracy": sums["correct"] / count,
        "pos_sim": sums["pos_sim_sum"] / count,
        "neg_sim": sums["neg_sim_sum"] / max(sums["neg_count"], 1.0),
        "hardest_neg_sim": sums["hardest_neg_sim_sum"] / count,
        "temperature": sums["temperature_sum"] / max(sums["calls"], 1.0),
    }


# -- data ------------------------------------------------------------------------------------


class TokenizedPairs:
    """Raw pair batches (`PairBatcher` or `MultiSourceBatcher`) -> fixed-shape token arrays."""

    def __init__(self, batcher: Iterator[dict], tokenizer: Any, cfg: ContrastiveConfig):
        self.batcher, self.tokenizer, self.cfg = batcher, tokenizer, cfg

    def __next__(self) -> dict[str, np.ndarray]:
        from jbert.data.tokenizer import tokenize_texts

        raw = next(self.batcher)
        cfg = self.cfg
        out = {}
        texts = {"query": (raw["query"], cfg.max_query_length),
                 "doc": (raw["positive"], cfg.max_doc_length)}
        if cfg.hard_negatives:
            texts["neg"] = ([t for negs in raw["negatives"] for t in negs[:cfg.hard_negatives]],
                            cfg.max_doc_length)
        for key, (batch_texts, length) in texts.items():
            arrays = tokenize_texts(self.tokenizer, batch_texts, length, pad_to=length)
            out[f"{key}_ids"], out[f"{key}_mask"] = arrays["input_ids"], arrays["attention_mask"]
        return out

    def get_state(self) -> dict:
        return self.batcher.get_state()


def load_sources(cfg: TrainConfig, root: Path) -> dict[str, list[dict]]:
    """Training pairs per source (`contrastive.sources`, default `<data.dir>/pairs`), with hard
    negatives mined by BM25 (cached beside the pairs) where the pairs have fewer than asked
    for."""
    from jbert.data.pair_batches import load_pairs
    from jbert.tasks.mining import cached_bm25_negatives

    specs = [s.strip() for s in cfg.contrastive.sources.split(",") if s.strip()]
    specs = specs or [str(root / "pairs")]
    sources = {}
    for spec in specs:
        pairs = load_pairs(spec, "train")
        if cfg.contrastive.hard_negatives:
            pairs = cached_bm25_negatives(pairs, cfg.contrastive.hard_negatives, spec)
            pairs = [p for p in pairs if len(p["negatives"]) >= cfg.contrastive.hard_negatives]
        name = Path(spec).name or spec
        if name in sources:  # batchers, their state and the logs know a source by this name
            raise ValueError(f"contrastive.sources: two sources are named {name!r} "
                             f"({cfg.contrastive.sources!r}); give their folders distinct names")
        sources[name] = pairs
    return sources


def contrastive_task(cfg: TrainConfig, mesh: Mesh | None = None) -> tuple[Any, dict]:
    """The contrastive Task (plain or GradCache step, retrieval eval with the BM25 line) and
    facts about its data."""
    from jbert.data.pair_batches import MultiSourceBatcher, PairBatcher, load_pairs
    from jbert.data.tokenizer import load_tokenizer
    from jbert.evaluation.beir import pairs_to_sets
    from jbert.evaluation.retrieval import SetEvaluator, logged_metrics, named_evaluators
    from jbert.training.flops import encoder_flops_per_token
    from jbert.training.trainer import Task

    c = cfg.contrastive
    if c.chunk_size and cfg.data.batch_size % c.chunk_size:
        raise ValueError(f"contrastive.chunk_size={c.chunk_size} does not divide "
                         f"data.batch_size={cfg.data.batch_size}")
    root = Path(cfg.data.dir)
    tokenizer = load_tokenizer(root / "tokenizer")
    sources = load_sources(cfg, root)

    def train_data(process_index, process_count, state):
        batchers = [PairBatcher(pairs, cfg.data.batch_size, source=name, seed=cfg.data.seed,
                                process_index=process_index, process_count=process_count)
                    for name, pairs in sources.items()]
        batcher = (batchers[0] if len(batchers) == 1
                   else MultiSourceBatcher(batchers, seed=cfg.data.seed))
        if state is not None:
            batcher.set_state(state)
        return TokenizedPairs(batcher, tokenizer, c)

    held_out = load_pairs(c.eval_pairs or root / "pairs", "test")
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

    def evaluate(params) -> dict[str, float]:
        out = logged_metrics(evaluator(params, linear=False)) if sets else {}
        for name, ev in named.items():  # one set (a BEIR dir): its macro keys say it all
            out.update(logged_metrics(ev(params, linear=False), f"{name}/", len(ev.sets) > 1))
        return out

    mean_len = (c.max_query_length + (1 + c.hard_negatives) * c.max_doc_length) / (
        2 + c.hard_negatives)
    recompute = 4 / 3 if c.chunk_size else 1.0  # GradCache runs every forward twice
    task = Task(
        head=HEAD, loss_fn=contrastive_loss_fn(cfg.model, c, mesh), train_data=train_data,
        evaluate=evaluate, summarize=summarize,
        grad_fn=cached_grad_fn(cfg.model, c, mesh) if c.chunk_size else None,
        flops_per_token=recompute * encoder_flops_per_token(cfg.model, int(mean_len)))
    facts = {"data_dir": str(root), "train_pairs": {k: len(v) for k, v in sources.items()},
             "eval_sets": bm25["sizes"], **logged_metrics(bm25)}
    for name, ev in named.items():
        alone = ev()  # BM25 on the named set
        facts[f"{name}/eval_sets"] = alone["sizes"]
        facts.update(logged_metrics(alone, f"{name}/", len(ev.sets) > 1))
    return task, facts
