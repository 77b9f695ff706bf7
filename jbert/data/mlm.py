"""The MLM stream: documents -> batch-tokenized -> packed rows with segment ids -> masked [B, L].

Pipeline (grain, all state small and JSON-able):
  document indices [process_index::process_count] -> shuffle(seed) per epoch -> chunks of
  `docs_per_chunk` documents -> tokenize the chunk with `encode_batch`, pack it, mask it -> rows
  -> batches of B rows.

Packing fills rows: a document is laid down as `CLS piece SEP` pieces, each with its own segment
id and never straddling two rows; a piece that does not fit in the row's remaining space is cut
there and its remainder opens the next row as a new piece. Only when the space left holds fewer
than `MIN_PIECE_TOKENS` tokens is the row closed with padding instead.

A chunk is packed on its own (its last row is padded, never filled from the next chunk) and masked
with an RNG seeded by (seed, process_index, chunk index). A chunk's rows are therefore a pure
function of its index, which is what makes the grain state (`{parent position, rows already
taken from the current chunk}`) enough to resume exactly. The cost is one part-filled row per
chunk (see `measure_throughput`'s `fill`).

Batch contract (all int32, [B, L]): `input_ids` (masked), `labels` (original id where masked,
-100 elsewhere), `segment_ids` (1..n per packed document piece, 0 on padding), `attention_mask`
(1 real, 0 padding), `token_type_ids` (zeros). Attention must stay within equal segment ids.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from tokenizers import Tokenizer

from jbert.data.labels import IGNORE_INDEX
from jbert.data.tokenizer import SpecialIds, special_ids
from jbert.errors import InputError

# A piece shorter than this is not worth its CLS and SEP: at 8 tokens the specials are a fifth of
# the piece and the masked tokens still see some context. Rows end at most this short of full.
MIN_PIECE_TOKENS = 8


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """BERT masking: `rate` of the maskable tokens are predicted; of those, `mask_fraction` become
    the mask token, `random_fraction` a random token, the rest stay as they are."""

    rate: float = 0.3
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    whole_word: bool = True  # jina's recipe: all pieces of a word are masked together


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """Shape and order of the MLM stream (per process)."""

    seq_len: int = 512  # L
    batch_size: int = 32  # B, rows per process per batch
    docs_per_chunk: int = 256  # documents tokenized and packed together
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    shuffle: bool = True
    drop_remainder: bool = True
    prefetch_chunks: int = 2  # chunks prepared ahead by background threads (0: none)
    mask: MaskConfig = MaskConfig()


@dataclasses.dataclass
class PackedRows:
    """Packed rows before masking; `doc_index` (-1 on padding) is for tests and debugging."""

    input_ids: np.ndarray  # [N, L] int32
    segment_ids: np.ndarray  # [N, L] int32
    word_start: np.ndarray  # [N, L] bool: first token of a word (specials are their own word)
    doc_index: np.ndarray  # [N, L] int32


def pack_documents(
    docs: Sequence[Sequence[int]],
    seq_len: int,
    ids: SpecialIds,
    word_starts: Sequence[Sequence[bool]] | None = None,
) -> PackedRows:
    """Packs token lists (no specials) into rows of `seq_len`, in order, filling each row.

    A document becomes `CLS piece SEP` pieces of at most `seq_len - 2` tokens, each with its own
    segment id and inside one row. A piece that does not fit is cut to fill the row (its
    remainder starts the next row) unless fewer than `MIN_PIECE_TOKENS` tokens would fit; then
    the row is closed with padding. The first token of every piece starts a word.
    """
    L = seq_len
    if L < 3:
        raise ValueError(f"seq_len {L} leaves no room for a token between CLS and SEP")
    rows_ids, rows_seg, rows_ws, rows_doc = [], [], [], []
    cur_ids = np.full(L, ids.pad, np.int32)
    cur_seg, cur_ws, cur_doc = np.zeros(L, np.int32), np.zeros(L, bool), np.full(L, -1, np.int32)
    used = n_seg = 0

    def flush():
        nonlocal cur_ids, cur_seg, cur_ws, cur_doc, used, n_seg
        rows_ids.append(cur_ids)
        rows_seg.append(cur_seg)
        rows_ws.append(cur_ws)
        rows_doc.append(cur_doc)
        cur_ids = np.full(L, ids.pad, np.int32)
        cur_seg, cur_ws = np.zeros(L, np.int32), np.zeros(L, bool)
        cur_doc = np.full(L, -1, np.int32)
        used = n_seg = 0

    for d, toks in enumerate(docs):
        ws_doc = np.ones(len(toks), bool) if word_starts is None else np.asarray(word_starts[d])
        start = 0
        while start < len(toks):
            room = L - used - 2  # tokens that fit between a CLS and a SEP in this row
            rest = len(toks) - start
            if used and rest > room and room < MIN_PIECE_TOKENS:
                flush()
                room = L - 2
            k = min(rest, room)
            n = k + 2
            n_seg += 1
            cur_ids[used : used + n] = [ids.cls, *toks[start : start + k], ids.sep]
            cur_seg[used : used + n] = n_seg
            cur_ws[used : used + n] = True
            cur_ws[used + 1 : used + n - 1] = ws_doc[start : start + k]
            cur_ws[used + 1] = True  # a piece starts a word even when the cut fell inside one
            cur_doc[used : used + n] = d
            used += n
            start += k
    if used:
        flush()
    if not rows_ids:
        empty = np.zeros((0, L), np.int32)
        return PackedRows(empty, empty, empty.astype(bool), empty)
    return PackedRows(np.stack(rows_ids), np.stack(rows_seg), np.stack(rows_ws), np.stack(rows_doc))


def mask_tokens(
    input_ids_L: np.ndarray,
    maskable_L: np.ndarray,
    word_start_L: np.ndarray,
    rng: np.random.Generator,
    cfg: MaskConfig,
    mask_id: int,
    random_pool: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks one row; returns (masked input_ids, labels). Only `maskable_L` positions are touched.

    The count is `rate * maskable` with stochastic rounding; with `whole_word`, words (a start and
    the maskable tokens up to the next start) are drawn in random order and taken while they fit.
    """
    labels_L = np.full_like(input_ids_L, IGNORE_INDEX)
    positions = np.flatnonzero(maskable_L)
    if positions.size == 0:
        return input_ids_L.copy(), labels_L
    target = int(np.floor(cfg.rate * positions.size + rng.random()))
    if cfg.whole_word:
        # word number of each maskable position; a new word at each word start
        word_of = np.cumsum(word_start_L[positions]) - 1
        word_of -= word_of[0]  # the first maskable token opens a word even without a start flag
        n_words = int(word_of[-1]) + 1
        sizes = np.bincount(word_of, minlength=n_words)
        chosen_words, total = [], 0
        for w in rng.permutation(n_words):
            if total >= target:
                break
            if total + sizes[w] <= target:
                chosen_words.append(w)
                total += sizes[w]
        selected = positions[np.isin(word_of, chosen_words)]
    else:
        selected = rng.choice(positions, size=target, replace=False)
    labels_L[selected] = input_ids_L[selected]
    out_L = input_ids_L.copy()
    r = rng.random(selected.size)
    to_mask = selected[r < cfg.mask_fraction]
    to_random = selected[(r >= cfg.mask_fraction) & (r < cfg.mask_fraction + cfg.random_fraction)]
    out_L[to_mask] = mask_id
    out_L[to_random] = rng.choice(random_pool, size=to_random.size)
    return out_L, labels_L


