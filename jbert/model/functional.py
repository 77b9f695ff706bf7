"""The model used functionally: parameters are a plain nested dict, every call a pure function.

The NNX module graph is built once per (config, head) and cached; `apply` merges it with the
parameters inside whatever transformation calls it (jit, grad, shard_map), so train steps stay
pure `(params, batch) -> outputs` functions. This is the only place that builds modules.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jbert.model.config import JinaBertConfig
from jbert.model.heads import (
    SparseTermWeights,
    build,
    l2_normalize,
    mean_pool,
    segment_mean_pool,
    vocab_max_pool,
)

Params = dict[str, Any]


@functools.lru_cache(maxsize=64)
def _graph(config: JinaBertConfig, head: str) -> tuple[nnx.GraphDef, Params, Params]:
    """(graphdef, abstract params, logical axes) of a head, from shapes alone."""
    # Built with no mesh current: under the trainer's `jax.set_mesh`, `nnx.eval_shape` would
    # read the weights' logical axis names as mesh axes. Shardings come from the rules table.
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
        abstract = nnx.eval_shape(lambda: build(config, head, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    axes = jax.tree.map(lambda spec: tuple(spec), nnx.to_pure_dict(nnx.get_partition_spec(state)),
                        is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return graphdef, nnx.to_pure_dict(state), axes


def abstract_params(config: JinaBertConfig, head: str = "base") -> Params:
    """`jax.ShapeDtypeStruct`s of the parameters, without allocating them."""
    return _graph(config, head)[1]


def logical_axes(config: JinaBertConfig, head: str = "base") -> Params:
    """For every parameter, the tuple of logical axis names of its dimensions."""
    return _graph(config, head)[2]


def init_params(config: JinaBertConfig, rng: jax.Array, head: str = "base") -> Params:
    """Freshly initialised parameters (BERT init: N(0, initializer_range), zero biases)."""
    return nnx.to_pure_dict(nnx.state(build(config, head, nnx.Rngs(params=rng))))


def module_with_params(config: JinaBertConfig, params: Params, head: str = "base") -> nnx.Module:
    """The head module carrying `params`; call it inside the traced function that owns them."""
    return nnx.merge(_graph(config, head)[0], params)


def apply(config: JinaBertConfig, params: Params, *args: Any, head: str = "base",
          dropout_rng: jax.Array | None = None, **kwargs: Any) -> dict[str, jax.Array]:
    """Runs a head: `apply(config, params, input_ids_BL, attention_mask_BL, ..., head=...)`.

    With `dropout_rng` the call is in training mode (dropout on); without, deterministic.
    """
    model = module_with_params(config, params, head)
    rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
    return model(*args, deterministic=dropout_rng is None, rngs=rngs, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, input_ids_BL, attention_mask_BL, token_type_ids_BL):
    return apply(config, params, input_ids_BL, attention_mask_BL, token_type_ids_BL,
                 head=encoder_head(params))["last_hidden_state"]


def forward(config: JinaBertConfig, params: Params, input_ids: Any, attention_mask: Any = None,
            token_type_ids: Any = None) -> jax.Array:
    """Last hidden states [B, L, D] of the base model; params may carry a head's `bert` subtree."""
    input_ids_BL = jnp.asarray(input_ids, jnp.int32)
    mask_BL = (jnp.ones_like(input_ids_BL) if attention_mask is None
               else jnp.asarray(attention_mask, jnp.int32))
    types_BL = (jnp.zeros_like(input_ids_BL) if token_type_ids is None
                else jnp.asarray(token_type_ids, jnp.int32))
    return _forward(config, encoder_params(params), input_ids_BL, mask_BL, types_BL)


def encoder_params(params: Params) -> Params:
    """The base model's parameters, whether given bare or inside a head (`bert.`)."""
    return params["bert"] if "bert" in params and "embeddings" not in params else params


