"""The model card facts of a training run, read from what its workdir keeps.

`config.json` gives the recipe (steps, batch, learning rate, temperature, prompts, Matryoshka
sizes, sources), `summary.json` the data sizes (`data`), the hardware (`device_kind`,
`device_count`, `process_count`), the wall time (`wall_time_s`) and the last evaluation
(`final_eval`); `metrics.jsonl` the evaluation of an earlier step when the export is not of the
last one. `export_run` passes the result to `save_pretrained(..., card=...)`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jbert.hf.model_card import ModelCard, Table
from jbert.training.config import TrainConfig, to_json

# Eval set names that are programming languages become tags (others, "all" or a named BEIR set,
# do not).
PROGRAMMING_LANGUAGES = ("c", "cpp", "csharp", "go", "java", "javascript", "kotlin", "php",
                         "python", "ruby", "rust", "scala", "shell", "sql", "swift",
                         "typescript")
CONTRASTIVE_HEADS = ("contrastive", "contrastive_sparse")
# (logged system name, column title) of the retrieval table, in order; absent ones are dropped.
RETRIEVAL_COLUMNS = (("retrieval_ndcg@10", "nDCG@10"), ("bm25_ndcg@10", "BM25 nDCG@10"),
                     ("retrieval_mrr@10", "MRR@10"), ("bm25_mrr@10", "BM25 MRR@10"),
                     ("rrf_ndcg@10", "RRF nDCG@10"), ("linear_ndcg@10", "linear nDCG@10"),
                     ("sparse_ndcg@10", "sparse nDCG@10"),
                     ("dense+sparse_ndcg@10", "dense+sparse nDCG@10"))
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_card(run_dir: str | Path, cfg: TrainConfig, head: str, step: int) -> ModelCard:
    """The card of the run's checkpoint at `step`, trained with head `head`."""
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json")
    data = summary.get("data", {})
    contrastive = head in CONTRASTIVE_HEADS
    evaluation, note = (_retrieval_table(run_dir, cfg, summary, step) if contrastive
                        else _mlm_table(run_dir, summary, step))
    eval_names = sorted(data.get("eval_sets", {}))
    c = cfg.contrastive
    return ModelCard(
        base_model=base_model(cfg.init_from),
        pipeline_tag="sentence-similarity" if contrastive else None,
        programming_languages=tuple(n for n in eval_names if n in PROGRAMMING_LANGUAGES),
        datasets=tuple(s for s in _sources(cfg) if _is_hub_id(s)) if contrastive else (),
        recipe=_recipe(cfg, summary, head, step),
        data=_contrastive_data(cfg, data) if contrastive else _mlm_data(data),
        evaluation=evaluation, evaluation_note=note, config_json=to_json(cfg),
        prompts=c.prompts if contrastive else {},
        matryoshka_dims=c.matryoshka_dims if contrastive else ())


def base_model(init_from: str | None, depth: int = 4) -> str | None:
    """The hub id (or export name) the weights started from: an export's own `base_model`, a
    run directory's `init_from` followed back, a hub id as given; None when the chain ends in a
    fresh initialisation or a local export that names no base."""
    if not init_from or depth == 0:
        return None
    path = Path(init_from)
    if (path / "checkpoints").is_dir():  # a jbert run: where did it start?
        saved = read_json(path / "config.json")
        return base_model(saved.get("init_from"), depth - 1)
    if (path / "config.json").is_file():  # an HF export: its card names its base
        readme = path / "README.md"
        text = readme.read_text() if readme.is_file() else ""
        found = re.search(r"^base_model: *\"?([^\"\n]+)\"?$", text, re.MULTILINE)
        return found.group(1).strip() if found else None
    return init_from if _is_hub_id(init_from) and not path.exists() else None


def _is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.fullmatch(spec)) and not Path(spec).exists()


def _sources(cfg: TrainConfig) -> list[str]:
    specs = [s.strip() for s in cfg.contrastive.sources.split(",") if s.strip()]
    return specs or [str(Path(cfg.data.dir) / "pairs")]


def _hardware(summary: dict[str, Any]) -> str | None:
    if "device_kind" not in summary:
        return None
    text = f"{summary['device_count']} x {summary['device_kind']}"
    processes = summary.get("process_count", 1)
    return text + (f" ({processes} processes)" if processes > 1 else "")


