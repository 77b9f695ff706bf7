"""ALiBi length extrapolation: held-out MLM loss and accuracy as a function of sequence length.

The held-out documents are tokenised and concatenated into one token stream (with the word
starts the MLM stream uses); each length L takes consecutive windows `CLS tokens SEP` of L
tokens from the start of that stream, one document segment per row, so attention spans the whole
window. Every length sees (about) the same text, masked with `jbert.data.mlm.mask_tokens` and a
fixed seed, so the curve shows the effect of length alone. Lengths at or above `blockwise_from`
run the memory-efficient blockwise attention: no [L, L] array, so 8192 tokens fit on a laptop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tokenizers import Tokenizer

from jbert.data.mlm import MaskConfig, _word_starts, mask_tokens
from jbert.data.tokenizer import special_ids
from jbert.model.config import JinaBertConfig
from jbert.ops.attention import resolve_impl
from jbert.tasks.mlm import mlm_loss_fn
from jbert.training.step import eval_step

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_MASK = MaskConfig()  # the pretraining recipe's masking: 30%, whole words


def token_stream(texts: Sequence[str], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, word starts) of the texts concatenated, without special tokens."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    ids = [np.asarray(e.ids, np.int32) for e in encodings]
    starts = [_word_starts(e.word_ids) for e in encodings]
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, bool)
    return np.concatenate(ids), np.concatenate(starts)


def length_batch(ids: np.ndarray, word_starts: np.ndarray, tokenizer: Tokenizer, length: int,
                 rows: int, *, mask: MaskConfig = DEFAULT_MASK, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """An MLM batch [rows, length] of consecutive windows of the token stream, masked."""
    special = special_ids(tokenizer)
    body = length - 2
    if len(ids) < body:
        raise ValueError(f"length {length}: the held-out texts have only {len(ids)} tokens; "
                         "pass longer or more documents")
    rows = max(1, min(rows, len(ids) // body))
    vocab = np.arange(tokenizer.get_vocab_size(with_added_tokens=True))
    random_pool = np.setdiff1d(vocab, np.asarray(special.all))
    rng = np.random.default_rng([seed, length])
    out = {k: np.zeros((rows, length), np.int32) for k in ("input_ids", "labels")}
    for r in range(rows):
        ids_L = np.concatenate([[special.cls], ids[r * body:(r + 1) * body], [special.sep]])
        starts_L = np.concatenate([[True], word_starts[r * body:(r + 1) * body], [True]])
        starts_L[1] = True
        maskable_L = ~np.isin(ids_L, np.asarray(special.all))
        out["input_ids"][r], out["labels"][r] = mask_tokens(
            ids_L.astype(np.int32), maskable_L, starts_L, rng, mask, special.mask, random_pool)
    ones = np.ones((rows, length), np.int32)
    return {**out, "attention_mask": ones, "segment_ids": ones.copy(),
            "token_type_ids": np.zeros_like(ones)}


@functools.lru_cache(maxsize=16)
def _eval_fn(config: JinaBertConfig, max_predictions: int):
    """The trainer's eval step (dropout off, summed metrics) on the MLM loss, jitted once."""
    return jax.jit(functools.partial(eval_step, loss_fn=mlm_loss_fn(config, max_predictions)))


def mlm_accuracy_by_length(config: JinaBertConfig, params: Any, texts: Sequence[str],
                           tokenizer: Tokenizer, lengths: Sequence[int] = DEFAULT_LENGTHS, *,
                           tokens_per_length: int = 8192, rows_per_call: int | None = None,
                           blockwise_from: int = 1024, block_size: int | None = None,
                           mask: MaskConfig = DEFAULT_MASK, seed: int = 0
                           ) -> dict[int, dict[str, Any]]:
    """For each length: `loss` (nats per masked token), `accuracy`, `masked` (tokens scored),
    `rows` and `attention_impl` (the path that ran). `params` are the `masked_lm` head's.
    Lengths >= `blockwise_from` always run blockwise; shorter ones the config's choice.

    About `tokens_per_length` tokens are scored per length (at least one row), so the cost is
    about the same at every length; 8192 on the tiny model takes seconds on CPU.
    """
    if "cls" not in params:
        raise ValueError("mlm_accuracy_by_length needs the masked_lm head's params (no `cls`)")
    ids, starts = token_stream(texts, tokenizer)
    results = {}
    for length in sorted(lengths):
        impl = "blockwise" if length >= blockwise_from else config.attention_impl
        model = config.replace(attention_impl=impl,
                               attention_block_size=block_size or config.attention_block_size)
        rows = max(1, tokens_per_length // length)
        batch = length_batch(ids, starts, tokenizer, length, rows, mask=mask, seed=seed)
        # Whole-word masking never exceeds ceil(rate * maskable) labels in a row.
        k = min(length, math.ceil(mask.rate * length) + 1)
        step = rows_per_call or batch["input_ids"].shape[0]
        fn = _eval_fn(model, k)
        sums = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0, "dropped": 0.0}
        for start in range(0, batch["input_ids"].shape[0], step):
            part = {key: v[start:start + step] for key, v in batch.items()}
            out = jax.device_get(fn(params, part))
            for key in sums:
                sums[key] += float(out[key])
        count = max(sums["count"], 1.0)
        results[int(length)] = {
            "loss": sums["loss_sum"] / count, "accuracy": sums["correct"] / count,
            "masked": int(sums["count"]), "rows": int(batch["input_ids"].shape[0]),
            "attention_impl": resolve_impl(impl, length, model.attention_block_size)}
    return results
