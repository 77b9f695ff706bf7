"""Task heads over the encoder, with the outputs and losses of the Transformers JinaBERT port.

Each head holds the encoder as `bert` (HF checkpoints of task heads prefix it with `bert.`) and
returns a dict: the HF output names (`logits`, `prediction_logits`, `start_logits`...) plus
`loss` when labels are given. Mean pooling and L2 normalisation for embeddings live here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jbert.model import losses
from jbert.model.config import JinaBertConfig
from jbert.model.encoder import ACTIVATIONS, JinaBertModel, dense, layer_norm

# -- pooling --------------------------------------------------------------------------------


def mean_pool(x_BLD: jax.Array, attention_mask_BL: jax.Array) -> jax.Array:
    """Mean over the positions where `attention_mask == 1`, in fp32: [B, D]."""
    mask_BL1 = attention_mask_BL.astype(jnp.float32)[..., None]
    total_BD = jnp.sum(x_BLD.astype(jnp.float32) * mask_BL1, axis=1)
    return total_BD / jnp.maximum(jnp.sum(mask_BL1, axis=1), 1e-9)


def segment_mean_pool(x_BLD: jax.Array, segment_ids_BL: jax.Array,
                      num_segments: int) -> jax.Array:
    """Mean over the positions of each segment 1..S of each row, in fp32: [B, S, D].

    For texts packed into rows; a segment a row does not have pools to zeros. One scatter-add
    over the flattened rows, so the cost does not grow with S.
    """
    b, length, d = x_BLD.shape
    slot_BL = jnp.arange(b)[:, None] * num_segments + segment_ids_BL - 1
    # padding (segment 0) goes to an index past the end, which segment_sum drops
    slot_X = jnp.where(segment_ids_BL > 0, slot_BL, b * num_segments).reshape(-1)
    total_XD = jax.ops.segment_sum(x_BLD.astype(jnp.float32).reshape(-1, d), slot_X,
                                   num_segments=b * num_segments)
    count_X = jax.ops.segment_sum(jnp.ones(slot_X.shape, jnp.float32), slot_X,
                                  num_segments=b * num_segments)
    return (total_XD / jnp.maximum(count_X, 1.0)[:, None]).reshape(b, num_segments, d)


def l2_normalize(x_BD: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x_BD / jnp.maximum(jnp.linalg.norm(x_BD, axis=-1, keepdims=True), eps)


def vocab_max_pool(weights_BL: jax.Array, input_ids_BL: jax.Array,
                   segment_ids_BL: jax.Array | None, vocab_size: int,
                   num_segments: int = 1, max_texts: int | None = None) -> jax.Array:
    """Sparse vectors: per text, each vocabulary entry's largest weight among its tokens, 0 for
    tokens it lacks, in fp32: [B, V], or [B, S, V] with `segment_ids_BL` (packed texts 1..S;
    0 on padding). Weights must be >= 0 and 0 where there is no text (the max starts at 0).

    Packed, `max_texts` gives [max_texts, V] instead: the texts in row order (row r's text s
    at the number of texts in the rows before r, plus s - 1), those past `max_texts` dropped,
    rows past the last text zero. Most of the B * S slots are empty, and vocabulary-sized
    vectors of them all would cost what the encoder does."""
    b, _ = input_ids_BL.shape
    if segment_ids_BL is None:
        slot_BL = jnp.broadcast_to(jnp.arange(b)[:, None], input_ids_BL.shape)
        slots = b
    elif max_texts is not None:
        texts_B = jnp.max(segment_ids_BL, axis=1)
        first_B = jnp.cumsum(texts_B) - texts_B
        slots = max_texts
        slot_BL = jnp.where(segment_ids_BL > 0,
                            jnp.minimum(first_B[:, None] + segment_ids_BL - 1, slots), slots)
    else:
        slots = b * num_segments
        # padding (segment 0) goes to a slot past the end, sliced off below
        slot_BL = jnp.where(segment_ids_BL > 0,
                            jnp.arange(b)[:, None] * num_segments + segment_ids_BL - 1, slots)
    pooled_XV = jnp.zeros((slots + 1, vocab_size), jnp.float32).at[slot_BL, input_ids_BL].max(
        weights_BL.astype(jnp.float32))[:slots]
    if segment_ids_BL is None or max_texts is not None:
        return pooled_XV
    return pooled_XV.reshape(b, num_segments, vocab_size)


# -- the BERT prediction heads (`cls.*`) ----------------------------------------------------


@jax.custom_vjp
def add_vocab_bias(logits_BLV: jax.Array, bias_V: jax.Array) -> jax.Array:
    """`logits + bias`, whose bias gradient is a vector-matrix product, not a reduction.

    The two are the same sum, but XLA:CPU (jaxlib 0.10) runs the [N, V] -> [V] column reduction
    about 40x slower than `ones[N] @ g[N, V]` at V = 61k: 0.4 s of a base-code train step
    (docs/benchmarks.md, "MLM train step").
    """
    return logits_BLV + bias_V


def _add_vocab_bias_fwd(logits_BLV, bias_V):
    return logits_BLV + bias_V, None


def _add_vocab_bias_bwd(_, g_BLV):
    g_NV = g_BLV.reshape(-1, g_BLV.shape[-1])
    return g_BLV, jnp.ones((g_NV.shape[0],), g_NV.dtype) @ g_NV


add_vocab_bias.defvjp(_add_vocab_bias_fwd, _add_vocab_bias_bwd)


class PredictionHeadTransform(nnx.Module):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.dense = dense(config, d, d, ("embed", "embed_out"), rngs=rngs)
        self.LayerNorm = layer_norm(config, d, rngs=rngs)
        self.act = ACTIVATIONS[config.hidden_act]

    def __call__(self, x_BLD):
        return self.LayerNorm(self.act(self.dense(x_BLD)))


class LMPredictionHead(nnx.Module):
    """Transform, then the decoder tied to the word embeddings, plus `bias` [V]."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.transform = PredictionHeadTransform(config, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.dtype(config.param_dtype)),
                              out_sharding=("vocab",))

    def __call__(self, x_BLD, word_embeddings: nnx.Embed):
        logits_BLV = word_embeddings.attend(self.transform(x_BLD))
        return add_vocab_bias(logits_BLV, self.bias[...].astype(logits_BLV.dtype))


