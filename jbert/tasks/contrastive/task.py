"""The contrastive Task: pair sources (with mined hard negatives), token rows, the step
(plain or GradCache) and the retrieval evaluation with its BM25 reference line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jbert.data.hub import locate
from jbert.data.pair_batches import (
    MultiSourceBatcher,
    PairBatcher,
    check_pair_count,
    load_pairs,
)
from jbert.data.pair_rows import PairFormat, TokenizedPairs, plan_pack_rows
from jbert.data.teacher import TeacherEmbeddings, load_teacher
from jbert.data.tokenizer import load_tokenizer
from jbert.errors import ConfigError, InputError
from jbert.evaluation.beir import pairs_to_sets
from jbert.evaluation.retrieval import SetEvaluator, logged_metrics, named_evaluators
from jbert.tasks.contrastive.gradcache import cached_grad_fn
from jbert.tasks.contrastive.loss import contrastive_loss_fn, sparse_slot_bound, summarize
from jbert.tasks.mining import cached_bm25_negatives
from jbert.training.config import ContrastiveConfig, TrainConfig
from jbert.training.export import dense_scale
from jbert.training.flops import encoder_flops_per_token
from jbert.training.step import GradFn, LossFn
from jbert.training.trainer import Task


def contrastive_head(c: ContrastiveConfig) -> str:
    """The head a contrastive run trains: with the sparse head when `sparse_weight` > 0."""
    return "contrastive_sparse" if c.sparse_weight > 0 else "contrastive"


def pair_format(c: ContrastiveConfig) -> PairFormat:
    """How this config's pairs become tokens (prompts, length limits, hard negatives)."""
    return PairFormat(query_prompt=c.query_prompt, doc_prompt=c.doc_prompt,
                      max_query_length=c.max_query_length, max_doc_length=c.max_doc_length,
                      hard_negatives=c.hard_negatives)


def load_sources(cfg: TrainConfig, root: Path) -> dict[str, list[dict]]:
    """Training pairs per source (`contrastive.sources`, default `<data.dir>/pairs`), with hard
    negatives mined by BM25 (cached beside the pairs) where the pairs have fewer than asked
    for."""
    specs = [s.strip() for s in cfg.contrastive.sources.split(",") if s.strip()]
    key = "contrastive.sources" if specs else "data.dir"
    specs = specs or [str(root / "pairs")]
    names = [Path(spec).name or spec for spec in specs]
    for name in names:  # batchers, their state and the logs know a source by this name
        if names.count(name) > 1:
            raise ConfigError(f"contrastive.sources: two sources are named {name!r} "
                              f"({cfg.contrastive.sources!r}); give their folders distinct names")
    files = [locate(spec, f"{key}: {spec}", inside="train.jsonl") for spec in specs]
    sources = {}
    for name, file in zip(names, files, strict=True):
        pairs = load_pairs(file, "train")
        if cfg.contrastive.hard_negatives:
            pairs = cached_bm25_negatives(pairs, cfg.contrastive.hard_negatives, file)
            pairs = [p for p in pairs if len(p["negatives"]) >= cfg.contrastive.hard_negatives]
        sources[name] = pairs
    return sources


def load_distill_teacher(c: ContrastiveConfig, sources: dict[str, list[dict]]
                         ) -> TeacherEmbeddings | None:
    """The teacher of `contrastive.teacher` (None without one), checked to hold every text the
    batches will look up (each query, positive and hard negative of every source), so a
    teacher written for other pairs stops the run before its first step."""
    if not c.teacher:
        return None
    try:
        teacher = load_teacher(c.teacher)
        queries = {p["query"] for pairs in sources.values() for p in pairs}
        docs = {t for pairs in sources.values() for p in pairs
                for t in (p["positive"], *(p.get("negatives") or ())[:c.hard_negatives])}
        for side, texts in ((teacher.queries, sorted(queries)), (teacher.docs, sorted(docs))):
            for at in range(0, len(texts), 8192):  # a lookup each, not one array of them all
                side(texts[at:at + 8192])
    except InputError as e:
        raise InputError(f"contrastive.teacher: {e}") from None
    return teacher


def gradcache_chunks(cfg: TrainConfig) -> int:
    """GradCache chunks per step: the global batch over `contrastive.chunk_size` (1 without)."""
    c = cfg.contrastive
    if c.chunk_size and cfg.data.batch_size % c.chunk_size:
        raise ConfigError(f"contrastive.chunk_size={c.chunk_size} does not divide "
                          f"data.batch_size={cfg.data.batch_size}")
    return cfg.data.batch_size // c.chunk_size if c.chunk_size else 1


def contrastive_step_fns(cfg: TrainConfig, mesh: Mesh | None = None
                         ) -> tuple[LossFn, GradFn | None, float]:
    """What the trainer's step runs for this config: (loss, GradCache gradient or None,
    training FLOPs per token). Needs no data: `jbert.tasks.aot` compiles the same step. Refuses
    a chunk size or Matryoshka sizes that do not fit the batch and the model."""
    c = cfg.contrastive
    chunks = gradcache_chunks(cfg)
    mean_len = (c.max_query_length + (1 + c.hard_negatives) * c.max_doc_length) / (
        2 + c.hard_negatives)
    recompute = 4 / 3 if c.chunk_size else 1.0  # GradCache runs every forward twice
    # Packed sparse vectors are scored over as many slots as a batch has texts at most.
    slots = (sparse_slot_bound(cfg.data.batch_size * (2 + c.hard_negatives), mesh)
             if c.pack and c.sparse_weight else None)
    return (contrastive_loss_fn(cfg.model, c, mesh, slots),
            cached_grad_fn(cfg.model, c, mesh, chunks, slots) if c.chunk_size else None,
            recompute * encoder_flops_per_token(cfg.model, int(mean_len)))


