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
def _compiled_encode(config: JinaBertConfig):
    """One jitted `encode` per model config, shared by its embedders (an evaluation over several
    sets compiles each shape once)."""
    return jax.jit(functools.partial(functional.encode, config),
                   static_argnames=("num_segments", "normalize"))


class Embedder:
    """`encode(texts)` for a base model's params and its tokenizer. `prompts` maps prompt names
    ("query", "document") to the prefixes `encode(..., prompt_name=...)` puts before texts;
    `matryoshka_dims` lists the smaller sizes the model was trained to embed in (for reports:
    `encode(..., dim=N)` takes any N).

    Params with a sparse head (`{"bert": encoder, "sparse": head}`, or a contrastive run's)
    also give `encode_sparse(texts)`, and the model's own score of a query and a document is
    `dense_scale * cosine + sparse dot product` (`score`): `dense_scale` is 1 / the InfoNCE
    temperature the two were trained at."""

    def __init__(self, config: JinaBertConfig, params: functional.Params | None,
                 tokenizer: tokenizers.Tokenizer, *, max_length: int = 8192,
                 prompts: Mapping[str, str] | None = None,
                 matryoshka_dims: Sequence[int] = (), dense_scale: float = 1.0):
        if max_length > config.max_position_embeddings:
            raise ValueError(f"max_length={max_length} exceeds the model's "
                             f"max_position_embeddings={config.max_position_embeddings}")
        self.config = config
        # None: weights come later through `set_params`.
        self.params, self.sparse_params = None, None
        if params is not None:
            self.set_params(params)
        self.dense_scale = dense_scale
        # A private copy without the file's padding or truncation settings: lengths are ours.
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_length = max_length
        self.prompts = dict(prompts or {})
        self.matryoshka_dims = tuple(matryoshka_dims)
        self.last_padding_fraction = 0.0  # of the last `encode`'s calls, for benchmarks and tests
        self._encode = _compiled_encode(config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, max_length: int | None = None
                        ) -> Embedder:
        """The embedder of an HF export dir (prompts and Matryoshka sizes from its
        `config_sentence_transformers.json`) or a jbert run dir (its latest checkpoint; prompts
        and sizes from its `contrastive` config). `max_length` defaults to the model's
        `max_position_embeddings`."""
        config, params, tokenizer, dense_scale = load_encoder(path)
        prompts, dims = load_inference_settings(path)
        return cls(config, params, tokenizer,
                   max_length=max_length or config.max_position_embeddings, prompts=prompts,
                   matryoshka_dims=dims, dense_scale=dense_scale)

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
        self.sparse_params = functional.sparse_head(params)

    @property
    def has_sparse(self) -> bool:
        return self.sparse_params is not None

    @property
    def model_params(self) -> functional.Params:
        """The weights as `set_params` takes them: the encoder's, with the sparse head
        `{"bert": encoder, "sparse": head}`."""
        if self.sparse_params is None:
            return self.params
        return {"bert": self.params, "sparse": self.sparse_params}

    def score(self, dense_QN: np.ndarray, sparse_QN: np.ndarray) -> np.ndarray:
        """The model's own scores from its two: `dense_scale * cosine + sparse dot product`,
        the sum of the logits its two InfoNCE terms were trained on."""
        return self.dense_scale * np.asarray(dense_QN) + np.asarray(sparse_QN)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        return encode_with_specials(self.tokenizer, texts, max_length)

    def _texts(self, texts: Sequence[str] | str, max_length: int | None, batch_size: int,
               prompt_name: str | None, prompt: str | None) -> tuple[list[str], int]:
        """`encode`'s checks: the prompted texts and the max length."""
        prefix = self.prompt(prompt_name, prompt)
        texts = [prefix + t for t in ([texts] if isinstance(texts, str) else texts)]
        max_length = self.max_length if max_length is None else max_length
        if not 2 <= max_length <= self.max_length:
            raise ValueError(f"max_length={max_length} must be in [2, {self.max_length}]")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive")
        return texts, max_length

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
        if dim is not None and not 1 <= dim <= self.config.hidden_size:
            raise ValueError(f"dim={dim} must be in [1, {self.config.hidden_size}] (the "
                             "model's hidden_size)")
        prompted, max_length = self._texts(texts, max_length, batch_size, prompt_name, prompt)
        out_ND = self.encode_tokens(self.tokenize(prompted, max_length), max_length=max_length,
                                    batch_size=batch_size, normalize=normalize, pack=pack)
        if dim is not None:
            out_ND = truncate(out_ND, dim, normalize)
        return out_ND[0] if isinstance(texts, str) else out_ND

    def encode_sparse(self, texts: Sequence[str] | str, *, max_length: int | None = None,
                      batch_size: int = 32, prompt_name: str | None = None,
                      prompt: str | None = None) -> np.ndarray:
        """The sparse head's vectors [N, V] (float32; a text's token ids hold their weights,
        the rest 0) of `texts`, in input order; a single string gives [V]. Arguments as
        `encode`'s. Scores are dot products."""
        if not self.has_sparse:
            raise ValueError("this model has no sparse head (train with contrastive.sparse_weight"
                             " > 0 to get one)")
        prompted, max_length = self._texts(texts, max_length, batch_size, prompt_name, prompt)
        out_NV = self.represent_tokens(self.tokenize(prompted, max_length),
                                       max_length=max_length, batch_size=batch_size,
                                       sparse=True)["sparse"]
        return out_NV[0] if isinstance(texts, str) else out_NV

    def encode_tokens(self, ids: Sequence[Sequence[int]], *, max_length: int | None = None,
                      batch_size: int = 32, normalize: bool = True, pack: bool = True
                      ) -> np.ndarray:
        """`encode` of texts already tokenised by `tokenize` (an evaluation that embeds the same
        texts with changing params tokenises them once)."""
        return self.represent_tokens(ids, max_length=max_length, batch_size=batch_size,
                                     normalize=normalize, pack=pack)["dense"]

    def represent_tokens(self, ids: Sequence[Sequence[int]], *, max_length: int | None = None,
                         batch_size: int = 32, normalize: bool = True, pack: bool = True,
                         sparse: bool = False) -> dict[str, np.ndarray]:
        """{"dense": [N, D]} of texts already tokenised, and with `sparse` (the model must have
        the head) "sparse": [N, V] as well, from the same encoder calls."""
        max_length = self.max_length if max_length is None else max_length
        lengths = [len(x) for x in ids]
        calls = plan_calls(lengths, max_length, batch_size, pack)
        params = self.model_params if sparse else self.params
        out = {"dense": np.zeros((len(ids), self.config.hidden_size), np.float32)}
        if sparse:
            out["sparse"] = np.zeros((len(ids), self.config.vocab_size), np.float32)
        for call in calls:
            ids_BL = np.full((call.num_rows, call.length), self.config.pad_token_id, np.int32)
            segment_ids_BL = np.zeros((call.num_rows, call.length), np.int32)
            for r, row in enumerate(call.rows):
                at = 0
                for s, i in enumerate(row, start=1):
                    ids_BL[r, at : at + lengths[i]] = ids[i]
                    segment_ids_BL[r, at : at + lengths[i]] = s
                    at += lengths[i]
            got = self._encode(params, ids_BL, (segment_ids_BL > 0).astype(np.int32),
                               np.zeros_like(ids_BL), segment_ids_BL,
                               num_segments=call.num_segments, normalize=normalize)
            for key, value in got.items():
                x_BSX = np.asarray(value)
                for r, row in enumerate(call.rows):
                    out[key][list(row)] = x_BSX[r, : len(row)]
        self.last_padding_fraction = padding_fraction(calls, lengths)
        return out


