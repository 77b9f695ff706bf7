"""Texts laid end to end in rows: best-fit decreasing, the one packer of inference and training.

Longest first, each text goes to the open row with the least room that still holds it, else
opens a new row. A row's texts carry segment ids 1..S (0 on padding); attention stays inside a
text and ALiBi only sees distances, so a packed text's embedding is the one it gets alone.

`jbert.evaluation.embedder` packs into rows of a few power-of-two lengths; the contrastive stage
packs each side of a batch into a fixed [R, L] layout (`pack_fixed`), so one compiled step
serves every batch whatever its lengths (`jbert.data.pair_rows.TokenizedPairs` decides which pairs
fit).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

# A row holds at most length // 8 texts, which fixes the pooled output's segment axis; only texts
# under 8 tokens on average (CLS + SEP + 6) could leave a row part-empty.
MIN_TOKENS_PER_TEXT = 8


def texts_per_row(length: int) -> int:
    """The most texts a packed row of `length` tokens holds (its number of segments)."""
    return max(1, length // MIN_TOKENS_PER_TEXT)


def best_fit(lengths: Sequence[int], row_length_for: Callable[[int], int]
             ) -> tuple[list[list[int]], list[int]]:
    """(text indices per row, each row's length): texts longest first, each into the open row
    with the least room that holds it (and has a segment left), else into a new row of
    `row_length_for(text length)` tokens."""
    order = [int(i) for i in np.argsort([-n for n in lengths], kind="stable")]
    rows: list[list[int]] = []
    row_lengths: list[int] = []
    room: list[tuple[int, int]] = []  # (free positions, row) of the rows still open, sorted
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            free, r = room.pop(at)
        else:
            r, free = len(rows), row_length_for(n)
            rows.append([])
            row_lengths.append(free)
        rows[r].append(i)
        free -= n
        if free and len(rows[r]) < texts_per_row(row_lengths[r]):
            bisect.insort(room, (free, r))
    return rows, row_lengths


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """One side of a batch in a fixed layout: token ids, segment ids (1..S, 0 on padding) and the
    slot of each text (`text_slot[i] = r * S + s - 1`)."""

    ids_RL: np.ndarray
    segment_ids_RL: np.ndarray
    text_slot: np.ndarray


def pack_fixed(ids: Sequence[Sequence[int]], num_rows: int, length: int, pad_id: int
               ) -> PackedRows:
    """Texts (token ids with CLS ... SEP, each at most `length`) into `num_rows` rows of `length`
    tokens; texts that do not fit are an error (the caller decides what waits)."""
    if any(len(x) > length for x in ids):
        raise ValueError(f"a text of {max(len(x) for x in ids)} tokens exceeds rows of {length}")
    lengths = [len(x) for x in ids]
    rows = best_fit(lengths, lambda _: length)[0]
    if len(rows) > num_rows:
        raise ValueError(f"{len(ids)} texts need {len(rows)} rows of {length} tokens "
                         f"({texts_per_row(length)} texts a row), more than {num_rows}")
    segments = texts_per_row(length)
    ids_RL = np.full((num_rows, length), pad_id, np.int32)
    segment_ids_RL = np.zeros((num_rows, length), np.int32)
    text_slot = np.zeros(len(ids), np.int32)
    for r, row in enumerate(rows):
        at = 0
        for s, i in enumerate(row, start=1):
            ids_RL[r, at:at + lengths[i]] = ids[i]
            segment_ids_RL[r, at:at + lengths[i]] = s
            text_slot[i] = r * segments + s - 1
            at += lengths[i]
    return PackedRows(ids_RL, segment_ids_RL, text_slot)
