"""A tiny randomly initialised sentence-transformers folder, built offline: a 1-layer BERT, a
WordPiece vocabulary of letters and a few words, mean pooling and normalisation, laid out as
the fetched baselines are (modules.json, sentence_bert_config.json, 1_Pooling/config.json)."""

from __future__ import annotations

import json
import string
from pathlib import Path

WORDS = ["def", "return", "add", "read", "file", "sum", "two", "numbers", "sort", "list", "the",
         "a", "path", "open", "join", "find", "item", "load", "x", "y", "(", ")", ":", ",", "+",
         "=", "."]


def make_st_folder(path: Path, *, max_seq_length: int = 16, hidden: int = 16, seed: int = 0
                   ) -> Path:
    """Writes the folder at `path` and returns it; `SentenceTransformer(path)` loads it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
             *(c for c in string.ascii_lowercase + string.digits if c not in WORDS),
             *(f"##{c}" for c in string.ascii_lowercase + string.digits)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(
        path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    modules = [{"idx": i, "name": str(i), "path": where,
                "type": f"sentence_transformers.models.{kind}"}
               for i, (where, kind) in enumerate([("", "Transformer"), ("1_Pooling", "Pooling"),
                                                  ("2_Normalize", "Normalize")])]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    return path
