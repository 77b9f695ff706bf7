import jax
import numpy as np
import pytest
from helpers.synthetic import synthetic_task, tiny_config

from jbert.hf.load import load_pretrained
from jbert.model import functional
from jbert.training.export import export_run
from jbert.training.run_dir import load_run_params, run_config
from jbert.training.trainer import train

# A real training run behind each test: ~20 s on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(workdir, steps=3)
    train(cfg, synthetic_task(cfg))
    return workdir


def test_export_of_a_run_loads_back_with_the_same_outputs(run_dir, tmp_path):
    config, params, head, step = load_run_params(run_dir)
    assert head == "masked_lm" and step == 3
    assert run_config(run_dir).steps == 3
    ids = np.array([[5, 9, 33, 7, 4, 100]], np.int32)
    for export_head in ("masked_lm", "base"):
        out = export_run(run_dir, tmp_path / export_head, head=export_head)
        loaded_config, loaded = load_pretrained(out, head=export_head)
        assert loaded_config.hidden_size == config.hidden_size
        np.testing.assert_array_equal(
            functional.forward(loaded_config, loaded, ids),
            functional.forward(config, params, ids))
    mlm = functional.apply(config, params, ids, head="masked_lm")["logits"]
    _, loaded = load_pretrained(tmp_path / "masked_lm", head="masked_lm")
    np.testing.assert_array_equal(
        functional.apply(config, loaded, ids, head="masked_lm")["logits"], mlm)


def test_self_contained_export_from_the_command_line(run_dir, tmp_path, capsys):
    import json

    from train.export import main

    out = tmp_path / "sc"
    main(["--checkpoint", str(run_dir), "--out", str(out), "--head", "base", "--self-contained"])
    assert f"to {out}" in capsys.readouterr().out
    assert (out / "modeling_jbert.py").is_file() and (out / "configuration_jbert.py").is_file()
    hf = json.loads((out / "config.json").read_text())
    assert hf["auto_map"]["AutoModel"] == "modeling_jbert.JinaBertModel"
    config, params, _, _ = load_run_params(run_dir)
    ids = np.array([[5, 9, 33, 7, 4, 100]], np.int32)
    loaded_config, loaded = load_pretrained(out)
    np.testing.assert_array_equal(functional.forward(loaded_config, loaded, ids),
                                  functional.forward(config, params, ids))


def test_export_errors(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_run(tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 99"):
        export_run(run_dir, tmp_path / "out", step=99)
    export_run(run_dir, tmp_path / "once")
    with pytest.raises(FileExistsError):
        export_run(run_dir, tmp_path / "once")
    assert jax.device_count() == 8


def test_export_carries_the_runs_prompts_and_matryoshka_sizes(run_dir, tmp_path):
    import json
    import shutil

    from jbert.evaluation.embedder import load_inference_settings

    assert load_inference_settings(run_dir) == ({}, ())  # an MLM run: no prompts, no sizes
    tuned = tmp_path / "tuned"
    shutil.copytree(run_dir, tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["contrastive"].update(query_prompt="query: ", doc_prompt="", matryoshka_dims=[8, 16])
    (tuned / "config.json").write_text(json.dumps(config))
    out = export_run(tuned, tmp_path / "export", head="base")
    settings = json.loads((out / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": "query: "} and settings["matryoshka_dims"] == [16, 8]
    assert load_inference_settings(tuned) == load_inference_settings(out) == (
        {"query": "query: "}, (16, 8))
