"""The configuration of jbert's own JinaBERT modeling code (`modeling_jbert.py` beside it).

Shipped inside self-contained jbert exports (`jbert.save_pretrained(..., self_contained=True)`)
and loaded by transformers through `auto_map` with `trust_remote_code=True`. Package data of
jbert: jbert itself never imports this file (nor torch); it copies it into the export.
Works with transformers 4.x and 5.x.
"""

try:  # transformers >= 5 spells it PreTrainedConfig; 4.x only has PretrainedConfig
    from transformers import PreTrainedConfig
except ImportError:
    from transformers import PretrainedConfig as PreTrainedConfig


class JinaBertConfig(PreTrainedConfig):
    """The keys of the released jina-embeddings-v2 `config.json`, plus `qk_norm`: True for the
    jina-embeddings-v2-base-code layout (LayerNorm on q and k, `mlp.up_gated_layer`), False for
    base-en/small-en (`mlp.gated_layers`). `is_decoder` makes attention causal."""

    model_type = "jbert"

    def __init__(
        self,
        vocab_size=30528,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        feed_forward_type="geglu",
        qk_norm=False,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=None,
        max_position_embeddings=8192,
        type_vocab_size=2,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        emb_pooler="mean",
        is_decoder=False,
        position_embedding_type="alibi",
        **kwargs,
    ):
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if position_embedding_type != "alibi":
            raise ValueError(f"position_embedding_type={position_embedding_type!r}: JinaBERT "
                             "uses 'alibi'")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by "
                             f"num_attention_heads={num_attention_heads}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.feed_forward_type = feed_forward_type
        self.qk_norm = qk_norm
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.emb_pooler = emb_pooler
        self.is_decoder = is_decoder  # transformers 5 no longer defines it on every config
        self.position_embedding_type = position_embedding_type