class _Chunker:
    """Index chunk -> masked rows. A pure function of (chunk index, document indices)."""

    def __init__(self, texts, tokenizer: Tokenizer, cfg: StreamConfig, process_index: int):
        self.texts, self.tokenizer, self.cfg = texts, tokenizer, cfg
        self.process_index = process_index
        self.ids = special_ids(tokenizer)
        vocab = np.arange(tokenizer.get_vocab_size(with_added_tokens=True))
        self.random_pool = np.setdiff1d(vocab, np.asarray(self.ids.all))
        self.special = np.asarray(self.ids.all)

    def __call__(self, chunk_index: int, doc_indices: np.ndarray) -> list[dict[str, np.ndarray]]:
        texts = _fetch_texts(self.texts, doc_indices)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        docs = [e.ids for e in encodings]
        word_starts = [_word_starts(e.word_ids) for e in encodings]
        packed = pack_documents(docs, self.cfg.seq_len, self.ids, word_starts)
        rng = np.random.default_rng([self.cfg.seed, self.process_index, int(chunk_index)])
        rows = []
        for n in range(packed.input_ids.shape[0]):
            ids_L, seg_L = packed.input_ids[n], packed.segment_ids[n]
            maskable_L = (seg_L > 0) & ~np.isin(ids_L, self.special)
            masked_L, labels_L = mask_tokens(
                ids_L, maskable_L, packed.word_start[n], rng, self.cfg.mask,
                self.ids.mask, self.random_pool,
            )  # fmt: skip
            rows.append(
                {
                    "input_ids": masked_L,
                    "labels": labels_L.astype(np.int32),
                    "segment_ids": seg_L,
                    "attention_mask": (seg_L > 0).astype(np.int32),
                    "token_type_ids": np.zeros_like(seg_L),
                }
            )
        return rows


