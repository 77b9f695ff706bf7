"""Raw pair batches as token rows for the contrastive step: padded groups, or packed rows.

A `PairFormat` says how a pair's texts become tokens (prompts, length limits, hard negatives
per pair); `TokenizedPairs` turns the batches of `pair_batches` into fixed-shape arrays, and
`plan_pack_rows` sizes the packed layout for the data. The roles of packed slots (`EMPTY`,
`QUERY`, `DOC`, `NEG`) are what the loss reads to match queries with their documents. With a
teacher (`jbert.data.teacher`), each text's teacher embedding rides beside its row or slot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jbert.data.packing import best_fit, pack_fixed, texts_per_row
from jbert.data.teacher import TeacherEmbeddings
from jbert.data.tokenizer import encode_with_specials, special_ids, tokenize_texts
from jbert.errors import ConfigError, InputError

# Roles of the slots of packed rows (`text_role`): queries, their positives, hard negatives.
EMPTY, QUERY, DOC, NEG = 0, 1, 2, 3
SLACK = 1.02  # packed rows' room over the average batch (see plan_pack_rows)
# With SLACK the line drains: more than this many batches waiting means the plan does not fit.
WAITING_BATCHES = 8


@dataclasses.dataclass(frozen=True)
class PairFormat:
    """How a pair's texts become tokens: each query / document prefixed by its prompt and cut
    at its length limit, and the first `hard_negatives` of its negatives taken."""

    query_prompt: str = ""
    doc_prompt: str = ""
    max_query_length: int = 64
    max_doc_length: int = 256
    hard_negatives: int = 0

    @property
    def packed_length(self) -> int:
        """Tokens per packed row: the longer length limit, so any text fits a row alone."""
        return max(self.max_query_length, self.max_doc_length)


def _side_texts(raw: dict, fmt: PairFormat) -> dict[str, tuple[list[str], int]]:
    """{group: (texts with their prompt, token limit)} of a raw pair batch."""
    texts = {"query": ([fmt.query_prompt + t for t in raw["query"]], fmt.max_query_length),
             "doc": ([fmt.doc_prompt + t for t in raw["positive"]], fmt.max_doc_length)}
    if fmt.hard_negatives:
        texts["neg"] = ([fmt.doc_prompt + t for negs in raw["negatives"]
                         for t in negs[:fmt.hard_negatives]], fmt.max_doc_length)
    return texts


def _teacher_rows(raw: dict, teacher: TeacherEmbeddings, fmt: PairFormat
                  ) -> dict[str, np.ndarray]:
    """`{group}_teacher` [rows, T] float16 (as the teacher stored them) of a raw pair batch, row
    for row as `_side_texts` lays the groups out; the texts are looked up without prompts."""
    out = {"query_teacher": teacher.queries(raw["query"]),
           "doc_teacher": teacher.docs(raw["positive"])}
    if fmt.hard_negatives:
        out["neg_teacher"] = teacher.docs([t for negs in raw["negatives"]
                                           for t in negs[:fmt.hard_negatives]])
    return {k: v.astype(np.float16) for k, v in out.items()}


def _pair_texts(raw: dict, tokenizer: Any, fmt: PairFormat) -> list[list[tuple[int, list]]]:
    """Per pair of a raw batch: (role, token ids) of its query, positive and hard negatives,
    prompts prefixed (`_side_texts`), each group tokenised in one call."""
    ids = {k: encode_with_specials(tokenizer, t, n) for k, (t, n) in _side_texts(raw, fmt).items()}
    n_neg = fmt.hard_negatives
    return [[(QUERY, ids["query"][i]), (DOC, ids["doc"][i])]
            + [(NEG, x) for x in ids.get("neg", [])[i * n_neg:(i + 1) * n_neg]]
            for i in range(len(ids["query"]))]


def fitting_prefix(counts: Sequence[Sequence[int]], num_rows: int, length: int) -> int:
    """How many pairs from the front of a line fit `num_rows` packed rows of `length` tokens;
    `counts[i]` are pair i's texts' token counts (query, document, negatives)."""
    def fits(k: int) -> bool:
        return len(best_fit([n for c in counts[:k] for n in c], lambda _: length)[0]) <= num_rows

    low, high = 0, len(counts)
    while low < high:  # rows needed grow with the prefix: the longest that fits
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


class TokenizedPairs:
    """Raw pair batches (`PairBatcher` or `MultiSourceBatcher`) -> fixed-shape token arrays,
    prompts prefixed.

    Padded (default): one text per row, `{group}_ids` / `{group}_mask` [B, L] for the groups
    query, doc (and neg). Packed (`pack_rows` = R): every text of the batch, queries and
    documents alike, laid end to end in R rows of the longer length limit (`text_ids`,
    `text_mask`, `text_segment_ids` [R, L]) with each slot's pair id and role (`text_pair`,
    `text_role` [R, S]: -1 / EMPTY for an empty slot, hard negatives with ids of their own).
    The rows are planned for the average batch with a little room (`plan_pack_rows`): pairs
    that do not fit wait for the next batch (first in line there), so no text is cut, a step
    holds `data.batch_size` pairs on average, and the waiting pairs are part of the data
    position (`get_state`), so resume stays exact. Pair ids are unique over the global batch:
    process p's start at p * R * S.

    With `teacher`, each text's teacher embedding (float16, width T) comes along in the same
    layout: `{group}_teacher` [B, T] padded (row i of a group's rows is row i here), packed
    `text_teacher` [R, S, T] (slot for slot; empty slots zero), so every split of the rows
    (processes, devices, micro-batches, GradCache chunks) keeps them aligned.
    """

    def __init__(self, batcher: Iterator[dict], tokenizer: Any, fmt: PairFormat, *,
                 pack_rows: int | None = None, process_index: int = 0,
                 process_count: int = 1, teacher: TeacherEmbeddings | None = None):
        self.batcher, self.tokenizer, self.fmt = batcher, tokenizer, fmt
        self.pack_rows, self.teacher = pack_rows, teacher
        self.process_index, self.process_count = process_index, process_count
        self.pad_id = special_ids(tokenizer).pad
        self.waiting: list[dict] = []  # pairs of earlier batches that did not fit (packed)

    def __next__(self) -> dict[str, np.ndarray]:
        raw = next(self.batcher)
        if self.pack_rows is None:
            out = {}
            for key, (batch_texts, length) in _side_texts(raw, self.fmt).items():
                arrays = tokenize_texts(self.tokenizer, batch_texts, length, pad_to=length)
                out[f"{key}_ids"] = arrays["input_ids"]
                out[f"{key}_mask"] = arrays["attention_mask"]
            if self.teacher is not None:
                out |= _teacher_rows(raw, self.teacher, self.fmt)
            return out
        return self._packed(raw)

    def _packed(self, raw: dict) -> dict[str, np.ndarray]:
        fmt, n_neg = self.fmt, self.fmt.hard_negatives
        fresh = [{"query": q, "positive": d, "negatives": list(negs[:n_neg])}
                 for q, d, negs in zip(raw["query"], raw["positive"],
                                       raw.get("negatives") or [[]] * len(raw["query"]),
                                       strict=True)]
        # A waiting pair sharing a text with this batch would be a false negative: it waits on.
        taken = {t for p in fresh for t in (p["query"], p["positive"], *p["negatives"])}
        clash = [p for p in self.waiting
                 if {p["query"], p["positive"], *p["negatives"]} & taken]
        line = [p for p in self.waiting if p not in clash] + fresh
        texts = _pair_texts({"query": [p["query"] for p in line],
                             "positive": [p["positive"] for p in line],
                             "negatives": [p["negatives"] for p in line]}, self.tokenizer, fmt)
        length = fmt.packed_length
        k = fitting_prefix([[len(ids) for _, ids in t] for t in texts], self.pack_rows, length)
        if k == 0:
            raise ValueError(f"a single pair does not fit {self.pack_rows} packed rows; plan "
                             "them with plan_pack_rows")
        self.waiting = clash + line[k:]
        if len(self.waiting) > WAITING_BATCHES * len(fresh):  # planned to drain: never grows
            raise InputError(
                f"{len(self.waiting)} pairs wait for packed rows, more than {WAITING_BATCHES} "
                f"batches of {len(fresh)}: {self.pack_rows} rows of {length} tokens take too few "
                "pairs per step for these texts (plan them with plan_pack_rows)")
        segments = texts_per_row(length)
        # Pair ids: process p's pairs are p * R * S + i (query and positive alike, i < R * S);
        # its negatives take the block after every process's pairs, (P + p) * R * S + ..., so no
        # query has their id. Text j of pair i is its query (j = 0), its positive (1) or its
        # negative j - 2, whose id is the (i * n + j - 2)-th of that block.
        first = self.process_index * self.pack_rows * segments
        first_neg = (self.process_count + self.process_index) * self.pack_rows * segments
        flat = [(role, ids, first + i if role != NEG else first_neg + i * n_neg + j - 2)
                for i, t in enumerate(texts[:k]) for j, (role, ids) in enumerate(t)]
        packed = pack_fixed([ids for _, ids, _ in flat], self.pack_rows, length, self.pad_id)
        pair_RS = np.full((self.pack_rows, segments), -1, np.int32)
        role_RS = np.full((self.pack_rows, segments), EMPTY, np.int32)
        pair_RS.reshape(-1)[packed.text_slot] = [pair for _, _, pair in flat]
        role_RS.reshape(-1)[packed.text_slot] = [role for role, _, _ in flat]
        out = {"text_ids": packed.ids_RL,
               "text_mask": (packed.segment_ids_RL > 0).astype(np.int32),
               "text_segment_ids": packed.segment_ids_RL, "text_pair": pair_RS,
               "text_role": role_RS}
        if self.teacher is not None:
            out["text_teacher"] = self._slot_teacher(line[:k], packed.text_slot, segments)
        return out

    def _slot_teacher(self, pairs: list[dict], text_slot: np.ndarray, segments: int
                      ) -> np.ndarray:
        """[R, S, T]: the teacher embedding of each packed text at its slot, in `flat`'s order
        (per pair its query, positive and negatives); empty slots zero."""
        is_query = np.asarray([j == 0 for p in pairs for j in range(2 + len(p["negatives"]))])
        teacher_XT = np.zeros((len(is_query), self.teacher.dim), np.float16)
        teacher_XT[is_query] = self.teacher.queries([p["query"] for p in pairs])
        teacher_XT[~is_query] = self.teacher.docs([t for p in pairs
                                                   for t in (p["positive"], *p["negatives"])])
        slots_RST = np.zeros((self.pack_rows, segments, self.teacher.dim), np.float16)
        slots_RST.reshape(-1, self.teacher.dim)[text_slot] = teacher_XT
        return slots_RST

    def get_state(self) -> dict:
        if self.pack_rows is None:
            return self.batcher.get_state()
        return {"batcher": self.batcher.get_state(), "waiting": list(self.waiting)}

    def set_state(self, state: dict) -> None:
        if self.pack_rows is None:
            if "batcher" in state:
                raise ConfigError("contrastive.pack=false: this data position is of a packed "
                                  "run; resume it with contrastive.pack=true")
            self.batcher.set_state(state)
            return
        if "batcher" not in state:
            raise ConfigError("contrastive.pack=true: this data position is of a padded run; "
                              "resume it with contrastive.pack=false")
        self.batcher.set_state(state["batcher"])
        self.waiting = [dict(p) for p in state["waiting"]]


def plan_pack_rows(sources: dict[str, list[dict]], tokenizer: Any, fmt: PairFormat,
                   local_pairs: int, row_multiple: int, seed: int = 0, batches: int = 32
                   ) -> int:
    """Packed rows per batch: the fewest (the mean need of random batches of `local_pairs`
    pairs, times a factor from 1.00 up, rounded up to `row_multiple`) that take `SLACK` times
    `local_pairs` pairs per step on average from a long line of every source (`batches`
    simulated steps), so that the waiting line of `TokenizedPairs` drains. Never more rows than
    texts."""

    rng = np.random.default_rng(seed)
    length = fmt.packed_length
    samples = []  # per source: the token counts of each sampled pair's texts
    mean_rows = 0.0
    for pairs in sources.values():
        size = min(len(pairs), max(4096, 4 * local_pairs))
        sample = [pairs[i] for i in rng.choice(len(pairs), size, replace=False)]
        raw = {"query": [p["query"] for p in sample], "positive": [p["positive"] for p in sample],
               "negatives": [p.get("negatives", []) for p in sample]}
        counts = [[len(ids) for _, ids in t] for t in _pair_texts(raw, tokenizer, fmt)]
        needs = [len(best_fit([n for i in rng.choice(size, min(local_pairs, size), replace=False)
                               for n in counts[i]], lambda _: length)[0]) for _ in range(8)]
        mean_rows = max(mean_rows, float(np.mean(needs)))
        samples.append(counts)
    most = local_pairs * (2 + fmt.hard_negatives)

    def rows_at(factor: float) -> int:
        return min(most, -(-int(np.ceil(mean_rows * factor)) // row_multiple) * row_multiple)

    def capacity(rows: int) -> float:
        """Pairs a step takes when the line is long, on average (the least over sources)."""
        return min(float(np.mean([
            fitting_prefix([counts[i] for i in rng.choice(len(counts), min(
                2 * local_pairs, len(counts)), replace=False)], rows, length)
            for _ in range(batches)])) for counts in samples)

    # A little more room than a batch needs on average, so the waiting line drains (at exactly
    # the need it would grow like a random walk).
    factor = 1.0
    while rows_at(factor) < most and capacity(rows_at(factor)) < SLACK * local_pairs:
        factor += 0.01
    return rows_at(factor)
