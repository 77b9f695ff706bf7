"""A PyTorch twin of JinaBERT, written from the spec (../shared/JINABERT.md), not from jbert.

It is the second opinion for `jbert.hf.load`: module and parameter names follow Jina's official
implementation, so `state_dict()` keys are the released tensor names, and `save_twin` /
`load_twin` read and write checkpoint directories the way `transformers` does (safetensors,
tied MLM decoder dropped on save). Both layouts: base-en/small-en (`mlp.gated_layers`) and
base-code (`mlp.up_gated_layer`, LayerNorm on q and k, `layer_norm_1`/`layer_norm_2`).
Attention materialises the ALiBi bias and masks padded keys with the dtype's minimum, as the
official code does.

It behaves as jina's released remote code does where that matters to an export: the MLM
decoder's bias is its own tensor (`cls.predictions.decoder.bias`, zeros when a checkpoint lacks
it, since the released code does not re-tie it to `cls.predictions.bias`), attention is causal
only when `config.json` says `is_decoder: true`, and with `emb_pooler` set the model loads the
tokenizer from its directory when it is built. Test-only: torch is a test extra.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F


class TwinConfig:
    """The `config.json` keys the model reads; the layout comes from `auto_map`/`_name_or_path`."""

    def __init__(self, hf: dict, directory: Path | None = None):
        self.hf = dict(hf)
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "type_vocab_size", "layer_norm_eps", "pad_token_id"):
            setattr(self, key, hf[key])
        self.feed_forward_type = hf.get("feed_forward_type", "geglu")
        self.hidden_act = hf.get("hidden_act", "gelu")
        names = json.dumps(hf.get("auto_map", {})) + str(hf.get("_name_or_path", ""))
        self.code_layout = "qk-post-norm" in names
        self.is_decoder = bool(hf.get("is_decoder", False))
        self.num_labels = hf.get("num_labels", 2)
        self.emb_pooler = hf.get("emb_pooler")
        self.directory = directory  # where the model was loaded from, as `_name_or_path`


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi paper slopes, with the interleaved extension for non-powers of two."""

    def power_of_two(n):
        first = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [first * first**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    lower = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(lower) + alibi_slopes(2 * lower)[0::2][: n_heads - lower]


def alibi_bias(n_heads: int, length: int) -> torch.Tensor:
    """[1, H, L, L]: -slope_h * |i - j|."""
    pos = torch.arange(length)
    distance = (pos[None, :] - pos[:, None]).abs().float()
    slopes = torch.tensor(alibi_slopes(n_heads))
    return (-slopes[:, None, None] * distance[None]).unsqueeze(0)


class Embeddings(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids, token_type_ids):
        return self.LayerNorm(self.word_embeddings(input_ids)
                              + self.token_type_embeddings(token_type_ids))


class SelfAttention(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.qk_norm = c.code_layout
        if c.code_layout:
            self.layer_norm_q = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x, bias):
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.qk_norm:
            q, k = self.layer_norm_q(q), self.layer_norm_k(k)
        b, length, d = x.shape

        def heads(t):
            return t.view(b, length, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads) + bias
        ctx = scores.softmax(-1) @ v
        return ctx.transpose(1, 2).reshape(b, length, d)


class SelfOutput(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class Attention(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.self = SelfAttention(c)  # the official name: tensors are `attention.self.*`
        self.output = SelfOutput(c)

    def forward(self, x, bias):
        return self.output(self.self(x, bias), x)


# The gate of each gated feed-forward type (HF `feed_forward_type`) and the plain activations.
GLU_ACTS = {"glu": torch.sigmoid, "geglu": lambda x: F.gelu(x), "reglu": torch.relu}
ACTS = {"gelu": lambda x: F.gelu(x), "relu": torch.relu}


class GLUMLP(nn.Module):
    """Base layout: gated_layers -> act(first half) * second half -> wo -> layernorm(+x)."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.act = GLU_ACTS[c.feed_forward_type]
        self.f = c.intermediate_size
        self.gated_layers = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.wo = nn.Linear(c.intermediate_size, c.hidden_size)
        self.layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x):
        h = self.gated_layers(x)
        return self.layernorm(self.wo(self.act(h[..., : self.f]) * h[..., self.f :]) + x)


class UpGatedMLP(nn.Module):
    """Code layout: up_gated_layer -> first half * gelu(second half) -> down_layer."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.f = c.intermediate_size
        self.up_gated_layer = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_layer = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        h = self.up_gated_layer(x)
        return self.down_layer(h[..., : self.f] * F.gelu(h[..., self.f :]))


class Intermediate(nn.Module):
    """BERT's original feed-forward: `intermediate.dense` + activation."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.act = ACTS[c.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class Output(SelfOutput):
    """BERT's `output`: dense back to the hidden size, LayerNorm(h + residual)."""

    def __init__(self, c: TwinConfig):
        super().__init__(c)
        self.dense = nn.Linear(c.intermediate_size, c.hidden_size)


class Layer(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.code = c.code_layout
        self.original = c.feed_forward_type == "original"
        self.attention = Attention(c)
        if self.original:
            self.intermediate = Intermediate(c)
            self.output = Output(c)
        elif c.code_layout:
            self.layer_norm_1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.mlp = UpGatedMLP(c)
            self.layer_norm_2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        else:
            self.mlp = GLUMLP(c)

    def forward(self, x, bias):
        a = self.attention(x, bias)
        if self.original:
            return self.output(self.intermediate(a), a)
        if not self.code:
            return self.mlp(a)
        r = self.layer_norm_1(a + x)
        return self.layer_norm_2(self.mlp(r) + r)


class Encoder(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.layer = nn.ModuleList([Layer(c) for _ in range(c.num_hidden_layers)])

    def forward(self, x, bias):
        for layer in self.layer:
            x = layer(x, bias)
        return x


class Pooler(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


class JinaBertModel(nn.Module):
    def __init__(self, c: TwinConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.encoder = Encoder(c)
        self.pooler = Pooler(c) if add_pooling_layer else None
        if c.emb_pooler and c.directory is not None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(c.directory)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        length = input_ids.shape[1]
        padding = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        bias = alibi_bias(self.config.num_attention_heads, length) + padding
        if self.config.is_decoder:
            future = torch.ones(length, length, dtype=torch.bool).triu(1)
            bias = bias.masked_fill(future, torch.finfo(torch.float32).min)
        return self.encoder(self.embeddings(input_ids, token_type_ids), bias)


class PredictionHeadTransform(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    """The released layout: the decoder's bias is a tensor of its own beside `bias`."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.transform = PredictionHeadTransform(c)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))
        with torch.no_grad():
            self.decoder.bias.zero_()

    def forward(self, x):
        return self.decoder(self.transform(x))


class OnlyMLMHead(nn.Module):
    def __init__(self, c: TwinConfig):
        super().__init__()
        self.predictions = LMPredictionHead(c)


class PreTrainingHeads(OnlyMLMHead):
    def __init__(self, c: TwinConfig):
        super().__init__(c)
        self.seq_relationship = nn.Linear(c.hidden_size, 2)


class JinaBertForMaskedLM(nn.Module):
    """Also the LM head model (`JinaBertLMHeadModel`): the same tensors, causal attention when
    the config says `is_decoder`."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.bert = JinaBertModel(c, add_pooling_layer=False)
        self.cls = OnlyMLMHead(c)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.cls.predictions(self.bert(input_ids, attention_mask, token_type_ids))


class JinaBertForPreTraining(nn.Module):
    """(prediction logits, next-sentence logits)."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.bert = JinaBertModel(c)
        self.cls = PreTrainingHeads(c)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.bert(input_ids, attention_mask, token_type_ids)
        pooled = self.bert.pooler(hidden)
        return self.cls.predictions(hidden), self.cls.seq_relationship(pooled)


class JinaBertForQuestionAnswering(nn.Module):
    """`num_labels` outputs split into (start, end), as HF's BERT does."""

    def __init__(self, c: TwinConfig):
        super().__init__()
        self.bert = JinaBertModel(c, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(c.hidden_size, c.num_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = self.qa_outputs(self.bert(input_ids, attention_mask, token_type_ids))
        start, end = logits.split(1, dim=-1)
        return start.squeeze(-1), end.squeeze(-1)


HEADS = {"base": JinaBertModel, "masked_lm": JinaBertForMaskedLM, "lm_head": JinaBertForMaskedLM,
         "pretraining": JinaBertForPreTraining, "question_answering": JinaBertForQuestionAnswering}
# transformers ties the decoder weight to the word embeddings and drops it on save; it drops the
# decoder bias too, which the released remote code then reads as zeros.
TIED = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


def build(hf_config: dict, head: str = "base", seed: int = 0) -> nn.Module:
    """A twin with random weights (every tensor, LayerNorms included), in eval mode; the
    decoder's bias equals `cls.predictions.bias`, as in the released checkpoints."""
    model = HEADS[head](TwinConfig(hf_config))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "LayerNorm" in name or "layernorm" in name or "layer_norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif "embeddings" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1]) if p.ndim == 2 else 0.1 * noise)
        if hasattr(model, "cls"):
            model.cls.predictions.decoder.bias.copy_(model.cls.predictions.bias)
    return model.eval()


def save_twin(model: nn.Module, directory: Path, hf_config: dict, keep_tied: bool = False) -> None:
    """Writes config.json and model.safetensors as transformers does (tied copies dropped)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if not keep_tied:
        state = {k: v for k, v in state.items() if k not in TIED}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2))


def load_twin(directory: Path, head: str = "base") -> nn.Module:
    """Loads a checkpoint directory strictly, except for the tied decoder copies (a missing
    decoder bias stays zero, as with the released remote code)."""
    hf_config = json.loads((directory / "config.json").read_text())
    model = HEADS[head](TwinConfig(hf_config, directory))
    state = load_file(str(directory / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - set(TIED) or unexpected:
        raise KeyError(f"twin load: missing {missing}, unexpected {unexpected}")
    return model.eval()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then L2 normalisation (the released `encode`)."""
    m = attention_mask[..., None].float()
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)
