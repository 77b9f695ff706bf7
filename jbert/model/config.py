"""The model configuration: one frozen dataclass, presets, and HF config.json in and out.

The field names and defaults follow the released JinaBERT `config.json` (`model_type: bert`,
`position_embedding_type: alibi`), so `from_hf_dict(json.load(...))` reads a released config and
`to_hf_dict()` writes one a released loader accepts. Fields after `# jbert only` never reach the
HF config: they choose how the same function is computed (attention path, compute dtype, the
layers' rematerialisation policy `remat`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jbert.errors import check_ranges

FEED_FORWARD_TYPES = ("original", "glu", "geglu", "reglu")
ATTENTION_IMPLS = ("auto", "reference", "blockwise", "dpa", "pallas")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_tanh", "relu", "silu", "swish", "tanh")
DTYPES = ("float32", "bfloat16", "float16")
# Names of the layer rematerialisation policies (`jbert.model.encoder.REMAT_POLICIES`).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "save_qkv", "save_qkv_context", "save_mlp_in", "save_qkv_context_mlp_in")
# What the boolean `remat` of earlier configs (run directories, recipes) meant.
_REMAT_BOOLS = {False: "none", True: "full", "false": "none", "true": "full"}


@dataclasses.dataclass(frozen=True)
class JinaBertConfig:
    """Hyperparameters of a JinaBERT encoder and its heads.

    `qk_norm=True` selects the code-model layout of jina-embeddings-v2-base-code (its backbone
    jina-bert-v2-qk-post-norm): LayerNorms on q and k, `layer_norm_1`/`layer_norm_2` around the
    MLP and the `mlp.up_gated_layer`/`mlp.down_layer` weights. `False` is the base-en/small-en
    layout (`mlp.gated_layers`, `mlp.wo`, `mlp.layernorm`).
    """

    vocab_size: int = 30528
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    feed_forward_type: str = "geglu"
    qk_norm: bool = False
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout: float | None = None
    max_position_embeddings: int = 8192
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    emb_pooler: str | None = "mean"
    num_labels: int = 2
    problem_type: str | None = None
    # jbert only: how the function is computed, never written to config.json.
    attention_impl: str = "auto"
    attention_block_size: int = 512
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ValueError:
            return ValueError(f"JinaBertConfig.{key}={getattr(self, key)!r}: {why}")

        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "intermediate_size", "type_vocab_size", "attention_block_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        check_ranges("JinaBertConfig", self, {
            "max_position_embeddings": ">= 1", "initializer_range": ">= 0",
            "layer_norm_eps": "> 0", "num_labels": ">= 1", "pad_token_id": ">= 0",
            "classifier_dropout": "[0, 1)"})
        if self.hidden_size % self.num_attention_heads:
            raise bad("hidden_size", f"must be divisible by num_attention_heads="
                      f"{self.num_attention_heads}")
        if self.feed_forward_type not in FEED_FORWARD_TYPES:
            raise bad("feed_forward_type", f"must be one of {FEED_FORWARD_TYPES}")
        if self.qk_norm and not self.feed_forward_type.endswith("glu"):
            raise bad("feed_forward_type", "the qk_norm (code) layout has a gated MLP only")
        if self.hidden_act not in ACTIVATIONS:
            raise bad("hidden_act", f"must be one of {ACTIVATIONS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise bad("attention_impl", f"must be one of {ATTENTION_IMPLS}")
        if isinstance(self.remat, bool) or self.remat in _REMAT_BOOLS:
            object.__setattr__(self, "remat", _REMAT_BOOLS[self.remat])
        if self.remat not in REMAT_POLICIES:
            raise bad("remat", f"must be one of {REMAT_POLICIES} (or a bool: true is full)")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise bad(key, f"must be one of {DTYPES}")
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "must be in [0, 1)")
        if self.emb_pooler not in (None, "mean"):
            raise bad("emb_pooler", "only mean pooling is defined for JinaBERT")
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            raise bad("problem_type", "unknown problem type")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes: Any) -> JinaBertConfig:
        return dataclasses.replace(self, **changes)

    # -- Hugging Face config.json -------------------------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` content of a released checkpoint with this shape.

        Same keys and fixed values as the released files (checked against
        jinaai/jina-embeddings-v2-base-code and -base-en/-small-en config.json): `_name_or_path`
        names the backbone repo (tools such as text-embeddings-inference detect the code layout
        from it and from `auto_map`), `attn_implementation: "torch"`, `architectures:
        ["JinaBertForMaskedLM"]` even for the bare encoder. `torch_dtype` is float32 because jbert
        exports fp32 (the released base-code file says float16, its weights are fp16).
        `num_labels`/`problem_type` appear only when not the defaults, as in the released files.
        """
        hf = {k: getattr(self, k) for k in _HF_KEYS}
        if self.num_labels == 2:
            del hf["num_labels"]
        if self.problem_type is None:
            del hf["problem_type"]
        hf.update(
            _name_or_path=_CODE_REPO if self.qk_norm else _BASE_REPO,
            model_type="bert",
            position_embedding_type="alibi",
            architectures=["JinaBertForMaskedLM"],
            attn_implementation="torch",
            auto_map=dict(_CODE_AUTO_MAP if self.qk_norm else _BASE_AUTO_MAP),
            torch_dtype="float32",
            model_max_length=self.max_position_embeddings,
            use_cache=True,
            gradient_checkpointing=False,
            transformers_version=_TRANSFORMERS_VERSION,
        )
        return hf

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> JinaBertConfig:
        """Reads a released `config.json`; unknown keys are ignored, a wrong layout is an error."""
        if hf.get("position_embedding_type", "alibi") != "alibi":
            raise ValueError(
                f"config.json: position_embedding_type={hf['position_embedding_type']!r}; "
                "JinaBERT checkpoints use 'alibi'")
        kwargs = {k: hf[k] for k in _HF_KEYS if k in hf}
        if "num_labels" not in kwargs and isinstance(hf.get("id2label"), dict):
            kwargs["num_labels"] = len(hf["id2label"])  # what transformers writes for num_labels
        if "qk_norm" not in kwargs:
            kwargs["qk_norm"] = _is_code_layout(hf)
        kwargs.update(overrides)
        return cls(**kwargs)


