"""MLM pretraining: the masked-LM loss and the task the shared trainer runs for
`python -m train.pretrain`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp

from jbert.data.corpus import default_sources, load_corpus
from jbert.data.mlm import MaskConfig, StreamConfig, mlm_iterator
from jbert.data.pairs import heldout_repos
from jbert.data.prepare import PrepareConfig, prepare_data
from jbert.data.tokenizer import load_tokenizer
from jbert.errors import InputError
from jbert.model import functional, losses
from jbert.model.config import JinaBertConfig
from jbert.training.config import DataConfig, TrainConfig
from jbert.training.flops import encoder_flops_per_token
from jbert.training.step import Batch, LossFn
from jbert.training.trainer import Task

# Tokenizer training text of a build from the Python installation: the merges settle well
# before this, and the whole installation would take minutes.
TOKENIZER_MAX_BYTES = 16 << 20


def labelled_positions(labels_BL: jax.Array, max_predictions: int) -> jax.Array:
    """Indices [B, K] of the first K labelled positions of each row (then unlabelled ones)."""
    order_BL = jnp.argsort(labels_BL < 0, axis=1, stable=True)
    return order_BL[:, :max_predictions]


def mlm_loss_fn(config: JinaBertConfig, max_predictions: int | None = None) -> LossFn:
    """Masked-LM cross entropy over the labelled positions, plus accuracy and token counts.

    With `max_predictions` K, the vocabulary projection runs only at the first K labelled
    positions of each row; labels beyond K in a row would be dropped, so K should sit well
    above the masking rate times the length (the trainer counts `dropped`).
    """

    def loss(params, batch: Batch, dropout_rng):
        labels_BL = batch["labels"]
        positions_BK = (None if max_predictions is None
                        else labelled_positions(labels_BL, max_predictions))
        out = functional.apply(
            config, params, batch["input_ids"], batch["attention_mask"],
            batch.get("token_type_ids"), batch.get("segment_ids"), head="masked_lm",
            positions_BK=positions_BK, dropout_rng=dropout_rng)
        logits_BLV = out["logits"]
        dropped = jnp.zeros((), jnp.int32)
        if positions_BK is not None:
            kept_BL = jnp.take_along_axis(labels_BL, positions_BK, axis=1)
            dropped = jnp.sum(labels_BL >= 0) - jnp.sum(kept_BL >= 0)
            labels_BL = kept_BL
        loss_sum, count = losses.cross_entropy(logits_BLV, labels_BL)
        correct = jnp.sum((jnp.argmax(logits_BLV, -1) == labels_BL) & (labels_BL >= 0))
        return loss_sum, {"loss_sum": loss_sum, "count": count, "correct": correct,
                          "dropped": dropped, "tokens": jnp.sum(batch["attention_mask"])}

    return loss


def mlm_flops_per_token(cfg: TrainConfig) -> float:
    """Training FLOPs per token of the MLM step: the encoder, and the decoder at the
    `data.max_predictions` positions of each row it projects."""
    return encoder_flops_per_token(
        cfg.model, cfg.data.seq_len, decoder_rows=cfg.model.vocab_size,
        decoder_fraction=(cfg.data.max_predictions or cfg.data.seq_len) / cfg.data.seq_len)


def ensure_data(cfg: DataConfig) -> Path:
    """The prepared data directory; built from the running Python's sources when allowed."""
    root = Path(cfg.dir)
    if (root / "corpus").is_dir() and (root / "tokenizer").is_dir():
        if cfg.prepare_if_missing:
            check_built_as_asked(root, cfg)
        return root
    if not cfg.prepare_if_missing:
        raise FileNotFoundError(
            f"data.dir={cfg.dir}: no corpus/ and tokenizer/ there; run "
            f"`python -m train.prepare_corpus --out {cfg.dir}` or set "
            "--config.data.prepare_if_missing=true")
    prepare_data(default_sources(), root, PrepareConfig(
        max_bytes=cfg.prepare_max_bytes, vocab_size=cfg.prepare_vocab_size,
        tokenizer_max_bytes=min(cfg.prepare_max_bytes or TOKENIZER_MAX_BYTES,
                                TOKENIZER_MAX_BYTES),
        split_identifiers=cfg.prepare_split_identifiers, lowercase=cfg.prepare_lowercase,
        seed=cfg.seed, measure=False,
        pair_workers=os.cpu_count() or 1))
    return root


