"""GradCache: the contrastive gradient with the memory of one chunk of activations.

The loss needs every embedding of the global batch at once, the encoder's activations need not:
embed in chunks without keeping activations, take the loss's gradient with respect to the
embeddings, then re-run each chunk under `jax.vjp` with those cotangents. The result equals
the plain step's gradient (`tests/test_contrastive.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jbert.errors import ConfigError
from jbert.model.config import JinaBertConfig
from jbert.ops.sharding import BATCH_AXES
from jbert.tasks.contrastive.loss import (
    batch_groups,
    batch_loss_sums,
    batch_tokens,
    dropout_key,
    embed_rows,
    group_rows,
    group_segments,
    loss_sizes,
    temperature,
)
from jbert.training.config import ContrastiveConfig
from jbert.training.step import Batch, GradFn, strided_split

# The parameters the encoder pass reads: the encoder and the sparse head (when there is one).
ENCODED = ("bert", "sparse")


def _chunked(x_BX: jax.Array, chunks: int, mesh: Mesh | None) -> jax.Array:
    """[B, ...] -> [chunks, B / chunks, ...] by `strided_split`, pinned to the batch axes."""
    x_NcX = strided_split(x_BX, chunks, f"{chunks} GradCache chunks")
    if mesh is not None:
        x_NcX = lax.with_sharding_constraint(x_NcX, NamedSharding(mesh, P(None, BATCH_AXES)))
    return x_NcX


def _unchunked(x_NcX: jax.Array) -> jax.Array:
    return jnp.swapaxes(x_NcX, 0, 1).reshape(-1, *x_NcX.shape[2:])


def cached_grad_fn(config: JinaBertConfig, cfg: ContrastiveConfig,
                   mesh: Mesh | None = None, chunks: int | None = None,
                   sparse_slots: int | None = None) -> GradFn:
    """GradCache: the gradient of the plain loss with memory for one chunk of activations.

    1. embed every chunk of rows without keeping activations (lax.map);
    2. the loss and its gradient with respect to the embeddings (and the temperature);
    3. per chunk, re-run the encoder under `jax.vjp` with those embedding cotangents and sum
       the parameter gradients (lax.scan). Dropout keys depend only on (group, chunk), so the
       re-run sees the same masks as step 1.

    `chunks` splits every group's rows in that many parts (packed batches: the pairs' global
    batch over `chunk_size`); by default the query rows over `cfg.chunk_size`. `sparse_slots`:
    see `loss.batch_loss_sums`.
    """
    if cfg.chunk_size <= 0:
        raise ConfigError(f"contrastive.chunk_size={cfg.chunk_size}: GradCache needs a chunk "
                          "size > 0")
    loss_sizes(cfg, config.hidden_size)

    def grad_fn(params, batch: Batch, dropout_rng):
        # What the encoder pass depends on (the encoder, the sparse head if any) is re-run per
        # chunk; the rest (the temperature) only enters the loss.
        encoder = {k: params[k] for k in ENCODED if k in params}
        rest = {k: v for k, v in params.items() if k not in ENCODED}
        n_chunks = chunks or batch["query_ids"].shape[0] // cfg.chunk_size
        groups = batch_groups(batch)
        # Chunk c of the group with fold-in index i has dropout key fold_in(rng, i * n + c).
        inputs = {k: (jax.tree.map(lambda x: _chunked(x, n_chunks, mesh), group_rows(batch, k)),
                      jnp.arange(n_chunks) + i * n_chunks) for k, i in groups}

        def embed_chunk(enc, k, rows, index):
            return embed_rows(config, enc, rows, group_segments(batch, k),
                              dropout_key(dropout_rng, index))

        emb = {k: jax.tree.map(_unchunked, lax.map(
                   lambda xs, k=k: embed_chunk(encoder, k, *xs), inputs[k]))
               for k, _ in groups}

        def loss_of_embeddings(emb, rest):
            sums = batch_loss_sums(emb, batch, temperature(cfg, rest), cfg, mesh, sparse_slots)
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
            g_chunks = jax.tree.map(lambda g: _chunked(g, n_chunks, mesh), g_emb[k])
            g_encoder, _ = lax.scan(backward(k), g_encoder, (*inputs[k], g_chunks))
        sums["tokens"] = batch_tokens(batch)
        return {**g_rest, **g_encoder}, sums

    return grad_fn
