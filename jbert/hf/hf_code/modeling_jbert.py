"""JinaBERT in PyTorch: jbert's own modeling code for transformers' `trust_remote_code`.

Shipped inside self-contained jbert exports (`jbert.save_pretrained(..., self_contained=True)`)
with `configuration_jbert.py`; `config.json`'s `auto_map` points at the classes here, so
`AutoModel.from_pretrained(dir, trust_remote_code=True)` and `SentenceTransformer(dir,
trust_remote_code=True)` load the export offline with transformers 4.x and 5.x. Package data of
jbert: jbert itself never imports this file (nor torch).

The tensor names are the released jina-embeddings-v2 ones, in both layouts (`qk_norm`):
base-en/small-en (`mlp.gated_layers`, `mlp.wo`, `mlp.layernorm`) and base-code (LayerNorm on q
and k, `layer_norm_1`, `mlp.up_gated_layer`, `mlp.down_layer`, `layer_norm_2`), and BERT's
original feed-forward (`intermediate`/`output`). Positions enter only through symmetric ALiBi
(`-slope_h * |i - j|` on the attention scores). Every head of the Transformers port is here;
the base model has `encode` (mean pooling over real tokens, L2 normalisation). Kept to APIs that
transformers 4 and 5 share: no weight tying (the MLM decoder reads the word embeddings itself,
with `cls.predictions.bias`), ALiBi computed in `forward` (no buffers).
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    CausalLMOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .configuration_jbert import JinaBertConfig

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
GLU_ACTIVATIONS = {"glu": torch.sigmoid, "geglu": lambda x: F.gelu(x), "reglu": F.relu}
IGNORE_INDEX = -100


def alibi_head_slopes(num_heads):
    """Per-head ALiBi slopes: the geometric sequence 2^(-8 (h+1) / n) for n a power of two;
    otherwise those of the power of two below, then every other slope of twice that."""
    if num_heads & (num_heads - 1) == 0:
        return [2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)]
    below = 1 << (num_heads.bit_length() - 1)
    extra = alibi_head_slopes(2 * below)[::2]
    return alibi_head_slopes(below) + extra[: num_heads - below]


def attention_bias(config, attention_mask, causal, dtype):
    """[B, H, L, L] additive scores: ALiBi where a query may attend, the dtype's minimum at
    padded keys (and future keys when causal)."""
    length = attention_mask.shape[1]
    device = attention_mask.device
    pos = torch.arange(length, device=device)
    distance = (pos[:, None] - pos[None, :]).abs().to(dtype)
    slopes = torch.tensor(alibi_head_slopes(config.num_attention_heads), device=device,
                          dtype=dtype)
    alibi = -slopes[:, None, None] * distance  # [H, L, L]
    allowed = attention_mask[:, None, None, :].bool()  # [B, 1, 1, L]
    if causal:
        allowed = allowed & (pos[None, :] <= pos[:, None])[None, None]
    return torch.where(allowed, alibi[None], torch.finfo(dtype).min)


class JinaBertEmbeddings(nn.Module):
    """Word plus token-type embeddings, LayerNorm, dropout; no position embeddings."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class JinaBertSelfAttention(nn.Module):
    """`attention.self`: q, k, v (LayerNorm on q and k in the code layout), scaled dot-product
    attention with the ALiBi/padding bias."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        if config.qk_norm:
            self.layer_norm_q = nn.LayerNorm(d, eps=config.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qk_norm = config.qk_norm
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, hidden, bias):
        batch, length, d = hidden.shape
        q, k, v = self.query(hidden), self.key(hidden), self.value(hidden)
        if self.qk_norm:
            q, k = self.layer_norm_q(q), self.layer_norm_k(k)
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout_prob if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return ctx.transpose(1, 2).reshape(batch, length, d)


class JinaBertResidualOutput(nn.Module):
    """`dense`, dropout, then post-norm `LayerNorm(x + residual)`: `attention.output` and the
    original feed-forward's `output`."""

    def __init__(self, config, features_in):
        super().__init__()
        self.dense = nn.Linear(features_in, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, residual):
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class JinaBertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = JinaBertSelfAttention(config)
        self.output = JinaBertResidualOutput(config, config.hidden_size)

    def forward(self, hidden, bias):
        return self.output(self.self(hidden, bias), hidden)