_HF_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "feed_forward_type", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "classifier_dropout", "max_position_embeddings", "type_vocab_size", "initializer_range",
    "layer_norm_eps", "pad_token_id", "emb_pooler", "num_labels", "problem_type",
)

# The backbone repos the released configs name in `_name_or_path` and `auto_map`.
_BASE_REPO = "jinaai/jina-bert-implementation"
_CODE_REPO = "jinaai/jina-bert-v2-qk-post-norm"
# The version the released base-code config.json names; the remote code targets transformers 4.3x.
_TRANSFORMERS_VERSION = "4.35.2"

# What the released repositories point `trust_remote_code` at.
_BASE_AUTO_MAP = {
    "AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig",
    "AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel",
    "AutoModelForMaskedLM": "jinaai/jina-bert-implementation--modeling_bert.JinaBertForMaskedLM",
    "AutoModelForSequenceClassification":
        "jinaai/jina-bert-implementation--modeling_bert.JinaBertForSequenceClassification",
}
_CODE_AUTO_MAP = {
    "AutoConfig": "jinaai/jina-bert-v2-qk-post-norm--configuration_bert.JinaBertConfig",
    "AutoModel": "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertModel",
    "AutoModelForMaskedLM": "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertForMaskedLM",
    "AutoModelForSequenceClassification":
        "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertForSequenceClassification",
}


def _is_code_layout(hf: dict[str, Any]) -> bool:
    if isinstance(hf.get("qk_norm"), bool):  # jbert's self-contained exports say it outright
        return hf["qk_norm"]
    names = " ".join(str(v) for v in (hf.get("auto_map") or {}).values())
    return "qk-post-norm" in names or "qk-post-norm" in str(hf.get("_name_or_path", ""))


PRESETS: dict[str, JinaBertConfig] = {
    "small-en": JinaBertConfig(
        vocab_size=30528, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
        intermediate_size=2048),
    "base-en": JinaBertConfig(
        vocab_size=30528, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072),
    # As the released config.json: pad_token_id 0 (the tokenizer's <pad> is id 1; padded
    # positions are masked, so the id only matters for torch's Embedding padding_idx) and
    # hidden_dropout_prob 0.0.
    "base-code": JinaBertConfig(
        vocab_size=61056, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, qk_norm=True, pad_token_id=0, hidden_dropout_prob=0.0),
    # Tests and the CPU demo; 6 heads exercise the non-power-of-two ALiBi slopes.
    "tiny": JinaBertConfig(
        vocab_size=1024, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
        intermediate_size=192, attention_block_size=64),
    "tiny-code": JinaBertConfig(
        vocab_size=1024, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
        intermediate_size=192, qk_norm=True, pad_token_id=1, attention_block_size=64),
}


def preset(name: str, **overrides: Any) -> JinaBertConfig:
    """A named preset, optionally with some fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
