"""The JinaBERT encoder in Flax NNX.

Shape letters used in names and einsum strings across jbert: B batch, L length, D model (hidden),
H heads, K head dim, F MLP width, V vocab, N labels, C choices.

Activations carry logical axis names too (`constrain`, the same rules table as the weights): the
hidden states between layers are `HIDDEN`, q/k/v and the attention context `HEADS`, the MLP's
hidden activations `MLP`.

Module and attribute names follow the Hugging Face tensor names (`embeddings.LayerNorm`,
`encoder.layer.3.attention.output.dense`...), so the checkpoint key map in `jbert.hf.keys` is a
rename of a few words (`self_attn` is HF's `self`, `kernel` is `weight` transposed). Every weight
carries logical axis names, mapped to mesh axes by `jbert.ops.sharding.LOGICAL_AXIS_RULES`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jbert.model.config import JinaBertConfig
from jbert.ops.alibi import alibi_slopes
from jbert.ops.attention import attention, resolve_impl
from jbert.ops.sharding import constrain

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}
# Logical axes of the activations (`jbert.ops.sharding.LOGICAL_AXIS_RULES`).
HIDDEN = ("batch", "length", "act_embed")
HEADS = ("batch", "length", "heads", "head_dim")
MLP = ("batch", "length", "mlp")
GLU_ACTIVATIONS = {"glu": jax.nn.sigmoid, "geglu": ACTIVATIONS["gelu"], "reglu": jax.nn.relu}
# Activations a layer names (`checkpoint_name`) for the policies below to keep: the attention's
# q, k and v (after the QK norms), its context (the heads' output, before the output dense) and
# the MLP's input (the attention block's normalised output).
QUERY, KEY, VALUE, CONTEXT, MLP_IN = "query", "key", "value", "context", "mlp_in"
_names = jax.checkpoint_policies.save_only_these_names
# `JinaBertConfig.remat` -> what the backward pass keeps of a layer (`jax.checkpoint` policy):
# `none` keeps everything (no checkpoint), `full` nothing (the layer is recomputed), the dots
# policies keep the matmul results and recompute the rest, the `save_*` ones keep only the named
# activations (as MaxText's `save_qkv_proj`, `save_out_proj`) and recompute everything else.
# Measured at base-code 512 and 8192: docs/architecture.md.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv": _names(QUERY, KEY, VALUE),
    "save_qkv_context": _names(QUERY, KEY, VALUE, CONTEXT),
    "save_mlp_in": _names(MLP_IN),
    "save_qkv_context_mlp_in": _names(QUERY, KEY, VALUE, CONTEXT, MLP_IN),
}


def dtypes(config: JinaBertConfig) -> dict:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


def dense(config: JinaBertConfig, features_in: int, features_out: int, axes: tuple[str, str], *,
          rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    """A Linear with BERT's N(0, initializer_range) init and logical axes on kernel and bias."""
    init = nnx.initializers.normal(config.initializer_range)
    return nnx.Linear(
        features_in, features_out, use_bias=use_bias, rngs=rngs, **dtypes(config),
        kernel_init=nnx.with_partitioning(init, axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros, axes[1:]))


def layer_norm(config: JinaBertConfig, features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x-mean)^2], as PyTorch computes it, for last-bit parity.
    return nnx.LayerNorm(
        features, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs,
        scale_metadata={"out_sharding": ("norm",)}, bias_metadata={"out_sharding": ("norm",)},
        **dtypes(config))