def _recipe(cfg: TrainConfig, summary: dict[str, Any], head: str, step: int) -> Table:
    o, c = cfg.optim, cfg.contrastive
    rows: list[tuple[str, str]] = []
    if head in CONTRASTIVE_HEADS:
        loss = "InfoNCE over the global batch" + (", both directions" if c.symmetric else "")
        if c.hard_negatives:
            loss += f", {c.hard_negatives} hard negatives per pair"
        if c.sparse_weight:
            loss += f"; the sparse head's InfoNCE at weight {c.sparse_weight:g}"
        rows += [("stage", f"contrastive tuning ({loss})")]
    else:
        rows += [("stage", f"{head} pretraining (mask rate {cfg.data.mask_rate:g}"
                           f"{', whole words' if cfg.data.whole_word else ''})")]
    rows.append(("initialised from", f"`{cfg.init_from}`" if cfg.init_from
                 else "random initialisation"))
    rows.append(("steps", f"{step}" + (f" (of {cfg.steps} planned)" if step != cfg.steps
                                       else "")))
    if head in CONTRASTIVE_HEADS:
        batch = f"{cfg.data.batch_size} pairs"
        if c.chunk_size:
            batch += f" (GradCache, chunks of {c.chunk_size})"
        if c.pack:
            batch += ", texts packed into rows"
        rows.append(("batch", batch))
        rows.append(("temperature", f"{c.temperature:g}"
                     + (" (initial, learned)" if c.learn_temperature else "")))
        rows.append(("max length", f"query {c.max_query_length}, document {c.max_doc_length} "
                                   "tokens"))
        if c.matryoshka_dims:
            weights = c.matryoshka_weights or (1.0,) * len(c.matryoshka_dims)
            rows.append(("Matryoshka sizes", ", ".join(
                f"{d} (weight {w:g})" for d, w in zip(c.matryoshka_dims, weights, strict=True))))
        prompts = [f"{name} {json.dumps(text)}" for name, text in c.prompts.items()]
        if prompts:
            rows.append(("prompts", ", ".join(prompts)))
    else:
        rows.append(("batch", f"{cfg.data.batch_size} rows of {cfg.data.seq_len} tokens"))
    if cfg.lora.rank:
        rows.append(("LoRA", f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g} on "
                             f"{', '.join(cfg.lora.targets)}; the base frozen, the adapters "
                             "merged into these weights"))
    if cfg.grad_accum > 1:
        rows.append(("gradient accumulation", f"{cfg.grad_accum} micro-batches"))
    rows.append(("optimiser", f"AdamW, learning rate {o.learning_rate:g}, {o.warmup_steps} "
                              f"warmup steps, {o.decay} decay, weight decay {o.weight_decay:g}"))
    hardware = _hardware(summary)
    if hardware:
        rows.append(("hardware", hardware))
    if "wall_time_s" in summary:
        rows.append(("wall time", f"{summary['wall_time_s'] / 60:.1f} min "
                                  f"({summary['wall_time_s']:.0f} s, to step "
                                  f"{summary.get('end_step', '?')})"))
    return Table(("what", "value"), tuple(rows))


def _contrastive_data(cfg: TrainConfig, data: dict[str, Any]) -> Table:
    pairs = data.get("train_pairs")
    if pairs is None:  # a run from before summary.json recorded them
        return Table(("source", "training pairs"),
                     tuple((f"`{s}`", "not recorded") for s in _sources(cfg)))
    return Table(("source", "training pairs"),
                 tuple((f"`{name}`", f"{n:,}") for name, n in pairs.items())
                 + (("total", f"{sum(pairs.values()):,}"),))


def _mlm_data(data: dict[str, Any]) -> Table | None:
    rows = [(title, f"{data[key]:,}") for key, title in (
        ("train_documents", "training documents"), ("test_documents", "held-out documents"),
        ("excluded_heldout_repos", "repositories held out for retrieval"),
        ("vocab_size", "tokenizer vocabulary")) if key in data]
    return Table(("data", "size"), tuple(rows)) if rows else None


def _evaluation_at(run_dir: Path, summary: dict[str, Any], step: int,
                   key: str) -> dict[str, Any] | None:
    """The evaluation logged at `step`: `final_eval` for the last step, else the eval record
    of `metrics.jsonl` at that step (None when none was logged)."""
    if summary.get("status") == "done" and summary.get("end_step") == step:
        return summary.get("final_eval")
    metrics = run_dir / "metrics.jsonl"
    found = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("step") == step and key in record:
                found = record  # the last one: a resumed run logs again
    return found


def _retrieval_table(run_dir: Path, cfg: TrainConfig, summary: dict[str, Any],
                     step: int) -> tuple[Table | None, str]:
    logged = _evaluation_at(run_dir, summary, step, "retrieval_ndcg@10")
    if not logged or "retrieval_ndcg@10" not in logged:
        return None, ""
    sizes = summary.get("data", {}).get("eval_sets", {})
    names = sorted({k.split("/")[0] for k in logged if "/" in k})
    columns = [(key, title) for key, title in RETRIEVAL_COLUMNS if key in logged]
    rows = []
    for name in names:
        size = sizes.get(name, {})
        rows.append((name, f"{size.get('queries', '')}", f"{size.get('docs', '')}",
                     *(_cell(logged.get(f"{name}/{key}")) for key, _ in columns)))
    rows.append(("**macro**", "", "", *(_cell(logged[key]) for key, _ in columns)))
    named = (f", and the sets named in `contrastive.eval_sets` ({cfg.contrastive.eval_sets})"
             if cfg.contrastive.eval_sets else "")
    note = (f"Retrieval at step {step} on the held-out pairs (repositories never seen in "
            f"training), one set per language{named}: this model (dense, cosine) against BM25 "
            "on the same sets; RRF and linear fuse the two. The macro row averages the sets."
            + (" sparse: the model's sparse head alone; dense+sparse: its own score, the sum "
               "of the two." if cfg.contrastive.sparse_weight else ""))
    return Table(("set", "queries", "documents", *(t for _, t in columns)), tuple(rows)), note


def _mlm_table(run_dir: Path, summary: dict[str, Any], step: int) -> tuple[Table | None, str]:
    logged = _evaluation_at(run_dir, summary, step, "eval_loss")
    if not logged or "eval_loss" not in logged:
        return None, ""
    rows = [("masked-token loss", _cell(logged["eval_loss"]))]
    if "eval_accuracy" in logged:
        rows.append(("masked-token accuracy", _cell(logged["eval_accuracy"])))
    unigram = summary.get("data", {}).get("unigram_loss")
    if unigram is not None:
        rows.append(("unigram loss (baseline)", _cell(unigram)))
    return (Table(("held-out metric", "value"), tuple(rows)),
            f"On the held-out documents at step {step}.")


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
