"""Bad input on the command line: one `error: ...` line naming the culprit (file and line,
directory, flag), exit status 2, and nothing written. Listed in docs/reliability.md."""

import json
import shutil
from pathlib import Path

import jax
import pytest
from helpers.synthetic import tiny_config

from jbert.hf.save import save_pretrained
from jbert.model import functional

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    from jbert.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([f"def f{i}(x):\n    return x + {i}\n" for i in range(100)],
                                vocab_size=128)
    config = tiny_config("unused").model
    params = functional.init_params(config, jax.random.key(0), "base")
    return save_pretrained(tmp_path_factory.mktemp("export") / "export", config, params,
                           tokenizer=tokenizer)


def _bad_copy(export: Path, to: Path, how: str) -> Path:
    shutil.copytree(export, to)
    weights = to / "model.safetensors"
    if how == "no weights":
        weights.unlink()
    elif how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "no tokenizer.json":
        (to / "tokenizer.json").unlink()
    return to


@pytest.mark.parametrize("model,pairs,culprit", [
    ("neither", "good", "{model}: neither an HF export (config.json, model.safetensors) nor a "
                        "jbert run directory"),
    ("no weights", "good", "{model} has neither model.safetensors nor "
                           "model.safetensors.index.json"),
    ("truncated weights", "good", "{model}/model.safetensors: not a readable safetensors file"),
    ("no tokenizer.json", "good", "no tokenizer.json in tokenizer directory '{model}'"),
    ("export", "empty", "--pairs {pairs}: no pairs in split 'test' (empty)"),
    ("export", "latin-1", "{pairs}:2: not UTF-8 text (invalid continuation byte at byte 14)"),
    ("export", "no positive", "{pairs}:2: key 'positive' missing or not a non-empty string"),
    ("export", "not an object", "{pairs}:1: a list, not an object with 'query' and 'positive'"),
])
def test_evaluate_on_bad_input_says_one_line_and_writes_nothing(tmp_path, tiny_export, model,
                                                                pairs, culprit, capsys,
                                                                monkeypatch):
    from train.evaluate import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    good = json.dumps({"query": "adds two numbers", "positive": "def f(x): return x + 2"})
    lines = {"good": [good], "empty": [], "no positive": [good, '{"query": "q"}'],
             "not an object": ['["q", "p"]'], "latin-1": [good, '{"query": "caf\xe9"}']}[pairs]
    pairs_file = tmp_path / f"{pairs.replace(' ', '-')}.jsonl"
    pairs_file.write_bytes("".join(line + "\n" for line in lines).encode("latin-1"))
    if model == "neither":
        model_dir = tmp_path / "notes"
        model_dir.mkdir()
        (model_dir / "notes.txt").write_text("not a model")
    else:
        model_dir = _bad_copy(tiny_export, tmp_path / "model", model)
    out = tmp_path / "report" / "eval.json"
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(model_dir), "--pairs", str(pairs_file), "--out", str(out)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    expected = "error: " + culprit.format(model=model_dir, pairs=pairs_file)
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "report").exists()


def test_prepare_corpus_checks_the_tokenizer_before_building_anything(tmp_path, capsys,
                                                                       monkeypatch):
    from train.prepare_corpus import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "mod.py").write_text("def f(x):\n    return x\n")
    src = tmp_path / "src"
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "data"), "--no-default-sources", "--source", f"t={src}",
              "--tokenizer", str(tmp_path / "tok"), "--no-measure"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: no tokenizer.json in tokenizer directory '{tmp_path / 'tok'}'\n"
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("source,culprit", [
    ("empty", "empty.jsonl: 0 pairs, fewer than one batch of 64"),
    ("latin-1", "{file}:1: not UTF-8 text"),
    ("no query", "{file}:1: key 'query' missing"),
])
def test_contrastive_training_on_a_bad_pairs_file_stops_before_writing(tmp_path, tiny_export,
                                                                        source, culprit, capsys,
                                                                        monkeypatch):
    from train.contrastive import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    data = tmp_path / "data"
    shutil.copytree(tiny_export, data / "tokenizer")
    (data / "pairs").mkdir()
    (data / "pairs" / "test.jsonl").write_text(
        json.dumps({"query": "adds two numbers", "positive": "def f(x): return x + 2"}) + "\n")
    file = tmp_path / f"{source.replace(' ', '-')}.jsonl"
    file.write_bytes({"empty": b"", "latin-1": '{"query": "café"}\n'.encode("latin-1"),
                      "no query": b'{"positive": "p"}\n'}[source])
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(ROOT / "configs" / "contrastive_tiny.py"),
              f"--config.data.dir={data}", f"--config.contrastive.sources={file}",
              f"--config.workdir={tmp_path / 'run'}", "--config.init_from=none"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + culprit.format(file=file)) and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