class Embeddings(nnx.Module):
    """Word plus token-type embeddings, LayerNorm, dropout. No position embeddings (ALiBi)."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.initializer_range)
        self.word_embeddings = nnx.Embed(
            config.vocab_size, config.hidden_size, rngs=rngs, **dtypes(config),
            embedding_init=nnx.with_partitioning(init, ("vocab", "embed")))
        self.token_type_embeddings = nnx.Embed(
            config.type_vocab_size, config.hidden_size, rngs=rngs, **dtypes(config),
            embedding_init=nnx.with_partitioning(init, ("type_vocab", "embed")))
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)

    def __call__(self, input_ids_BL, token_type_ids_BL, *, deterministic, rngs):
        x_BLD = self.word_embeddings(input_ids_BL) + self.token_type_embeddings(token_type_ids_BL)
        return self.dropout(self.LayerNorm(x_BLD), deterministic=deterministic, rngs=rngs)


class SelfAttention(nnx.Module):
    """q, k, v projections (HF `attention.self`), with the code model's LayerNorms on q and k."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.query = dense(config, d, d, ("embed", "heads"), rngs=rngs)
        self.key = dense(config, d, d, ("embed", "heads"), rngs=rngs)
        self.value = dense(config, d, d, ("embed", "heads"), rngs=rngs)
        if config.qk_norm:
            self.layer_norm_q = layer_norm(config, d, rngs=rngs)
            self.layer_norm_k = layer_norm(config, d, rngs=rngs)
        self.config = config

    def __call__(self, x_BLD, attention_mask_BL, segment_ids_BL, *, causal, deterministic, rngs):
        config = self.config
        q_BLD, k_BLD, v_BLD = self.query(x_BLD), self.key(x_BLD), self.value(x_BLD)
        if config.qk_norm:
            q_BLD, k_BLD = self.layer_norm_q(q_BLD), self.layer_norm_k(k_BLD)
        q_BLD, k_BLD, v_BLD = (checkpoint_name(q_BLD, QUERY), checkpoint_name(k_BLD, KEY),
                               checkpoint_name(v_BLD, VALUE))
        b, length, _ = x_BLD.shape
        split = (b, length, config.num_attention_heads, config.head_dim)
        dropout = 0.0 if deterministic else config.attention_probs_dropout_prob
        dropout_rng = rngs.dropout() if dropout > 0.0 and rngs is not None else None
        q_BLHK, k_BLHK, v_BLHK = (constrain(x.reshape(split), HEADS) for x in (q_BLD, k_BLD, v_BLD))
        ctx_BLHK = attention(
            q_BLHK, k_BLHK, v_BLHK,
            jnp.asarray(alibi_slopes(config.num_attention_heads)), attention_mask_BL,
            segment_ids_BL, causal=causal, impl=config.attention_impl,
            block_size=config.attention_block_size, dropout_rate=dropout, dropout_rng=dropout_rng)
        return checkpoint_name(constrain(ctx_BLHK, HEADS).reshape(b, length, -1), CONTEXT)


class AttentionOutput(nnx.Module):
    """`dense`, dropout, post-norm `LayerNorm(x + residual)`; also BERT's `output` block."""

    def __init__(self, config: JinaBertConfig, features_in: int, axes: tuple[str, str], *,
                 rngs: nnx.Rngs):
        self.dense = dense(config, features_in, config.hidden_size, axes, rngs=rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)

    def __call__(self, h, residual_BLD, *, deterministic, rngs):
        h_BLD = self.dropout(self.dense(h), deterministic=deterministic, rngs=rngs)
        return self.LayerNorm(h_BLD + residual_BLD)


class Attention(nnx.Module):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.self_attn = SelfAttention(config, rngs=rngs)
        self.output = AttentionOutput(config, config.hidden_size, ("heads", "embed"), rngs=rngs)

    def __call__(self, x_BLD, attention_mask_BL, segment_ids_BL, *, causal, deterministic, rngs):
        ctx_BLD = self.self_attn(x_BLD, attention_mask_BL, segment_ids_BL, causal=causal,
                                 deterministic=deterministic, rngs=rngs)
        return self.output(ctx_BLD, x_BLD, deterministic=deterministic, rngs=rngs)