def _word_starts(word_ids: list[int | None]) -> np.ndarray:
    # Tokens of one pre-tokenizer word (a run of letters, digits or punctuation, with its leading
    # space) share a word id; the first of each run starts a word.
    w = np.array([-1 if i is None else i for i in word_ids], np.int64)
    starts = np.ones(len(w), bool)
    starts[1:] = (w[1:] != w[:-1]) | (w[1:] < 0)
    return starts


def _fetch_texts(texts, doc_indices: np.ndarray) -> list[str]:
    idx = [int(i) for i in doc_indices]
    if hasattr(texts, "column_names"):  # a datasets.Dataset: one batched read of the column
        return list(texts.select_columns(["text"])[idx]["text"])
    return [texts[i] for i in idx]


class _Rows(grain.experimental.FlatMapTransform):
    """A chunk's rows, one by one. Chunks whose documents hold no token give none; `limit` such
    chunks in a row (two epochs' worth) mean every document is empty, which is an error rather
    than an endless search for a row."""

    max_fan_out = 1 << 20

    def __init__(self, limit: int, documents: int):
        self.limit, self.documents, self.empty_run = limit, documents, 0

    def flat_map(self, element):
        self.empty_run = 0 if element else self.empty_run + 1
        if self.empty_run >= self.limit:
            raise InputError(f"the MLM stream read {self.limit} chunks of documents in a row "
                             f"without a token: all {self.documents} documents of this process "
                             "are empty after tokenization")
        return element


def mlm_dataset(
    texts: Sequence[str] | Any,
    tokenizer: Tokenizer,
    cfg: StreamConfig = StreamConfig(),
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """The MLM stream of batches for one process (see the module docstring).

    `texts` is a sequence of strings or a `datasets.Dataset` with a `text` column. Process `p` of
    `n` reads documents p, p+n, p+2n...: the shards are disjoint and cover the corpus.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if cfg.batch_size < 1 or cfg.docs_per_chunk < 1:
        raise ValueError(f"batch_size {cfg.batch_size} and docs_per_chunk {cfg.docs_per_chunk} "
                         "must be >= 1")
    chunker = _Chunker(texts, tokenizer, cfg, process_index)
    docs = grain.MapDataset.range(len(texts))[process_index::process_count]
    if not len(docs):
        raise InputError(f"no documents for process {process_index} of {process_count} "
                         f"({len(texts)} in the corpus)")
    empty_limit = 2 * -(-len(docs) // cfg.docs_per_chunk) + 1  # chunks: two epochs and one
    rows_of = _Rows(empty_limit, len(docs))
    if cfg.shuffle:
        docs = docs.shuffle(seed=cfg.seed)  # reshuffled each epoch by grain (seed + epoch)
    docs = docs.repeat(cfg.num_epochs)
    chunks = docs.batch(cfg.docs_per_chunk).map_with_index(chunker)
    # grain's default read-ahead (hundreds of elements on 16 threads) would tokenize hundreds of
    # chunks up front; a couple are enough to hide one chunk's latency.
    read = grain.ReadOptions(
        num_threads=min(cfg.prefetch_chunks, 2), prefetch_buffer_size=cfg.prefetch_chunks
    )
    rows = grain.experimental.FlatMapIterDataset(chunks.to_iter_dataset(read),
                                                 rows_of)
    return rows.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)


def mlm_iterator(
    texts: Sequence[str] | Any,
    tokenizer: Tokenizer,
    cfg: StreamConfig = StreamConfig(),
    process_index: int = 0,
    process_count: int = 1,
    state: dict | None = None,
) -> grain.DatasetIterator:
    """An iterator over `mlm_dataset`, restored to `state` (from `get_state()`) when given."""
    it = iter(mlm_dataset(texts, tokenizer, cfg, process_index, process_count))
    if state is not None:
        it.set_state(state)
    return it


def measure_throughput(batches: Iterator[dict], num_batches: int) -> dict[str, float]:
    """Tokens per second a stream produces over its next `num_batches` batches, first-chunk
    latency included (so span several chunks for a steady-state figure).

    `tokens` counts real (non-padding) positions; `fill` is their share of all positions.
    """
    real = total = rows = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        mask = next(batches)["attention_mask"]
        real += int(mask.sum())
        total += mask.size
        rows += mask.shape[0]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": real,
        "tokens_per_s": real / seconds,
        "rows_per_s": rows / seconds,
        "fill": real / total if total else 0.0,
    }
