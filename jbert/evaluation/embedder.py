"""Sentence embeddings from text, like the released models' `encode`.

Texts are tokenised in one batch call (CLS, up to `max_length - 2` tokens, SEP) and packed
(`jbert.data.packing.best_fit`: longest first, each text goes to the open row with the least room
that still holds it, else opens a row of the shortest pack length that holds it). A row's texts
carry segment ids 1..S, attention stays inside a text and ALiBi only sees distances, so a text's
embedding is the one it gets alone, and under 5% of the positions computed are padding on
real mixes of lengths. Shapes stay few for jit: row lengths are powers of two from
`PACK_LENGTH` to `max_length`, and each call holds about `batch_size * PACK_LENGTH` tokens (the
rows left over go in calls of power-of-two row counts, so no call carries an empty row).

`pack=False` is the plain path, kept as the baseline: texts sorted by length, one per row,
`batch_size` rows per call padded to the next power of two (up to half the positions wasted).
The L2-normalised mean-pooled embeddings come back in input order either way.

`prompt_name` / `prompt` prefix every text before tokenisation, as sentence-transformers'
`encode(..., prompt_name=...)` does (an export carries the prompts it was trained with in
`config_sentence_transformers.json`); `dim=N` keeps the first N dimensions of each embedding and
normalises again (Matryoshka sizes).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tokenizers

from jbert.data.packing import best_fit, texts_per_row
from jbert.data.tokenizer import encode_with_specials
from jbert.model import functional
from jbert.model.config import JinaBertConfig

MIN_BUCKET = 16
# Shortest packed row: long enough that a row holds many short texts (little room left at the
# end), short enough that attention over the row stays a small part of the cost.
PACK_LENGTH = 512


def bucket_lengths(max_length: int) -> list[int]:
    """Powers of two from MIN_BUCKET, capped by (and ending at) `max_length`."""
    lengths, length = [], MIN_BUCKET
    while length < max_length:
        lengths.append(length)
        length *= 2
    return lengths + [max_length]


@dataclasses.dataclass(frozen=True)
class EncoderCall:
    """One encoder call: `num_rows` rows of `length` tokens; `rows[r]` lists the texts laid end to
    end in row r, at most `num_segments` (unpacked: one text per row, and a short last call lists
    fewer rows than it computes)."""

    length: int
    num_rows: int
    num_segments: int
    rows: tuple[tuple[int, ...], ...]


def plan_calls(lengths: Sequence[int], max_length: int, batch_size: int,
               pack: bool = True) -> list[EncoderCall]:
    """The encoder calls that embed texts of these token counts (specials included), packed or
    one text per row (see the module docstring)."""
    if not pack:
        order = [int(i) for i in np.argsort([-n for n in lengths], kind="stable")]
        buckets = bucket_lengths(max_length)
        calls = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = next(b for b in buckets if b >= max(1, lengths[rows[0]]))
            calls.append(EncoderCall(length, batch_size, 1, tuple((i,) for i in rows)))
        return calls
    pack_lengths = [b for b in bucket_lengths(max_length) if b >= min(PACK_LENGTH, max_length)]
    rows, row_length = best_fit(lengths, lambda n: next(b for b in pack_lengths if b >= n))
    calls = []
    for length in pack_lengths:
        same = [tuple(rows[r]) for r in range(len(rows)) if row_length[r] == length]
        per_call = max(1, batch_size * pack_lengths[0] // length)
        sizes = [per_call] * (len(same) // per_call)
        rest = len(same) % per_call
        sizes += [1 << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]
        start = 0
        for size in sizes:
            calls.append(EncoderCall(length, size, texts_per_row(length),
                              tuple(same[start : start + size])))
            start += size
    return calls


def truncate(emb_ND: np.ndarray, dim: int, normalize: bool = True) -> np.ndarray:
    """The first `dim` dimensions of each embedding, L2-normalised again with `normalize`."""
    width = emb_ND.shape[-1]
    if not 1 <= dim <= width:
        raise ValueError(f"dim={dim} must be in [1, {width}] (the embedding width)")
    out_Nd = emb_ND[..., :dim]
    if normalize:
        norm_N1 = np.linalg.norm(out_Nd, axis=-1, keepdims=True)
        out_Nd = out_Nd / np.maximum(norm_N1, 1e-12)  # a zero vector stays zero, as in `embed`
    return out_Nd.astype(np.float32, copy=False)


def padding_fraction(calls: Sequence[EncoderCall], lengths: Sequence[int]) -> float:
    """Share of the positions the calls compute that hold no text token."""
    computed = sum(c.num_rows * c.length for c in calls)
    return 1.0 - sum(lengths) / computed if computed else 0.0


@functools.cache
def _compiled_embed(config: JinaBertConfig):
    """One jitted `embed` per model config, shared by its embedders (an evaluation over several
    sets compiles each shape once)."""
    return jax.jit(functools.partial(functional.embed, config),
                   static_argnames=("num_segments", "normalize"))


class Embedder:
    """`encode(texts)` for a base model's params and its tokenizer. `prompts` maps prompt names
    ("query", "document") to the prefixes `encode(..., prompt_name=...)` puts before texts;
    `matryoshka_dims` lists the smaller sizes the model was trained to embed in (for reports:
    `encode(..., dim=N)` takes any N)."""

    def __init__(self, config: JinaBertConfig, params: functional.Params | None,
                 tokenizer: tokenizers.Tokenizer, *, max_length: int = 8192,
                 prompts: Mapping[str, str] | None = None,
                 matryoshka_dims: Sequence[int] = ()):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length={max_length} exceeds the model's "
                             f"max_position_embeddings={config.max_position_embeddings}")
        self.config = config
        # None: weights come later through `set_params`.
        self.params = None if params is None else functional.encoder_params(params)
        # A private copy without the file's padding or truncation settings: lengths are ours.
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.prompts = dict(prompts or {})
        self.matryoshka_dims = tuple(matryoshka_dims)
        self.last_padding_fraction = 0.0  # of the last `encode`'s calls, for benchmarks and tests
        self._embed = _compiled_embed(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, max_length: int | None = None
                        ) -> Embedder:
        """The embedder of an HF export dir (prompts and Matryoshka sizes from its
        `config_sentence_transformers.json`) or a jbert run dir (its latest checkpoint; prompts
        and sizes from its `contrastive` config). `max_length` defaults to the model's
        `max_position_embeddings`."""
        config, params, tokenizer = load_encoder(path)
        prompts, dims = load_inference_settings(path)
        return cls(config, params, tokenizer,
                   max_length=max_length or config.max_position_embeddings, prompts=prompts,
                   matryoshka_dims=dims)

    def prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prefix `encode` puts before texts: `prompt` itself, or the prompt named
        `prompt_name`; "" with neither."""
        if prompt_name is not None and prompt is not None:
            raise ValueError("give prompt_name or prompt, not both")
        if prompt_name is None:
            return prompt or ""
        if prompt_name not in self.prompts:
            raise ValueError(f"unknown prompt_name {prompt_name!r}; this model's prompts: "
                             f"{sorted(self.prompts) or 'none'}")
        return self.prompts[prompt_name]

    def set_params(self, params: functional.Params) -> None:
        """Embed with other weights of the same model (same shapes: nothing recompiles)."""
        self.params = functional.encoder_params(params)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        return encode_with_specials(self.tokenizer, texts, max_length)

    def encode(self, texts: Sequence[str] | str, *, max_length: int | None = None,
               batch_size: int = 32, normalize: bool = True, pack: bool = True,
               prompt_name: str | None = None, prompt: str | None = None,
               dim: int | None = None) -> np.ndarray:
        """Embeddings [N, D] (float32) of `texts`, in input order; a single string gives [D].

        `batch_size` is texts per call unpacked, rows of `PACK_LENGTH` tokens per call packed.
        `prompt_name` (a key of `prompts`) or `prompt` is prefixed to every text (its tokens
        count towards `max_length` and the mean, as in sentence-transformers); `dim` keeps the
        first `dim` dimensions, normalised again when `normalize`.
        """
        single = isinstance(texts, str)
        prefix = self.prompt(prompt_name, prompt)
        texts = [prefix + t for t in ([texts] if single else texts)]
        if dim is not None and not 1 <= dim <= self.config.hidden_size:
            raise ValueError(f"dim={dim} must be in [1, {self.config.hidden_size}] (the "
                             "model's hidden_size)")
        max_length = self.max_length if max_length is None else max_length
        if not 2 <= max_length <= self.max_length:
            raise ValueError(f"max_length={max_length} must be in [2, {self.max_length}]")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        out_ND = self.encode_tokens(self.tokenize(texts, max_length), max_length=max_length,
                                    batch_size=batch_size, normalize=normalize, pack=pack)
        if dim is not None:
            out_ND = truncate(out_ND, dim, normalize)
        return out_ND[0] if single else out_ND

    def encode_tokens(self, ids: Sequence[Sequence[int]], *, max_length: int | None = None,
                      batch_size: int = 32, normalize: bool = True, pack: bool = True
                      ) -> np.ndarray:
        """`encode` of texts already tokenised by `tokenize` (an evaluation that embeds the same
        texts with changing params tokenises them once)."""
        max_length = self.max_length if max_length is None else max_length
        lengths = [len(x) for x in ids]
        calls = plan_calls(lengths, max_length, batch_size, pack)
        out_ND = np.zeros((len(ids), self.config.hidden_size), np.float32)
        for call in calls:
            ids_BL = np.full((call.num_rows, call.length), self.config.pad_token_id, np.int32)
            segment_ids_BL = np.zeros((call.num_rows, call.length), np.int32)
            for r, row in enumerate(call.rows):
                at = 0
                for s, i in enumerate(row, start=1):
                    ids_BL[r, at : at + lengths[i]] = ids[i]
                    segment_ids_BL[r, at : at + lengths[i]] = s
                    at += lengths[i]
            emb_BSD = np.asarray(self._embed(
                self.params, ids_BL, (segment_ids_BL > 0).astype(np.int32),
                np.zeros_like(ids_BL), segment_ids_BL, num_segments=call.num_segments,
                normalize=normalize))
            for r, row in enumerate(call.rows):
                out_ND[list(row)] = emb_BSD[r, : len(row)]
        self.last_padding_fraction = padding_fraction(calls, lengths)
        return out_ND


