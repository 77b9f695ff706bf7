"""Pair files and the duplicate-free pair batcher for the contrastive stage.

Batches are dicts `{"query": [str], "positive": [str], "negatives": [[str]] (if the pairs have
them), "source": name}`. With in-batch negatives, a text that occurs twice in one global batch
would be a false negative, so the batcher keeps every text (query, positive, negatives) unique
within a global batch; each process then takes its contiguous slice of that batch.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from jbert.data.hub import locate
from jbert.data.jsonl import iter_jsonl
from jbert.data.tokenizer import tokenize_texts
from jbert.errors import InputError


def read_pair_file(path: str | os.PathLike) -> list[dict]:
    """Reads a jsonl file of `{"query", "positive", "negatives"?}`; bad lines name file and line."""
    return [_check_pair(row, where) for where, row in iter_jsonl(path)]


def _check_pair(row: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise InputError(f"{where}: a {type(row).__name__}, not an object with 'query' and "
                         "'positive'")
    for key in ("query", "positive"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise InputError(f"{where}: key {key!r} missing or not a non-empty string")
    negs = row.get("negatives")
    if negs is not None and not (isinstance(negs, list) and all(isinstance(x, str) for x in negs)):
        raise InputError(f"{where}: key 'negatives' must be a list of strings")
    return row


def load_pairs(spec: str | os.PathLike, split: str = "train") -> list[dict]:
    """Pairs from a jsonl file, a directory with `{split}.jsonl` (as `build_pairs` writes), or a
    hub dataset name with `query`/`positive` columns (needs network access). A missing local
    path is a `FileNotFoundError`, never tried on the hub (`jbert.data.hub.locate`)."""
    where = locate(spec)
    if isinstance(where, Path):
        file = where / f"{split}.jsonl" if where.is_dir() else where
        if file.is_file():
            return read_pair_file(file)
    import datasets

    ds = datasets.load_dataset(str(spec), split=split)
    return [_check_pair(dict(r), f"{spec}[{i}]") for i, r in enumerate(ds)]


def _texts(pair: dict) -> set[str]:
    return {
        pair["query"].strip(),
        pair["positive"].strip(),
        *map(str.strip, pair.get("negatives") or ()),
    }


def check_pair_count(source: str, pairs: Sequence[dict], batch_size: int) -> None:
    """A source needs at least one global batch of pairs (the batcher leaves out what cannot
    fill a last batch; the packed-row planner samples batches)."""
    if len(pairs) < batch_size:
        raise InputError(f"{source}: {len(pairs)} pairs, fewer than one batch of {batch_size}")


def repo_order(pairs: Sequence[dict], rng: np.random.Generator) -> list[int]:
    """Pair indices repository by repository, each one's files one after another, all three
    levels in a random order: consecutive pairs are the code beside each other. Pairs without
    a `repo` / `path` form one group of their own."""
    tree: dict = {}
    for i, p in enumerate(pairs):
        tree.setdefault(p.get("repo"), {}).setdefault(p.get("path"), []).append(i)
    repos, order = list(tree.values()), []
    for r in rng.permutation(len(repos)):
        files = list(repos[r].values())
        for f in rng.permutation(len(files)):
            order += [files[f][k] for k in rng.permutation(len(files[f]))]
    return order


def duplicate_free_batches(
    pairs: Sequence[dict], batch_size: int, rng: np.random.Generator, by_repo: bool = False
) -> list[list[int]]:
    """Index batches in a random order with no text twice in a batch. A pair that would repeat a
    text waits for a later batch; what cannot fill a last full batch is left out. `by_repo`
    fills each batch from consecutive files of one repository (`repo_order`; the batches then
    come in a random order), so the in-batch negatives are the positive's neighbours."""
    pending = deque(repo_order(pairs, rng) if by_repo else rng.permutation(len(pairs)).tolist())
    batches = []
    while len(pending) >= batch_size:
        batch, seen, deferred = [], set(), []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            texts = _texts(pairs[i])
            if texts & seen:
                deferred.append(i)
                continue
            batch.append(i)
            seen |= texts
        pending.extendleft(reversed(deferred))  # first in line for the next batch
        if len(batch) < batch_size:
            break
        batches.append(batch)
    return [batches[k] for k in rng.permutation(len(batches))] if by_repo else batches