class JinaBertGatedMLP(nn.Module):
    """Base/small layout: `gated_layers` [D -> 2F], act(first F) * second F, `wo`, then
    `layernorm(out + x)`."""

    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gated_layers = nn.Linear(d, 2 * f, bias=False)
        self.wo = nn.Linear(f, d)
        self.layernorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = GLU_ACTIVATIONS[config.feed_forward_type]

    def forward(self, x):
        gate, linear = self.gated_layers(x).chunk(2, dim=-1)
        return self.layernorm(self.wo(self.dropout(self.act(gate) * linear)) + x)


class JinaBertUpGatedMLP(nn.Module):
    """Code layout: `up_gated_layer` [D -> 2F], first F linear times act(second F),
    `down_layer`; the residual and `layer_norm_2` belong to the layer."""

    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.up_gated_layer = nn.Linear(d, 2 * f, bias=False)
        self.down_layer = nn.Linear(f, d)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = GLU_ACTIVATIONS[config.feed_forward_type]

    def forward(self, x):
        linear, gate = self.up_gated_layer(x).chunk(2, dim=-1)
        return self.dropout(self.down_layer(linear * self.act(gate)))


class JinaBertIntermediate(nn.Module):
    """BERT's original feed-forward up-projection."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class JinaBertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = JinaBertAttention(config)
        if config.qk_norm:
            self.layout = "code"
            self.layer_norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.mlp = JinaBertUpGatedMLP(config)
            self.layer_norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        elif config.feed_forward_type == "original":
            self.layout = "original"
            self.intermediate = JinaBertIntermediate(config)
            self.output = JinaBertResidualOutput(config, config.intermediate_size)
        else:
            self.layout = "gated"
            self.mlp = JinaBertGatedMLP(config)

    def forward(self, hidden, bias):
        attended = self.attention(hidden, bias)
        if self.layout == "code":
            mixed = self.layer_norm_1(hidden + attended)
            return self.layer_norm_2(mixed + self.mlp(mixed))
        if self.layout == "original":
            return self.output(self.intermediate(attended), attended)
        return self.mlp(attended)


class JinaBertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(JinaBertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden, bias, output_hidden_states=False):
        states = [hidden] if output_hidden_states else None
        for layer in self.layer:
            hidden = layer(hidden, bias)
            if states is not None:
                states.append(hidden)
        return hidden, None if states is None else tuple(states)


class JinaBertPooler(nn.Module):
    """`pooler.dense` + tanh on the first token."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class JinaBertPreTrainedModel(PreTrainedModel):
    config_class = JinaBertConfig
    base_model_prefix = "bert"
    # Exports also carry the decoder's bias (equal to cls.predictions.bias) for jina's code.
    _keys_to_ignore_on_load_unexpected = [r"cls\.predictions\.decoder\."]

    def _init_weights(self, module):
        """BERT init, for tensors a checkpoint does not hold (a fresh head or pooler)."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, JinaBertLMPredictionHead):
            nn.init.zeros_(module.bias)


def _return(output, return_dict):
    return output if return_dict is None or return_dict else output.to_tuple()


class JinaBertModel(JinaBertPreTrainedModel):
    """The encoder: `last_hidden_state` [B, L, D], `pooler_output` [B, D] (with the pooler).
    Attention is causal when `config.is_decoder`."""

    _keys_to_ignore_on_load_unexpected = [r"^cls\.", r"^classifier\.", r"^qa_outputs\."]

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = JinaBertEmbeddings(config)
        self.encoder = JinaBertEncoder(config)
        self.pooler = JinaBertPooler(config) if add_pooling_layer else None
        self._tokenizer = None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                output_hidden_states=None, return_dict=None, causal=None, **kwargs):
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("input_ids must be a [batch, length] tensor, got "
                             f"{None if input_ids is None else tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)
        causal = bool(getattr(self.config, "is_decoder", False)) if causal is None else causal
        bias = attention_bias(self.config, attention_mask, causal, hidden.dtype)
        hidden, states = self.encoder(hidden, bias, bool(output_hidden_states))
        pooled = self.pooler(hidden) if self.pooler is not None else None
        output = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled,
                                            hidden_states=states)
        return _return(output, return_dict)

    def _load_tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                # The model's own directory: its code is already trusted.
                self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path,
                                                                trust_remote_code=True)
            except (OSError, ValueError) as e:
                raise ValueError(f"encode needs the tokenizer files beside the model, and "
                                 f"{self.name_or_path!r} has none that load: {e}") from e
        return self._tokenizer

    @torch.inference_mode()
    def encode(self, sentences, batch_size=32, max_length=None, normalize_embeddings=True,
               convert_to_tensor=False, device=None):
        """Embeddings of `sentences` (a string gives one vector): the mean of the last hidden
        states over real tokens, L2-normalised unless `normalize_embeddings=False`. Numpy
        [N, D] unless `convert_to_tensor`; the tokenizer is the one saved with the model."""
        tokenizer = self._load_tokenizer()
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        if max_length is None:
            max_length = min(tokenizer.model_max_length, self.config.max_position_embeddings)
        if device is not None:
            self.to(device)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        chunks = []
        for start in range(0, len(order), batch_size):
            batch = [sentences[i] for i in order[start : start + batch_size]]
            inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length,
                               return_tensors="pt").to(device)
            hidden = self.forward(input_ids=inputs["input_ids"],
                                  attention_mask=inputs["attention_mask"],
                                  token_type_ids=inputs.get("token_type_ids"), causal=False)[0]
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, p=2, dim=-1) if normalize_embeddings else pooled)
        self.train(was_training)
        out = torch.cat(chunks)[torch.tensor(order).argsort()] if chunks else torch.zeros(
            0, self.config.hidden_size)
        out = out[0] if single else out
        return out if convert_to_tensor else out.float().cpu().numpy()


# -- heads ----------------------------------------------------------------------------------


class JinaBertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class JinaBertLMPredictionHead(nn.Module):
    """Transform, then the word embeddings as decoder, plus `bias` [V]."""

    def __init__(self, config):
        super().__init__()
        self.transform = JinaBertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        return F.linear(self.transform(x), word_embeddings.weight, self.bias)


class JinaBertOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = JinaBertLMPredictionHead(config)


class JinaBertOnlyNSPHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class JinaBertPreTrainingHeads(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = JinaBertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


@dataclass
class JinaBertForPreTrainingOutput(ModelOutput):
    loss: Optional[torch.FloatTensor] = None
    prediction_logits: Optional[torch.FloatTensor] = None
    seq_relationship_logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[tuple] = None


def _cross_entropy(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


class _Head(JinaBertPreTrainedModel):
    """The encoder as `bert`, with or without pooler."""

    pooled = True

    def __init__(self, config):
        super().__init__(config)
        self.bert = JinaBertModel(config, add_pooling_layer=self.pooled)

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.bert.embeddings.word_embeddings = value

    def classifier_dropout(self):
        rate = self.config.classifier_dropout
        return nn.Dropout(self.config.hidden_dropout_prob if rate is None else rate)


class JinaBertForPreTraining(_Head):
    def __init__(self, config):
        super().__init__(config)
        self.cls = JinaBertPreTrainingHeads(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, output_hidden_states=None, return_dict=None,
                **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids,
                        output_hidden_states=output_hidden_states)
        logits = self.cls.predictions(out.last_hidden_state, self.bert.embeddings.word_embeddings)
        nsp = self.cls.seq_relationship(out.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = _cross_entropy(logits, labels) + _cross_entropy(nsp, next_sentence_label)
        return _return(JinaBertForPreTrainingOutput(
            loss=loss, prediction_logits=logits, seq_relationship_logits=nsp,
            hidden_states=out.hidden_states), return_dict)


class JinaBertForMaskedLM(_Head):
    """MLM: `logits` [B, L, V] from the word embeddings as decoder."""

    pooled = False
    causal = None  # attention follows config.is_decoder
    output_class = MaskedLMOutput

    def __init__(self, config):
        super().__init__(config)
        self.cls = JinaBertOnlyMLMHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids,
                        output_hidden_states=output_hidden_states, causal=self.causal)
        logits = self.cls.predictions(out.last_hidden_state, self.bert.embeddings.word_embeddings)
        loss = None if labels is None else self.loss(logits, labels)
        return _return(self.output_class(loss=loss, logits=logits,
                                         hidden_states=out.hidden_states), return_dict)

    def loss(self, logits, labels):
        return _cross_entropy(logits, labels)


class JinaBertLMHeadModel(JinaBertForMaskedLM):
    """Left-to-right LM: the same tensors, causal attention, `labels` shifted by one inside."""

    causal = True
    output_class = CausalLMOutput

    def loss(self, logits, labels):
        return _cross_entropy(logits[:, :-1], labels[:, 1:])


class JinaBertForNextSentencePrediction(_Head):
    def __init__(self, config):
        super().__init__(config)
        self.cls = JinaBertOnlyNSPHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids,
                        output_hidden_states=output_hidden_states)
        logits = self.cls.seq_relationship(out.pooler_output)
        loss = None if labels is None else _cross_entropy(logits, labels)
        return _return(NextSentencePredictorOutput(loss=loss, logits=logits,
                                                   hidden_states=out.hidden_states), return_dict)


class _Classifier(_Head):
    """Dropout, then `classifier` over the pooled output (or, unpooled, every token's state)."""

    outputs = None  # config.num_labels
    output_class = TokenClassifierOutput

    def __init__(self, config):
        super().__init__(config)
        self.dropout = self.classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, self.outputs or config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids,
                        output_hidden_states=output_hidden_states)
        features = out.pooler_output if self.pooled else out.last_hidden_state
        logits = self.classifier(self.dropout(features))
        loss = None if labels is None else self.loss(logits, labels)
        return _return(self.output_class(loss=loss, logits=logits,
                                         hidden_states=out.hidden_states), return_dict)

    def loss(self, logits, labels):
        return _cross_entropy(logits, labels)