class GatedMLP(nnx.Module):
    """Base/small layout: `gated_layers` [D -> 2F], act(first F) * second F, `wo`, `layernorm`."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gated_layers = dense(config, d, 2 * f, ("embed", "mlp"), rngs=rngs, use_bias=False)
        self.wo = dense(config, f, d, ("mlp", "embed"), rngs=rngs)
        self.layernorm = layer_norm(config, d, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)
        self.act = GLU_ACTIVATIONS[config.feed_forward_type]
        self.width = f

    def __call__(self, x_BLD, *, deterministic, rngs):
        h_BLF2 = self.gated_layers(x_BLD)
        h_BLF = self.act(h_BLF2[..., : self.width]) * h_BLF2[..., self.width :]
        h_BLF = self.dropout(constrain(h_BLF, MLP), deterministic=deterministic, rngs=rngs)
        return self.layernorm(self.wo(h_BLF) + x_BLD)


class UpGatedMLP(nnx.Module):
    """Code layout: `up_gated_layer` [D -> 2F], first F linear times act(second F), `down_layer`.

    The residual and `layer_norm_2` around it belong to the layer, as in the checkpoint.
    """

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.up_gated_layer = dense(config, d, 2 * f, ("embed", "mlp"), rngs=rngs, use_bias=False)
        self.down_layer = dense(config, f, d, ("mlp", "embed"), rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)
        self.act = GLU_ACTIVATIONS[config.feed_forward_type]
        self.width = f

    def __call__(self, x_BLD, *, deterministic, rngs):
        h_BLF2 = self.up_gated_layer(x_BLD)
        h_BLF = constrain(h_BLF2[..., : self.width] * self.act(h_BLF2[..., self.width :]), MLP)
        return self.dropout(self.down_layer(h_BLF), deterministic=deterministic, rngs=rngs)


class Intermediate(nnx.Module):
    """BERT's original feed-forward up-projection (`intermediate.dense` + activation)."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.intermediate_size,
                           ("embed", "mlp"), rngs=rngs)
        self.act = ACTIVATIONS[config.hidden_act]

    def __call__(self, x_BLD):
        return constrain(self.act(self.dense(x_BLD)), MLP)