class PairBatcher:
    """Epochs of duplicate-free global batches of `batch_size`; this process gets its slice.

    Deterministic for a seed; `get_state()` / `set_state()` (`{"epoch", "batch"}`) resume exactly.
    `by_repo`: batches of neighbouring code (`duplicate_free_batches`).
    """

    def __init__(
        self,
        pairs: Sequence[dict],
        batch_size: int,
        source: str = "pairs",
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_epochs: int | None = None,
        by_repo: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}: must be >= 1")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} not divisible by {process_count} processes")
        check_pair_count(source, pairs, batch_size)
        self.pairs, self.batch_size, self.source, self.seed = pairs, batch_size, source, seed
        self.per_process = batch_size // process_count
        self.offset = process_index * self.per_process
        self.num_epochs, self.by_repo = num_epochs, by_repo
        self.epoch, self.batch = 0, 0
        self._batches: list[list[int]] | None = None
        self.has_negatives = any(p.get("negatives") for p in pairs)

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches is None:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._batches = duplicate_free_batches(self.pairs, self.batch_size, rng,
                                                   self.by_repo)
        return self._batches

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict) -> None:
        self.epoch, self.batch, self._batches = int(state["epoch"]), int(state["batch"]), None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        while self.batch >= len(self._epoch_batches()):
            if not self._batches:  # every order would come out empty: stop, do not spin
                raise InputError(
                    f"{self.source}: no batch of {self.batch_size} pairs without a repeated "
                    f"text (query, positive or negative) among {len(self.pairs)} pairs; use a "
                    "smaller data.batch_size, fewer hard_negatives or more pairs")
            self.epoch, self.batch, self._batches = self.epoch + 1, 0, None
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
        rows = self._epoch_batches()[self.batch][self.offset : self.offset + self.per_process]
        self.batch += 1
        out = {
            "query": [self.pairs[i]["query"] for i in rows],
            "positive": [self.pairs[i]["positive"] for i in rows],
            "source": self.source,
        }
        if self.has_negatives:
            out["negatives"] = [list(self.pairs[i].get("negatives") or []) for i in rows]
        return out


class MultiSourceBatcher:
    """Several pair sources; each global batch comes from one of them, picked at random in
    proportion to its size (the same pick on every process: it depends only on seed and step).
    One source per batch keeps the in-batch negatives as hard as the source makes them; mixed
    batches would let a model separate sources instead of matching texts.
    """

    def __init__(self, batchers: Sequence[PairBatcher], seed: int = 0):
        names = [b.source for b in batchers]
        if len(set(names)) != len(names):
            raise ValueError(f"pair sources need distinct names, got {names}")
        self.batchers, self.seed, self.step = list(batchers), seed, 0
        sizes = np.asarray([len(b.pairs) for b in batchers], np.float64)
        self.weights = sizes / sizes.sum()

    def get_state(self) -> dict:
        return {"step": self.step, "sources": {b.source: b.get_state() for b in self.batchers}}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
        for b in self.batchers:
            b.set_state(state["sources"][b.source])

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        pick = np.random.default_rng([self.seed, self.step]).choice(len(self.batchers),
                                                                     p=self.weights)
        self.step += 1
        return next(self.batchers[pick])


def measure_pair_throughput(
    batcher: Iterator[dict], tokenizer: Tokenizer, max_length: int, num_batches: int
) -> dict[str, float]:
    """Tokens/s of batching and tokenizing queries and positives (`tokenize_texts`)."""
    tokens = texts = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(batcher)
        for key in ("query", "positive"):
            arrays = tokenize_texts(tokenizer, batch[key], max_length)
            tokens += int(arrays["attention_mask"].sum())
            texts += len(batch[key])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "texts_per_s": texts / seconds}