# -- models from disk -----------------------------------------------------------------------


def load_encoder(path: str | Path) -> tuple[Any, Any, Any, float]:
    """(model config, encoder params, tokenizer, dense scale) of an HF export dir or a jbert
    run dir (its latest checkpoint, tokenizer from the run's data directory): the untuned MLM
    backbone or a tuned model, evaluated the same way. A model with a sparse head gives
    `{"bert": encoder, "sparse": head}` and 1 / its temperature as the dense scale (from an
    export's `sparse_head.safetensors`, or the run's); others 1.0."""
    from jbert.data.tokenizer import load_tokenizer
    from jbert.hf.load import load_pretrained
    from jbert.hf.sparse_head import load_sparse_head
    from jbert.training.run_dir import is_hf_export, load_run_params, run_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: neither an HF export (config.json, model.safetensors) "
                                "nor a jbert run directory (config.json, checkpoints/)")
    if is_hf_export(path):
        config, params = load_pretrained(path, head="base")
        sparse = load_sparse_head(path, config.hidden_size)
        if sparse is not None:
            return config, {"bert": params, "sparse": sparse[0]}, load_tokenizer(path), sparse[1]
        return config, params, load_tokenizer(path), 1.0
    config, params, _, _ = load_run_params(path)
    cfg = run_config(path)
    tokenizer = load_tokenizer(Path(cfg.data.dir) / "tokenizer")
    head = functional.sparse_head(params)
    if head is None:
        return config, functional.encoder_params(params), tokenizer, 1.0
    from jbert.training.export import dense_scale

    return (config, {"bert": functional.encoder_params(params), "sparse": head}, tokenizer,
            dense_scale(cfg.contrastive, params))


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
