"""The end-to-end demo on the running Python's own sources: no downloads, a few minutes on CPU.

Steps: build a small corpus + tokenizer + docstring/code pairs from this Python installation,
MLM-pretrain the tiny model, export the encoder in the released Hugging Face layout, load the
export back and embed a few held-out docstring/code pairs. Prints where everything went.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from jbert.train_config import load_config


def run(workdir: str | Path = "runs/demo", *, steps: int | None = None) -> dict:
    from jbert.data.pair_batches import load_pairs
    from jbert.data.tokenizer import load_tokenizer
    from jbert.embedder import Embedder
    from jbert.export import export_run
    from jbert.hf import load_pretrained
    from jbert.pretrain import mlm_task
    from jbert.trainer import train

    workdir = Path(workdir)
    recipe = Path(__file__).resolve().parent.parent / "configs" / "pretrain_tiny.py"
    cfg = load_config(str(recipe))
    cfg = dataclasses.replace(cfg, workdir=str(workdir / "pretrain"),
                              steps=steps or cfg.steps)
    print(f"[demo] 1/3 data + MLM pretraining ({cfg.steps} steps) -> {cfg.workdir}")
    task, facts = mlm_task(cfg)
    summary = train(cfg, task)
    export_dir = workdir / "export"
    print(f"[demo] 2/3 export (encoder, HF + sentence-transformers layout) -> {export_dir}")
    export_run(cfg.workdir, export_dir, head="base", overwrite=True)

    print("[demo] 3/3 load the export and embed held-out docstring/code pairs")
    config, params = load_pretrained(export_dir)
    embedder = Embedder(config, params, load_tokenizer(export_dir), max_length=512)
    pairs = load_pairs(Path(cfg.data.dir) / "pairs", "test")[:64]
    queries = embedder.encode([p["query"] for p in pairs])
    codes = embedder.encode([p["positive"] for p in pairs])
    similarity = queries @ codes.T
    ranks = (similarity > np.diag(similarity)[:, None]).sum(1)
    result = {
        "pretrain_dir": cfg.workdir, "export_dir": str(export_dir), "data_dir": cfg.data.dir,
        "mlm_eval_loss": summary.get("final_eval", {}).get("eval_loss"),
        "mlm_eval_accuracy": summary.get("final_eval", {}).get("eval_accuracy"),
        "unigram_loss": facts.get("unigram_loss"),
        "heldout_pairs": len(pairs),
        "pair_mrr_untuned": float(np.mean(1.0 / (ranks + 1))),
    }
    (workdir / "demo.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result