class Layer(nnx.Module):
    """One post-LayerNorm encoder block in the layout the config names."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.attention = Attention(config, rngs=rngs)
        if config.qk_norm:
            self.layer_norm_1 = layer_norm(config, config.hidden_size, rngs=rngs)
            self.mlp = UpGatedMLP(config, rngs=rngs)
            self.layer_norm_2 = layer_norm(config, config.hidden_size, rngs=rngs)
        elif config.feed_forward_type == "original":
            self.intermediate = Intermediate(config, rngs=rngs)
            self.output = AttentionOutput(config, config.intermediate_size, ("mlp", "embed"),
                                          rngs=rngs)
        else:
            self.mlp = GatedMLP(config, rngs=rngs)
        self.config = config

    def __call__(self, x_BLD, attention_mask_BL, segment_ids_BL, *, causal, deterministic, rngs):
        kw = dict(deterministic=deterministic, rngs=rngs)
        a_BLD = self.attention(x_BLD, attention_mask_BL, segment_ids_BL, causal=causal, **kw)
        if self.config.qk_norm:
            r_BLD = checkpoint_name(self.layer_norm_1(x_BLD + a_BLD), MLP_IN)
            return self.layer_norm_2(r_BLD + self.mlp(r_BLD, **kw))
        a_BLD = checkpoint_name(a_BLD, MLP_IN)
        if self.config.feed_forward_type == "original":
            return self.output(self.intermediate(a_BLD), a_BLD, **kw)
        return self.mlp(a_BLD, **kw)


class Encoder(nnx.Module):
    """The layers as one stacked `Layer` (every weight [num_hidden_layers, ...], logical axis
    `layers`), run by one `lax.scan`: the step compiles one layer body whatever the depth.

    `config.remat` names the rematerialisation policy of that body (`REMAT_POLICIES`);
    `scan_layers=False` unrolls the same body instead (compile time grows with depth). The HF
    per-layer names (`encoder.layer.3....`) exist only at the checkpoint boundary, where
    `jbert.hf.keys` unstacks and stacks.
    """

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=config.num_hidden_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def stacked(rngs: nnx.Rngs) -> Layer:
            return Layer(config, rngs=rngs)

        self.layer = stacked(rngs)
        self.config = config

    def __call__(self, x_BLD, attention_mask_BL, segment_ids_BL, *, causal, deterministic, rngs):
        graphdef, layers = nnx.split(self.layer)
        dropout = not deterministic and rngs is not None
        # One dropout key per layer, scanned with its weights (a fresh stream inside the body).
        keys = jax.random.split(rngs.dropout(), self.config.num_hidden_layers) if dropout else None

        def body(x_BLD, weights_and_key):
            weights, key = weights_and_key
            layer = nnx.merge(graphdef, weights)
            x_BLD = layer(x_BLD, attention_mask_BL, segment_ids_BL, causal=causal,
                          deterministic=deterministic,
                          rngs=None if key is None else nnx.Rngs(dropout=key))
            return constrain(x_BLD, HIDDEN), None

        policy = REMAT_POLICIES[self.config.remat]
        if self.config.remat != "none":
            body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        x_BLD = constrain(x_BLD, HIDDEN)
        if not self.config.scan_layers:  # unrolled: one copy of the body per layer
            for i in range(self.config.num_hidden_layers):
                x_BLD, _ = body(x_BLD, jax.tree.map(lambda a, i=i: a[i], (layers, keys)))
            return x_BLD
        x_BLD, _ = jax.lax.scan(body, x_BLD, (layers, keys))
        return x_BLD


class Pooler(nnx.Module):
    """`pooler.dense` + tanh on the first token."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.hidden_size, ("embed", "embed_out"),
                           rngs=rngs)

    def __call__(self, x_BLD):
        return jnp.tanh(self.dense(x_BLD[:, 0]))


class JinaBertModel(nnx.Module):
    """The encoder with optional pooler: `last_hidden_state` [B, L, D], `pooler_output` [B, D]."""

    def __init__(self, config: JinaBertConfig, *, add_pooling_layer: bool = True,
                 rngs: nnx.Rngs):
        self.embeddings = Embeddings(config, rngs=rngs)
        self.encoder = Encoder(config, rngs=rngs)
        self.pooler = Pooler(config, rngs=rngs) if add_pooling_layer else None
        self.config = config

    def __call__(self, input_ids_BL: jax.Array, attention_mask_BL: jax.Array | None = None,
                 token_type_ids_BL: jax.Array | None = None,
                 segment_ids_BL: jax.Array | None = None, *, causal: bool = False,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
        if input_ids_BL.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids_BL.shape}")
        if not deterministic and rngs is None and self.config.hidden_dropout_prob > 0:
            raise ValueError("training mode (deterministic=False) needs rngs for dropout")
        if attention_mask_BL is None:
            attention_mask_BL = jnp.ones(input_ids_BL.shape, jnp.int32)
        if token_type_ids_BL is None:
            token_type_ids_BL = jnp.zeros(input_ids_BL.shape, jnp.int32)
        x_BLD = self.embeddings(input_ids_BL, token_type_ids_BL, deterministic=deterministic,
                                rngs=rngs)
        x_BLD = self.encoder(x_BLD, attention_mask_BL, segment_ids_BL, causal=causal,
                             deterministic=deterministic, rngs=rngs)
        out = {"last_hidden_state": x_BLD}
        if self.pooler is not None:
            out["pooler_output"] = self.pooler(x_BLD)
        return out


def attention_path(config: JinaBertConfig, length: int) -> str:
    """The attention path the model takes at this length (for logs and docs)."""
    return resolve_impl(config.attention_impl, length, config.attention_block_size)
