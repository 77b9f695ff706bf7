"""Sentence embeddings from text, like the released models' `encode`.

Texts are tokenised in one batch call, sorted by length, cut into batches padded to a few
bucket lengths (powers of two up to `max_length`) and a fixed batch size, so jit compiles at
most one program per bucket; the L2-normalised mean-pooled embeddings come back in input order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
import tokenizers

from jbert import functional
from jbert.config import JinaBertConfig

MIN_BUCKET = 16


def bucket_lengths(max_length: int) -> list[int]:
    """Powers of two from MIN_BUCKET, capped by (and ending at) `max_length`."""
    lengths, length = [], MIN_BUCKET
    while length < max_length:
        lengths.append(length)
        length *= 2
    return lengths + [max_length]


class Embedder:
    """`encode(texts)` for a base model's params and its tokenizer."""

    def __init__(self, config: JinaBertConfig, params: functional.Params,
                 tokenizer: tokenizers.Tokenizer, *, max_length: int = 8192):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length={max_length} exceeds the model's "
                             f"max_position_embeddings={config.max_position_embeddings}")
        self.config = config
        self.params = functional.encoder_params(params)
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.max_length = max_length
        self._embed = jax.jit(functools.partial(functional.embed, config),
                              static_argnames=("normalize",))

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        self.tokenizer.enable_truncation(max_length)
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str] | str, *, max_length: int | None = None,
               batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """Embeddings [N, D] (float32) of `texts`, in input order; a single string gives [D]."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        max_length = self.max_length if max_length is None else max_length
        if not 1 <= max_length <= self.max_length:
            raise ValueError(f"max_length={max_length} must be in [1, {self.max_length}]")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        ids = self.tokenize(texts, max_length)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        buckets = bucket_lengths(max_length)
        out_ND = np.zeros((len(texts), self.config.hidden_size), np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            longest = max(1, max(len(ids[i]) for i in rows))
            length = next(b for b in buckets if b >= longest)
            ids_BL = np.full((batch_size, length), self.config.pad_token_id, np.int32)
            mask_BL = np.zeros((batch_size, length), np.int32)
            for r, i in enumerate(rows):
                ids_BL[r, : len(ids[i])] = ids[i]
                mask_BL[r, : len(ids[i])] = 1
            emb_BD = self._embed(self.params, ids_BL, mask_BL, np.zeros_like(ids_BL),
                                 normalize=normalize)
            out_ND[rows] = np.asarray(emb_BD)[: len(rows)]
        return out_ND[0] if single else out_ND
