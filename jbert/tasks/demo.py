"""The end-to-end demo on the running Python's own sources: no downloads, CPU only.

1. data: a corpus, a tokenizer that cuts identifiers into words and docstring/code pairs from
   this whole Python installation (`configs/pretrain_tiny.py`'s data dir, built on first use);
2. MLM pretraining of the tiny model (`configs/pretrain_tiny.py`), its loss against the
   unigram loss;
3. contrastive tuning of the tiny model from scratch on the docstring/code pairs, its dense
   embedding and its sparse head together (`configs/contrastive_tiny.py`: the MLM start was
   measured worse at this size);
4. retrieval evaluation (macro nDCG@10 and MRR@10 over the held-out languages) of the
   untuned backbone and the tuned model (its own score, dense + sparse, and each head alone)
   against BM25 and the dense + BM25 hybrids on the held-out pairs (repos never seen in
   training), with the tuned model's difference from each and its paired bootstrap 95%
   interval;
5. export of the tuned encoder in the released Hugging Face / sentence-transformers layout
   (the sparse head beside it), loaded back to check it gives the same figures.
Every stage resumes from its checkpoints when the demo is run again.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # the repository's, beside jbert/


def run(workdir: str | Path = "runs/demo", *, mlm_steps: int | None = None,
        contrastive_steps: int | None = None) -> dict:
    from jbert.data.pair_batches import load_pairs
    from jbert.evaluation.beir import pairs_to_sets
    from jbert.evaluation.bootstrap import report_intervals
    from jbert.evaluation.embedder import Embedder
    from jbert.evaluation.retrieval import DENSE_SPARSE, SPARSE, evaluate_retrieval
    from jbert.ops.sharding import make_mesh
    from jbert.tasks.contrastive import contrastive_task
    from jbert.tasks.mlm import mlm_task
    from jbert.training.config import load_config
    from jbert.training.export import export_run
    from jbert.training.trainer import train

    workdir = Path(workdir)
    started = time.perf_counter()
    mlm = load_config(str(CONFIGS / "pretrain_tiny.py"))
    mlm = dataclasses.replace(mlm, workdir=str(workdir / "pretrain"),
                              steps=mlm_steps or mlm.steps)
    print(f"[demo] 1-2/5 data from this Python + MLM pretraining ({mlm.steps} steps) "
          f"-> {mlm.workdir}", flush=True)
    task, facts = mlm_task(mlm)
    mlm_summary = train(mlm, task, data_facts=facts)
    if mlm_summary["status"] == "preempted":  # a signal stopped it: the next run resumes
        return {"status": "preempted", "stage": mlm.workdir}

    tune = load_config(str(CONFIGS / "contrastive_tiny.py"))
    tune = dataclasses.replace(tune, workdir=str(workdir / "contrastive"),
                               steps=contrastive_steps or tune.steps)
    print(f"[demo] 3/5 contrastive tuning ({tune.steps} steps) -> {tune.workdir}", flush=True)
    mesh = make_mesh(tune.mesh.data, tune.mesh.fsdp, tune.mesh.tensor)
    task, tune_facts = contrastive_task(tune, mesh)
    if train(tune, task, data_facts=tune_facts)["status"] == "preempted":
        return {"status": "preempted", "stage": tune.workdir}

    export_dir = workdir / "export"
    print(f"[demo] 4/5 export (HF + sentence-transformers layout) -> {export_dir}", flush=True)
    export_run(tune.workdir, export_dir, head="base", overwrite=True)

    print("[demo] 5/5 retrieval on held-out docstring/code pairs", flush=True)
    sets = pairs_to_sets(load_pairs(Path(mlm.data.dir) / "pairs", "test"))
    lengths = dict(max_query_length=tune.contrastive.max_query_length,
                   max_doc_length=tune.contrastive.max_doc_length)
    untuned = evaluate_retrieval(Embedder.from_pretrained(mlm.workdir), sets, bm25=False,
                                 **lengths)["macro"]
    embedder = Embedder.from_pretrained(export_dir)
    report = evaluate_retrieval(embedder, sets, per_query=True, **lengths)
    tuned = report["macro"]
    # The tuned model is its own score: the dense and sparse heads' sum when it has both.
    system = DENSE_SPARSE if embedder.has_sparse else "dense"
    # The tuned model against each other system: macro nDCG@10 difference and its paired
    # bootstrap 95% interval over the held-out queries.
    intervals = report_intervals(report["per_query"], reference=system)["comparisons"]
    headline = ("ndcg@10", "mrr@10", "recall@1", "recall@10")
    heads = {f"tuned_{name}": {k: tuned[name][k] for k in headline}
             for name in ("dense", SPARSE) if embedder.has_sparse}
    result = {
        "data_dir": mlm.data.dir, "pretrain_dir": mlm.workdir, "contrastive_dir": tune.workdir,
        "export_dir": str(export_dir),
        "heldout": {rs.name: {"queries": len(rs.queries), "docs": len(rs.docs)} for rs in sets},
        "mlm_eval_loss": mlm_summary.get("final_eval", {}).get("eval_loss"),
        "mlm_unigram_loss": facts.get("unigram_loss"),
        "tuned_system": system,
        "tuned": {k: tuned[system][k] for k in headline},
        **heads,
        "untuned_backbone": {k: untuned["dense"][k] for k in headline},
        "bm25": {k: tuned["bm25"][k] for k in headline},
        "hybrid_rrf": {k: tuned["rrf"][k] for k in headline},
        "hybrid_linear": {k: tuned["linear"][k] for k in headline},
        "tuned_minus": {name.removeprefix(f"{system} - "): interval
                        for name, interval in intervals.items()},
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (workdir / "demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(headline_line(result), flush=True)
    return result


def headline_line(result: dict) -> str:
    """The demo's result in one line: the tuned model against BM25 with the interval."""
    d = result["tuned_minus"]["bm25"]
    where = ("above BM25 by" if d["low"] > 0 else "below BM25 by" if d["high"] < 0 else
             "within noise of BM25:")
    system = result.get("tuned_system", "dense")
    return (f"[demo] tuned model ({system}) nDCG@10 {result['tuned']['ndcg@10']:.3f}, BM25 "
            f"{result['bm25']['ndcg@10']:.3f}: {where} {d['difference']:+.3f} "
            f"(paired bootstrap 95% interval over the held-out queries "
            f"[{d['low']:+.3f}, {d['high']:+.3f}]) in {result['minutes']} minutes")
