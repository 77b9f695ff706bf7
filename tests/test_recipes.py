"""The recipes under configs/: each builds the config it always built (a golden file), and the CPU
research recipe (scripts/recipe_small.sh) runs as a few-step smoke run: every stage's command
with the recipe's own configs, on a small data dir built from this Python's sources."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from jbert.training.config import TrainConfig, load_config, load_recipe, recipe_variants

ROOT = Path(__file__).resolve().parent.parent
# Every recipe and variant as `dataclasses.asdict`, written from the recipes of commit 5b04c02
# (before they were rewritten with replace_paths). A deliberate change to a recipe edits its
# values here by hand, so the diff shows what the recipe now runs.
GOLDEN = json.loads((ROOT / "tests" / "assets" / "recipes.json").read_text())


def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim.learning_rate": 1e-3, ...}` from nested dicts; tuples as lists, as in JSON."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


@pytest.mark.parametrize("spec", sorted(GOLDEN))
def test_each_recipe_builds_the_config_it_always_built(spec):
    built = flat(dataclasses.asdict(load_config(str(ROOT / spec))))
    golden = flat(GOLDEN[spec])
    assert {k: v for k, v in built.items() if k in golden} == golden
    # A field added since keeps its default in every recipe that predates it.
    default = flat(dataclasses.asdict(TrainConfig()))
    assert {k: v for k, v in built.items() if k not in golden} == {
        k: default[k] for k in built if k not in golden}


def test_every_variant_a_recipe_lists_is_pinned():
    recipes = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))
    listed = {f"configs/{p.name}" + (f":{v}" if v else "")
              for p in recipes for v in (None, *(recipe_variants(load_recipe(str(p))) or ()))}
    assert listed == set(GOLDEN)


def test_the_small_recipes_data_argument_moves_every_path_under_it():
    config = load_config(f"{ROOT}/configs/contrastive_small.py:hardneg,data=/d/x")
    assert config.data.dir == "/d/x" and config.contrastive.sources == "/d/x/pairs-mined"
    assert load_config(f"{ROOT}/configs/pretrain_small.py:data=/d/x").data.dir == "/d/x"


@pytest.mark.slow
def test_small_recipe_chain_runs_end_to_end(tmp_path, capsys):
    from jbert.data.corpus import default_sources
    from jbert.data.prepare import PrepareConfig, prepare_data
    from train import contrastive, evaluate, mine_negatives, pretrain

    data = tmp_path / "data"
    summary = prepare_data(default_sources(), data, PrepareConfig(
        max_bytes=3 << 20, vocab_size=512, tokenizer_max_bytes=3 << 20, measure=False))
    assert summary["pairs"]["pairs"]["test"]
    small = [f"--config.data.dir={data}", "--config.model.vocab_size=512",
             "--config.progress=false"]
    mlm = pretrain.main(["--config", f"{ROOT}/configs/pretrain_small.py:smoke", *small,
                         f"--config.workdir={tmp_path / 'mlm'}"])
    assert mlm["status"] == "done" and mlm["data"]["excluded_heldout_repos"] > 0
    tune = [f"--config.init_from={tmp_path / 'mlm'}", *small]
    first = contrastive.main(["--config", f"{ROOT}/configs/contrastive_small.py:smoke", *tune,
                              f"--config.workdir={tmp_path / 'c1'}"])
    assert first["status"] == "done" and "retrieval_ndcg@10" in first["final_eval"]
    mined = mine_negatives.main(["--model", str(tmp_path / "c1" / "export"), "--pairs",
                                 str(data / "pairs"), "--out", str(data / "pairs-mined"),
                                 "--max-pairs", "300", "--negatives", "2",
                                 "--rank-window", "2", "50", "--margin", "2"])
    # a 10-step model scores everything alike: no margin filter, so every pair gets its two
    assert mined["pairs"] == 300 and mined["short"] == 0
    second = contrastive.main([
        "--config", f"{ROOT}/configs/contrastive_small.py:hardneg", *small,
        f"--config.init_from={tmp_path / 'c1'}", f"--config.workdir={tmp_path / 'c2'}",
        f"--config.contrastive.sources={data / 'pairs-mined'}", "--config.steps=4",
        "--config.eval_every=4", "--config.contrastive.hard_negatives=2",
        "--config.data.batch_size=16"])  # 300 mined pairs: small duplicate-free batches
    assert second["status"] == "done"
    capsys.readouterr()
    result = evaluate.main(["--model", str(tmp_path / "c2" / "export"), "--pairs",
                            str(data / "pairs"), "--max_queries", "50"])
    assert set(result["macro"]) == {"dense", "bm25", "rrf", "linear"}
    assert json.loads(capsys.readouterr().out)["macro"] == result["macro"]