# -- models from disk -----------------------------------------------------------------------


def load_encoder(path: str | Path) -> tuple[Any, Any, Any]:
    """(model config, encoder params, tokenizer) of an HF export dir or a jbert run dir (its
    latest checkpoint, tokenizer from the run's data dir): the untuned MLM backbone or a tuned
    model, evaluated the same way."""
    from jbert.data.tokenizer import load_tokenizer
    from jbert.hf.load import load_pretrained
    from jbert.model import functional
    from jbert.training.run_dir import is_hf_export, load_run_params, run_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: neither an HF export (config.json, model.safetensors) "
                                "nor a jbert run directory (config.json, checkpoints/)")
    if is_hf_export(path):
        config, params = load_pretrained(path, head="base")
        return config, params, load_tokenizer(path)
    config, params, _, _ = load_run_params(path)
    return config, functional.encoder_params(params), load_tokenizer(
        Path(run_config(path).data.dir) / "tokenizer")


def load_inference_settings(path: str | Path) -> tuple[dict[str, str], tuple[int, ...]]:
    """(prompts by name, Matryoshka sizes) a model was trained with: an HF export's
    `config_sentence_transformers.json` (`prompts`, `matryoshka_dims`; none when the file is
    absent), a jbert run's `contrastive.query_prompt` / `doc_prompt` / `matryoshka_dims`."""
    from jbert.hf.load import load_sentence_transformers_settings
    from jbert.training.run_dir import is_hf_export, run_config

    path = Path(path)
    if is_hf_export(path):
        return load_sentence_transformers_settings(path)
    c = run_config(path).contrastive
    return c.prompts, tuple(sorted(c.matryoshka_dims, reverse=True))  # as an export lists them