def check_built_as_asked(root: Path, cfg: DataConfig) -> None:
    """Refuses a data dir whose tokenizer is not the one the `prepare_*` settings would build
    (an earlier build of the same dir under other settings), so a model never trains on a
    tokenizer it was not configured for; the dir is left as it is."""
    summary_file = root / "summary.json"
    if not summary_file.is_file():
        return  # built by hand or by an older version: nothing recorded to compare
    built = json.loads(summary_file.read_text()).get("tokenizer", {})
    built = {"vocab_size": built.get("vocab_size"),
             "split_identifiers": built.get("split_identifiers", False),
             "lowercase": built.get("lowercase", False)}
    asked = {"vocab_size": cfg.prepare_vocab_size,
             "split_identifiers": cfg.prepare_split_identifiers,
             "lowercase": cfg.prepare_lowercase}
    if built != asked:
        what = ", ".join(f"{key}={built[key]} (data.prepare_{key}={asked[key]})"
                         for key in asked if built[key] != asked[key])
        raise InputError(
            f"data.dir={cfg.dir} was built with another tokenizer: {what}; remove that dir to "
            "build it anew, or set --config.data.dir to another one")


def unigram_loss(train_texts, eval_batches, tokenizer, max_texts: int = 2000) -> float:
    """Cross entropy (nats) of the eval batches' masked tokens under the training corpus's
    token frequencies (add-one smoothed): the MLM loss of a model that ignores context."""
    counts = Counter()
    for enc in tokenizer.encode_batch(list(itertools.islice(train_texts, max_texts))):
        counts.update(enc.ids)
    vocab = tokenizer.get_vocab_size()
    total = sum(counts.values()) + vocab
    losses = [-math.log((counts[int(t)] + 1) / total)
              for batch in eval_batches for t in batch["labels"][batch["labels"] >= 0]]
    return sum(losses) / max(len(losses), 1)


def mlm_task(cfg: TrainConfig, process_count: int = 1) -> tuple[Task, dict]:
    """The MLM task and facts about its data (sizes, the unigram loss of the held-out split)."""
    root = ensure_data(cfg.data)
    tokenizer = load_tokenizer(root / "tokenizer")
    if tokenizer.get_vocab_size() > cfg.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.get_vocab_size()} tokens ({root / 'tokenizer'})")
    train_docs = load_corpus(root / "corpus", "train")
    held_out_repos = heldout_repos(root / "pairs")
    if held_out_repos:  # the pairs' held-out code stays unseen by MLM too (jbert.data.split)
        train_docs = train_docs.filter(lambda repos: [r not in held_out_repos for r in repos],
                                       input_columns=["repo"], batched=True)
    test_docs = load_corpus(root / "corpus", "test")
    stream = StreamConfig(
        seq_len=cfg.data.seq_len, batch_size=cfg.data.batch_size // process_count,
        docs_per_chunk=cfg.data.docs_per_chunk, seed=cfg.data.seed,
        mask=MaskConfig(rate=cfg.data.mask_rate, whole_word=cfg.data.whole_word))
    held_out = dataclasses.replace(stream, shuffle=False, num_epochs=1, seed=cfg.data.seed + 1)

    def train_data(process_index, process_count, state):
        return mlm_iterator(train_docs, tokenizer, stream, process_index, process_count, state)

    def eval_data(process_index, process_count):
        it = mlm_iterator(test_docs, tokenizer, held_out, process_index, process_count)
        batches = list(itertools.islice(it, cfg.eval_batches))
        it.close()
        return batches

    loss_fn = mlm_loss_fn(cfg.model, cfg.data.max_predictions)
    task = Task(head="masked_lm", loss_fn=loss_fn, train_data=train_data,
                eval_data=eval_data if len(test_docs) else None,
                flops_per_token=mlm_flops_per_token(cfg))
    facts = {"data_dir": str(root), "vocab_size": tokenizer.get_vocab_size(),
             "train_documents": len(train_docs),
             "excluded_heldout_repos": len(held_out_repos), "test_documents": len(test_docs)}
    if len(test_docs):
        facts["unigram_loss"] = unigram_loss((r["text"] for r in train_docs), eval_data(0, 1),
                                             tokenizer)
    return task, facts
