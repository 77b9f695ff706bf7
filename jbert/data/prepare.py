"""One call from source trees to everything both training stages read: corpus shards, tokenizer,
pairs, and the throughput of the MLM stream and the pair batcher (`summary.json`)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq

from jbert.data.corpus import FileFilter, Source, build_corpus, load_corpus
from jbert.data.mlm import StreamConfig, measure_throughput, mlm_iterator
from jbert.data.pair_batches import PairBatcher, load_pairs, measure_pair_throughput
from jbert.data.pairs import build_pairs
from jbert.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from jbert.errors import InputError


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Sizes and switches of `prepare_data`."""

    max_files: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int = 1 << 20
    test_fraction: float = 0.05
    seed: int = 0
    vocab_size: int = 61056
    tokenizer_max_bytes: int = 64 << 20  # training text, spread evenly over languages
    tokenizer: str | None = None  # an existing tokenizer (file/dir/hub name) instead of training
    split_identifiers: bool = False  # jbert.data.tokenizer.identifier_pre_tokenizer
    lowercase: bool = False  # jbert.data.tokenizer.lowercase_normalizer
    pairs: bool = True
    pair_workers: int = 1
    measure: bool = True


def tokenizer_texts(corpus_dir: str | os.PathLike, max_bytes: int) -> Iterator[str]:
    """Train-split texts, at most `max_bytes / n_languages` bytes per language, so the merges are
    not all Python."""
    corpus = Path(corpus_dir)
    languages = json.loads((corpus / "stats.json").read_text())["files"]
    cap = max_bytes // max(len(languages), 1)
    used: Counter = Counter()
    for f in sorted(corpus.glob("train-*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=["text", "language"]):
            for text, lang in zip(*batch.to_pydict().values(), strict=True):
                if used[lang] < cap:
                    used[lang] += len(text)
                    yield text


# What `prepare_data` writes into its output directory (and replaces there).
BUILD = ("corpus", "tokenizer", "pairs", "summary.json")


def fetched_manifest(root: str | os.PathLike) -> dict | None:
    """What `scripts/fetch_sources.sh` recorded about the packages under `root`
    (`manifest.json`: each one's version, its pin, its archive and the archive's SHA-256);
    None for a folder fetched before the script wrote one."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path}: not JSON (scripts/fetch_sources.sh {root} --manifest-only "
                         "writes it again)") from None


def prepare_data(sources: Sequence[Source], out_dir: str | os.PathLike, cfg: PrepareConfig,
                 *, fetched: dict | None = None) -> dict:
    """Builds `out_dir/{corpus,tokenizer,pairs}` and writes `out_dir/summary.json`; returns it.
    `fetched`, the manifest of the fetched sources (`fetched_manifest`), goes into the summary
    as it is, so a build says which versions of them it read.

    Sources that keep no file are an `InputError` before anything is written (an `out_dir`
    made for the build is removed again)."""
    out = Path(out_dir)
    made = not out.exists()
    summary: dict = {"sources": [dataclasses.asdict(s) for s in sources]}
    if fetched is not None:
        summary["fetched"] = fetched
    t0 = time.perf_counter()
    filt = FileFilter(max_file_bytes=cfg.max_file_bytes)
    try:
        stats = build_corpus(
            sources, out / "corpus", max_files=cfg.max_files, max_bytes=cfg.max_bytes,
            test_fraction=cfg.test_fraction, seed=cfg.seed, filt=filt, allow_empty=False,
        )  # fmt: skip
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    summary["corpus"] = {**stats.to_json(), "seconds": time.perf_counter() - t0}
    _log("corpus", summary["corpus"])

    t0 = time.perf_counter()
    if cfg.tokenizer:
        tok = load_tokenizer(cfg.tokenizer)
    else:
        tok = train_tokenizer(
            tokenizer_texts(out / "corpus", cfg.tokenizer_max_bytes), cfg.vocab_size,
            split_identifiers=cfg.split_identifiers, lowercase=cfg.lowercase,
        )
    save_tokenizer(tok, out / "tokenizer")
    summary["tokenizer"] = {
        "vocab_size": tok.get_vocab_size(),
        "trained": not cfg.tokenizer,
        "split_identifiers": cfg.split_identifiers,
        "lowercase": cfg.lowercase,
        "seconds": time.perf_counter() - t0,
    }
    _log("tokenizer", summary["tokenizer"])

    if cfg.pairs:
        t0 = time.perf_counter()
        summary["pairs"] = build_pairs(out / "corpus", out / "pairs", workers=cfg.pair_workers)
        summary["pairs"]["seconds"] = time.perf_counter() - t0
        _log("pairs", summary["pairs"])

    if cfg.measure:
        docs = load_corpus(out / "corpus", "train")
        stream = mlm_iterator(docs, tok, StreamConfig(seq_len=512, batch_size=32, seed=cfg.seed))
        summary["mlm_stream"] = {
            "seq_len": 512, "batch_size": 32, **measure_throughput(stream, 400)
        }  # fmt: skip
        stream.close()  # its read-ahead threads would otherwise compete with the next measurement
        del stream
        _log("mlm_stream", summary["mlm_stream"])
        if cfg.pairs:
            pairs = load_pairs(out / "pairs", "train")
            if len(pairs) >= 256:
                batcher = PairBatcher(pairs, 256, source="code-pairs", seed=cfg.seed)
                summary["pair_batcher"] = {
                    "batch_size": 256, "max_length": 512,
                    **measure_pair_throughput(batcher, tok, 512, 10),
                }  # fmt: skip
                _log("pair_batcher", summary["pair_batcher"])
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return summary


def _log(stage: str, info: dict) -> None:
    print(f"[prepare] {stage}: {json.dumps(info, sort_keys=True)}", flush=True)