class JinaBertForTokenClassification(_Classifier):
    pooled = False


class JinaBertForSequenceClassification(_Classifier):
    """The loss follows `problem_type` as in HF."""

    output_class = SequenceClassifierOutput

    def loss(self, logits, labels):
        problem = getattr(self.config, "problem_type", None)
        if problem is None:
            if self.config.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            if self.config.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.reshape(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if problem == "single_label_classification":
            return _cross_entropy(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class JinaBertForMultipleChoice(_Classifier):
    """Inputs [B, C, L]; one score per choice from the pooled output: `logits` [B, C]."""

    outputs = 1

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        if input_ids is None or input_ids.dim() != 3:
            raise ValueError("multiple choice input_ids must be [batch, choices, length]")
        batch, choices, length = input_ids.shape

        def flat(x):
            return None if x is None else x.reshape(batch * choices, length)

        out = super().forward(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                              output_hidden_states=output_hidden_states)
        logits = out.logits.view(batch, choices)
        loss = None if labels is None else self.loss(logits, labels)
        return _return(MultipleChoiceModelOutput(loss=loss, logits=logits,
                                                 hidden_states=out.hidden_states), return_dict)


class JinaBertForQuestionAnswering(_Head):
    """Span extraction: `start_logits`, `end_logits` [B, L] from `qa_outputs` [D -> 2]."""

    pooled = False

    def __init__(self, config):
        if config.num_labels != 2:
            raise ValueError(f"num_labels={config.num_labels}: question answering has 2 outputs "
                             "(start and end logits)")
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                start_positions=None, end_positions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        out = self.bert(input_ids, attention_mask, token_type_ids,
                        output_hidden_states=output_hidden_states)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are clamped to L and ignored, as in HF.
            length = start.shape[1]
            start_at = start_positions.clamp(0, length)
            end_at = end_positions.clamp(0, length)
            loss = 0.5 * (F.cross_entropy(start, start_at, ignore_index=length)
                          + F.cross_entropy(end, end_at, ignore_index=length))
        return _return(QuestionAnsweringModelOutput(
            loss=loss, start_logits=start, end_logits=end, hidden_states=out.hidden_states),
            return_dict)

