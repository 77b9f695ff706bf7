"""MLM accuracy by length: one finite entry per length, long lengths on the blockwise path."""

import math

import jax
import numpy as np
import pytest

from jbert.analysis.extrapolation import length_batch, mlm_accuracy_by_length, token_stream
from jbert.data.tokenizer import train_tokenizer
from jbert.model import functional
from jbert.model.config import preset
from jbert.ops import attention


@pytest.fixture(scope="module")
def tokenizer_and_texts():
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "return", "value", "self", "def", "(", ")", ":"]
    texts = [" ".join(rng.choice(words, 3000)) for _ in range(4)]
    return train_tokenizer(texts, vocab_size=320), texts


def test_length_batch_is_one_masked_segment_per_row(tokenizer_and_texts):
    tok, texts = tokenizer_and_texts
    ids, starts = token_stream(texts, tok)
    batch = length_batch(ids, starts, tok, 64, rows=3)
    assert batch["input_ids"].shape == (3, 64)
    assert (batch["segment_ids"] == 1).all() and (batch["attention_mask"] == 1).all()
    masked = (batch["labels"] >= 0).mean()
    assert 0.2 < masked < 0.35  # MaskConfig's 30% (whole words, so a little under)
    with pytest.raises(ValueError, match="only"):
        length_batch(ids[:10], starts[:10], tok, 64, rows=1)


@pytest.mark.slow
def test_accuracy_by_length_up_to_8192_runs_blockwise(tokenizer_and_texts, monkeypatch):
    tok, texts = tokenizer_and_texts
    config = preset("tiny", vocab_size=tok.get_vocab_size(), hidden_dropout_prob=0.0)
    params = functional.init_params(config, jax.random.key(0), "masked_lm")
    dense_lengths = []
    original = attention.reference_attention

    def spy(q_BLHK, *args, **kw):
        dense_lengths.append(q_BLHK.shape[1])
        return original(q_BLHK, *args, **kw)

    monkeypatch.setattr(attention, "reference_attention", spy)
    lengths = (128, 1024, 8192)
    out = mlm_accuracy_by_length(config.replace(attention_impl="reference"), params, texts, tok,
                                 lengths, tokens_per_length=8192)
    assert sorted(out) == list(lengths)
    for n, r in out.items():
        assert math.isfinite(r["loss"]) and 0.0 <= r["accuracy"] <= 1.0 and r["masked"] > 1000
        assert r["rows"] == 8192 // n
    assert out[8192]["attention_impl"] == "blockwise" and out[128]["attention_impl"] == "reference"
    assert dense_lengths and max(dense_lengths) == 128  # 1024 and 8192 never went dense
    # An untrained model is near chance: loss about log(V).
    assert abs(out[128]["loss"] - math.log(config.vocab_size)) < 1.0
    with pytest.raises(ValueError, match="masked_lm"):
        mlm_accuracy_by_length(config, functional.encoder_params(params), texts, tok, (128,))