def transplant_encoder(params: Params, config: JinaBertConfig, head: str) -> Params:
    """The encoder of `params` (bare or inside a head) in a fresh `head`'s parameter tree: the
    head's own weights, and a pooler the encoder lacks (an MLM head has none), start fresh; a
    sparse head both trees have carries over."""
    encoder = encoder_params(params)
    fresh = dict(init_params(config, jax.random.key(0), head))
    if head == "base":
        return {**fresh, **{k: v for k, v in encoder.items() if k in fresh}}
    fresh["bert"] = {**fresh["bert"], **{k: v for k, v in encoder.items() if k in fresh["bert"]}}
    if "sparse" in fresh and sparse_head(params) is not None:  # a sparse head carries over
        fresh["sparse"] = sparse_head(params)
    return fresh


def encoder_head(encoder: Params) -> str:
    """`base` for an encoder with pooler, `encoder` for one without (from an MLM head)."""
    return "base" if "pooler" in encoder else "encoder"


def embed(config: JinaBertConfig, params: Params, input_ids_BL: jax.Array,
          attention_mask_BL: jax.Array, token_type_ids_BL: jax.Array | None = None,
          segment_ids_BL: jax.Array | None = None, *, num_segments: int = 1,
          dropout_rng: jax.Array | None = None, normalize: bool = True) -> jax.Array:
    """Sentence embeddings: mean pooling over each text's tokens, then L2 normalisation.

    One text per row gives [B, D]. With `segment_ids_BL` (texts packed into rows, numbered 1..S,
    0 on padding; attention stays inside a text) it gives [B, S, D] with S = `num_segments`,
    zeros where a row holds fewer texts. ALiBi sees only distances, so a packed text's embedding
    is the one it gets alone.
    """
    return encode(config, encoder_params(params), input_ids_BL, attention_mask_BL,
                  token_type_ids_BL, segment_ids_BL, num_segments=num_segments,
                  dropout_rng=dropout_rng, normalize=normalize)["dense"]


def sparse_head(params: Params) -> Params | None:
    """The sparse head's weights (`heads.SparseTermWeights`) of a contrastive head's params or
    of `{"bert": encoder, "sparse": head}`; None when the model has none."""
    return params.get("sparse") if "bert" in params and "embeddings" not in params else None


def encode(config: JinaBertConfig, params: Params, input_ids_BL: jax.Array,
           attention_mask_BL: jax.Array, token_type_ids_BL: jax.Array | None = None,
           segment_ids_BL: jax.Array | None = None, *, num_segments: int = 1,
           dropout_rng: jax.Array | None = None, normalize: bool = True,
           sparse_texts: int | None = None) -> dict[str, jax.Array]:
    """One encoder pass, every representation the model has: `dense` (`embed`'s) and, when
    `params` carry a sparse head (`sparse_head`), `sparse`, each text's vocabulary-sized vector
    of token weights ([B, V] or [B, S, V] packed, or [sparse_texts, V] packed in row order;
    `heads.vocab_max_pool`)."""
    encoder, head = encoder_params(params), sparse_head(params)
    out = apply(config, encoder, input_ids_BL, attention_mask_BL, token_type_ids_BL,
                segment_ids_BL, head=encoder_head(encoder), dropout_rng=dropout_rng)
    x_BLD = out["last_hidden_state"]
    if segment_ids_BL is None:
        pooled = mean_pool(x_BLD, attention_mask_BL)
    else:
        pooled = segment_mean_pool(x_BLD, segment_ids_BL, num_segments)
    result = {"dense": l2_normalize(pooled) if normalize else pooled}
    if head is not None:
        weights_BL = nnx.merge(_sparse_graph(config), head)(x_BLD, attention_mask_BL)
        result["sparse"] = vocab_max_pool(weights_BL, input_ids_BL, segment_ids_BL,
                                          config.vocab_size, num_segments, sparse_texts)
    return result


@functools.lru_cache(maxsize=64)
def _sparse_graph(config: JinaBertConfig) -> nnx.GraphDef:
    """The sparse head's graphdef, from shapes alone (see `_graph`)."""
    with (jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())),
          nnx.use_eager_sharding(False)):
        abstract = nnx.eval_shape(lambda: SparseTermWeights(config, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]