class MLMOnlyHead(nnx.Module):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.predictions = LMPredictionHead(config, rngs=rngs)


class NSPOnlyHead(nnx.Module):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.seq_relationship = dense(config, config.hidden_size, 2, ("embed", "labels"),
                                      rngs=rngs)


class PreTrainingHeads(nnx.Module):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.predictions = LMPredictionHead(config, rngs=rngs)
        self.seq_relationship = dense(config, config.hidden_size, 2, ("embed", "labels"),
                                      rngs=rngs)


# -- heads ----------------------------------------------------------------------------------


class _Head(nnx.Module):
    """Shared plumbing: the encoder call with the standard arguments."""

    pooled: bool = True

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.bert = JinaBertModel(config, add_pooling_layer=self.pooled, rngs=rngs)
        self.config = config

    def encode(self, input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
               deterministic, rngs, causal=False):
        return self.bert(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                         causal=causal, deterministic=deterministic, rngs=rngs)

    def classifier_dropout(self) -> nnx.Dropout:
        rate = self.config.classifier_dropout
        return nnx.Dropout(self.config.hidden_dropout_prob if rate is None else rate)


class JinaBertForPreTraining(_Head):
    """MLM + next-sentence prediction: `prediction_logits` [B, L, V], `seq_relationship_logits`."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.cls = PreTrainingHeads(config, rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_BL=None, next_sentence_label_B=None,
                 deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        logits_BLV = self.cls.predictions(out["last_hidden_state"],
                                          self.bert.embeddings.word_embeddings)
        nsp_logits_B2 = self.cls.seq_relationship(out["pooler_output"])
        result = {"prediction_logits": logits_BLV, "seq_relationship_logits": nsp_logits_B2}
        if labels_BL is not None and next_sentence_label_B is not None:
            result["loss"] = (losses.mean_cross_entropy(logits_BLV, labels_BL)
                              + losses.mean_cross_entropy(nsp_logits_B2, next_sentence_label_B))
        return result


class JinaBertForMaskedLM(_Head):
    """MLM with the decoder tied to the word embeddings: `logits` [B, L, V]."""

    pooled = False

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.cls = MLMOnlyHead(config, rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_BL=None, positions_BK=None, deterministic=True,
                 rngs=None):
        """With `positions_BK`, logits only at those K positions per row ([B, K, V]): the
        vocabulary projection dominates a small model's step, and MLM needs it only where
        tokens are masked."""
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        x_BLD = out["last_hidden_state"]
        x_BKD = x_BLD if positions_BK is None else jnp.take_along_axis(
            x_BLD, positions_BK[..., None], axis=1)
        logits_BKV = self.cls.predictions(x_BKD, self.bert.embeddings.word_embeddings)
        result = {"logits": logits_BKV, "last_hidden_state": x_BLD}
        if labels_BL is not None:
            labels_BK = labels_BL if positions_BK is None else jnp.take_along_axis(
                labels_BL, positions_BK, axis=1)
            result["loss"] = losses.mean_cross_entropy(logits_BKV, labels_BK)
        return result


class JinaBertLMHeadModel(_Head):
    """Left-to-right LM (the port's decoder use): causal mask, labels shifted by one."""

    pooled = False

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.cls = MLMOnlyHead(config, rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_BL=None, deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs, causal=True)
        logits_BLV = self.cls.predictions(out["last_hidden_state"],
                                          self.bert.embeddings.word_embeddings)
        result = {"logits": logits_BLV}
        if labels_BL is not None:
            result["loss"] = losses.mean_cross_entropy(logits_BLV[:, :-1], labels_BL[:, 1:])
        return result


class JinaBertForNextSentencePrediction(_Head):
    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.cls = NSPOnlyHead(config, rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_B=None, deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        logits_B2 = self.cls.seq_relationship(out["pooler_output"])
        result = {"logits": logits_B2}
        if labels_B is not None:
            result["loss"] = losses.mean_cross_entropy(logits_B2, labels_B)
        return result


class JinaBertForSequenceClassification(_Head):
    """Pooled output -> dropout -> `classifier`; the loss follows `problem_type` as in HF."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.dropout = self.classifier_dropout()
        self.classifier = dense(config, config.hidden_size, config.num_labels,
                                ("embed", "labels"), rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_B=None, deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        pooled_BD = self.dropout(out["pooler_output"], deterministic=deterministic, rngs=rngs)
        logits_BN = self.classifier(pooled_BD)
        result = {"logits": logits_BN}
        if labels_B is not None:
            result["loss"] = self._loss(logits_BN, labels_B)
        return result

    def _loss(self, logits_BN, labels_B):
        problem = self.config.problem_type
        if problem is None:
            if self.config.num_labels == 1:
                problem = "regression"
            elif jnp.issubdtype(labels_B.dtype, jnp.integer):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if self.config.num_labels == 1:
                return losses.mean_squared_error(logits_BN[:, 0], labels_B.reshape(-1))
            return losses.mean_squared_error(logits_BN, labels_B)
        if problem == "single_label_classification":
            return losses.mean_cross_entropy(logits_BN, labels_B)
        return losses.binary_cross_entropy_with_logits(logits_BN, labels_B)


class JinaBertForMultipleChoice(_Head):
    """Inputs [B, C, L]; one score per choice from the pooled output: `logits` [B, C]."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.dropout = self.classifier_dropout()
        self.classifier = dense(config, config.hidden_size, 1, ("embed", "labels"), rngs=rngs)

    def __call__(self, input_ids_BCL, attention_mask_BCL=None, token_type_ids_BCL=None,
                 segment_ids_BCL=None, *, labels_B=None, deterministic=True, rngs=None):
        if input_ids_BCL.ndim != 3:
            raise ValueError(f"multiple choice input_ids must be [batch, choices, length], "
                             f"got shape {input_ids_BCL.shape}")
        b, c, length = input_ids_BCL.shape

        def flat(x):
            return None if x is None else x.reshape(b * c, length)

        out = self.encode(flat(input_ids_BCL), flat(attention_mask_BCL),
                          flat(token_type_ids_BCL), flat(segment_ids_BCL), deterministic, rngs)
        pooled_XD = self.dropout(out["pooler_output"], deterministic=deterministic, rngs=rngs)
        logits_BC = self.classifier(pooled_XD).reshape(b, c)
        result = {"logits": logits_BC}
        if labels_B is not None:
            result["loss"] = losses.mean_cross_entropy(logits_BC, labels_B)
        return result


class JinaBertForTokenClassification(_Head):
    pooled = False

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.dropout = self.classifier_dropout()
        self.classifier = dense(config, config.hidden_size, config.num_labels,
                                ("embed", "labels"), rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, labels_BL=None, deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        x_BLD = self.dropout(out["last_hidden_state"], deterministic=deterministic, rngs=rngs)
        logits_BLN = self.classifier(x_BLD)
        result = {"logits": logits_BLN}
        if labels_BL is not None:
            result["loss"] = losses.mean_cross_entropy(logits_BLN, labels_BL)
        return result


class JinaBertForQuestionAnswering(_Head):
    """Span extraction: `start_logits`, `end_logits` [B, L] from `qa_outputs` [D -> 2]."""

    pooled = False

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        if config.num_labels != 2:
            # HF's question answering reads `num_labels` outputs and splits them in two.
            raise ValueError(f"JinaBertConfig.num_labels={config.num_labels}: question "
                             "answering has 2 outputs (start and end logits); use num_labels=2")
        super().__init__(config, rngs=rngs)
        self.qa_outputs = dense(config, config.hidden_size, 2, ("embed", "labels"), rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, start_positions_B=None, end_positions_B=None,
                 deterministic=True, rngs=None):
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        logits_BL2 = self.qa_outputs(out["last_hidden_state"])
        start_BL, end_BL = logits_BL2[..., 0], logits_BL2[..., 1]
        result = {"start_logits": start_BL, "end_logits": end_BL}
        if start_positions_B is not None and end_positions_B is not None:
            # As in HF: positions outside the sequence are clamped to L and ignored.
            length = start_BL.shape[1]
            start_B = jnp.clip(start_positions_B, 0, length)
            end_B = jnp.clip(end_positions_B, 0, length)
            result["loss"] = 0.5 * (losses.mean_cross_entropy(start_BL, start_B, length)
                                    + losses.mean_cross_entropy(end_BL, end_B, length))
        return result


# A learned temperature is kept in [MIN, MAX]: near zero the logits and gradients explode.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.005, 1.0


def contrastive_temperature(tau0: float, params: dict | None) -> jax.Array:
    """The InfoNCE temperature of `JinaBertForContrastive` params: tau0 * exp(its learned
    log-scale), kept in [MIN_TEMPERATURE, MAX_TEMPERATURE]; tau0 itself with `params` None
    (a fixed temperature)."""
    if params is None:
        return jnp.asarray(tau0, jnp.float32)
    tau = tau0 * jnp.exp(params["temperature_log_scale"].astype(jnp.float32))
    return jnp.clip(tau, MIN_TEMPERATURE, MAX_TEMPERATURE)


class SparseTermWeights(nnx.Module):
    """The sparse head: one weight per token, relu(h . w + b) of its last hidden state h, pooled
    into a vocabulary-sized vector per text (`vocab_max_pool`); texts score by dot product.
    The bias starts at 1, so every token starts counted once (exact-match overlap) and the
    ReLU starts alive; training learns which tokens matter (uniCOIL's term weights)."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, 1, ("embed", "labels"), rngs=rngs)
        self.dense.bias[...] = jnp.ones_like(self.dense.bias[...])

    def __call__(self, x_BLD: jax.Array, attention_mask_BL: jax.Array) -> jax.Array:
        """Token weights [B, L] (fp32), 0 on padding."""
        w_BL = jax.nn.relu(self.dense(x_BLD)[..., 0].astype(jnp.float32))
        return jnp.where(attention_mask_BL > 0, w_BL, 0.0)


class JinaBertForContrastive(_Head):
    """The encoder (with pooler, so it exports as an embedding model) plus the log-scale of a
    learned InfoNCE temperature: tau = tau0 * exp(temperature_log_scale), tau0 from the recipe,
    so a zero init starts at the configured temperature whatever tau0 is; with `sparse`, the
    sparse head too (`SparseTermWeights`, trained beside the dense embedding). Training-only:
    not an HF architecture (export its `bert` subtree as `base`, the sparse head beside it)."""

    def __init__(self, config: JinaBertConfig, *, rngs: nnx.Rngs, sparse: bool = False):
        super().__init__(config, rngs=rngs)
        self.temperature_log_scale = nnx.Param(jnp.zeros((), jnp.float32))
        if sparse:
            self.sparse = SparseTermWeights(config, rngs=rngs)

    def __call__(self, input_ids_BL, attention_mask_BL=None, token_type_ids_BL=None,
                 segment_ids_BL=None, *, deterministic=True, rngs=None):
        """Mean-pooled, L2-normalised embeddings [B, D]."""
        out = self.encode(input_ids_BL, attention_mask_BL, token_type_ids_BL, segment_ids_BL,
                          deterministic, rngs)
        if attention_mask_BL is None:
            attention_mask_BL = jnp.ones(input_ids_BL.shape, jnp.int32)
        return {"embeddings": l2_normalize(mean_pool(out["last_hidden_state"],
                                                     attention_mask_BL))}


# Heads that only exist during training (no HF architecture, never exported as themselves).
TRAINING_HEADS: dict[str, Callable[..., nnx.Module]] = {
    "contrastive": JinaBertForContrastive,
    "contrastive_sparse": functools.partial(JinaBertForContrastive, sparse=True),
}

HEADS: dict[str, type[nnx.Module]] = {
    "base": JinaBertModel,
    "pretraining": JinaBertForPreTraining,
    "masked_lm": JinaBertForMaskedLM,
    "lm_head": JinaBertLMHeadModel,
    "next_sentence": JinaBertForNextSentencePrediction,
    "sequence_classification": JinaBertForSequenceClassification,
    "multiple_choice": JinaBertForMultipleChoice,
    "token_classification": JinaBertForTokenClassification,
    "question_answering": JinaBertForQuestionAnswering,
}


def build(config: JinaBertConfig, head: str, rngs: nnx.Rngs) -> nnx.Module:
    """A head module by name; weights carry logical axes as metadata (no mesh needed)."""
    known = {**HEADS, **TRAINING_HEADS}
    if head not in known and head != "encoder":
        raise KeyError(f"unknown head {head!r}; known: {sorted(known)}")
    with nnx.use_eager_sharding(False):
        if head == "encoder":  # the base model without pooler, as inside MLM/QA/token heads
            return JinaBertModel(config, add_pooling_layer=False, rngs=rngs)
        return known[head](config, rngs=rngs)