def contrastive_task(cfg: TrainConfig, mesh: Mesh | None = None) -> tuple[Any, dict]:
    """The contrastive Task (plain or GradCache step, retrieval eval with the BM25 line) and
    facts about its data."""
    c = cfg.contrastive
    # The step first: a chunk size or Matryoshka sizes that do not fit stop the run here.
    loss_fn, grad_fn, flops_per_token = contrastive_step_fns(cfg, mesh)
    root = Path(cfg.data.dir)
    if not root.is_dir():  # always local: never tried as a hub name
        raise FileNotFoundError(f"data.dir={cfg.data.dir}: no such directory (build one with "
                                f"`python -m train.prepare_corpus --out {cfg.data.dir}`)")
    tokenizer = load_tokenizer(root / "tokenizer")
    # Evaluation first: a bad `eval_sets` entry stops the run before mining writes its cache.
    held_out = load_pairs(locate(c.eval_pairs or root / "pairs",
                                 f"contrastive.eval_pairs: {c.eval_pairs}" if c.eval_pairs
                                 else f"data.dir: {root / 'pairs'}", inside="test.jsonl"), "test")
    sets = pairs_to_sets(held_out, c.eval_max_pairs, seed=cfg.data.seed)
    # Tokenised (after the run's prompts) and compiled once; sizes reported per Matryoshka dim.
    eval_kwargs = dict(max_query_length=c.max_query_length, max_doc_length=c.max_doc_length,
                       query_prompt=c.query_prompt, doc_prompt=c.doc_prompt,
                       dims=c.matryoshka_dims)
    evaluator = SetEvaluator(cfg.model, tokenizer, sets, **eval_kwargs)
    bm25 = evaluator()  # BM25 alone: the reference line, the same at every eval
    # The user's own sets (`contrastive.eval_sets`), each logged under its name.
    named = named_evaluators(c.eval_sets, cfg.model, tokenizer, max_queries=c.eval_max_pairs,
                             seed=cfg.data.seed, reserved=[rs.name for rs in sets],
                             **eval_kwargs)
    sources = load_sources(cfg, root)
    teacher = load_distill_teacher(c, sources)

    fmt = pair_format(c)
    chunks = gradcache_chunks(cfg)
    pack_rows = None
    for name, pairs in sources.items():  # before planning packed rows, which sample batches
        check_pair_count(name, pairs, cfg.data.batch_size)
    if c.pack:
        processes = jax.process_count()
        batch_devices = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        # Global rows split into the GradCache chunks, each over the batch devices.
        multiple = chunks * batch_devices
        pack_rows = plan_pack_rows(sources, tokenizer, fmt, cfg.data.batch_size // processes,
                                   multiple // np.gcd(multiple, processes), seed=cfg.data.seed)

    def train_data(process_index, process_count, state):
        batchers = [PairBatcher(pairs, cfg.data.batch_size, source=name, seed=cfg.data.seed,
                                process_index=process_index, process_count=process_count,
                                by_repo=c.repo_batches)
                    for name, pairs in sources.items()]
        batcher = (batchers[0] if len(batchers) == 1
                   else MultiSourceBatcher(batchers, seed=cfg.data.seed))
        tokenized = TokenizedPairs(batcher, tokenizer, fmt, pack_rows=pack_rows,
                                   process_index=process_index, process_count=process_count,
                                   teacher=teacher)
        if state is not None:
            tokenized.set_state(state)
        return tokenized

    def evaluate(params) -> dict[str, float]:
        # The model's own score weighs the dense cosine by 1 / the temperature it has now.
        scale = dense_scale(c, params) if c.sparse_weight else 1.0
        for ev in (evaluator, *named.values()):
            if ev.embedder is not None:
                ev.embedder.dense_scale = scale
        out = logged_metrics(evaluator(params, linear=False)) if sets else {}
        for name, ev in named.items():  # one set (a BEIR dir): its macro keys say it all
            out.update(logged_metrics(ev(params, linear=False), f"{name}/", len(ev.sets) > 1))
        return out

    task = Task(head=contrastive_head(c), loss_fn=loss_fn, train_data=train_data, evaluate=evaluate,
                summarize=summarize, grad_fn=grad_fn, flops_per_token=flops_per_token)
    facts = {"data_dir": str(root), "train_pairs": {k: len(v) for k, v in sources.items()},
             "eval_sets": bm25["sizes"], **logged_metrics(bm25)}
    for name, ev in named.items():
        alone = ev()  # BM25 on the named set
        facts[f"{name}/eval_sets"] = alone["sizes"]
        facts.update(logged_metrics(alone, f"{name}/", len(ev.sets) > 1))
    if pack_rows is not None:
        facts["pack_rows"] = pack_rows  # per process, for `data.batch_size` pairs
    if teacher is not None:
        facts["teacher"] = {"dir": c.teacher, "model": teacher.meta.get("teacher"),
                            "dim": teacher.dim}
    return task, facts
