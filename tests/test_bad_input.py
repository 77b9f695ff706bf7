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


# ------------------------------------------------------------------ helpers for the tools below


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (and every directory), to compare before/after."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


def _pairs_dir(path: Path, n: int = 8) -> Path:
    path.mkdir(parents=True)
    pairs = [{"query": f"sort the items {i}", "positive": f"def sort_{i}(xs): return sorted(xs)"}
             for i in range(n)]
    for split in ("train", "test"):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def _one_line_exit_2(run, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        run()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def hub_calls(monkeypatch) -> list:
    """Network allowed by the environment (no HF_HUB_OFFLINE), every call to the hub recorded
    (and failing): a local path must never reach it."""
    import datasets
    from huggingface_hub import HfApi

    calls = []

    def called(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("the test has no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    monkeypatch.setattr(HfApi, "repo_info", called)
    monkeypatch.setattr(datasets, "load_dataset", called)
    return calls


# ----------------------------------------------------------------- local paths stay local


@pytest.mark.parametrize("spec", ["{tmp}/nopairs", "nopairs", "./bad/nopairs", "bad/no/pairs",
                                  "pairs.jsonl", "{tmp}/sub/nopairs", "~/no-such-jbert-pairs"])
def test_a_missing_local_pairs_path_is_one_line_and_never_tried_on_the_hub(tmp_path, spec,
                                                                            capsys, hub_calls,
                                                                            monkeypatch):
    from train.evaluate import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()  # an existing parent makes "sub/nopairs" a local path
    spec = spec.format(tmp=tmp_path)
    err = _one_line_exit_2(lambda: main(["--pairs", spec, "--out", "report.json"]), capsys)
    assert err == f"error: --pairs {spec}: no such file or directory\n"
    assert _tree(tmp_path) == {"sub": b"<dir>"} and hub_calls == []


def test_a_parent_that_exists_makes_owner_name_local(tmp_path, capsys, hub_calls,
                                                     monkeypatch):
    from train.evaluate import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad").mkdir()
    err = _one_line_exit_2(lambda: main(["--pairs", "bad/nopairs"]), capsys)
    assert err == "error: --pairs bad/nopairs: no such file or directory\n" and hub_calls == []


def test_a_pairs_directory_without_the_split_is_named(tmp_path, capsys, hub_calls):
    from train.evaluate import main

    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "train.jsonl").write_text("")
    err = _one_line_exit_2(lambda: main(["--pairs", str(tmp_path / "pairs")]), capsys)
    assert err == f"error: --pairs {tmp_path / 'pairs'}: a directory without test.jsonl\n"
    assert hub_calls == []  # it tried the directory as a hub name


def test_hub_names_fail_fast_offline_and_when_the_hub_says_no(tmp_path, monkeypatch, capsys):
    """`owner/name` that is no local path: offline, one line naming the cache (no 30 s wait on
    the network); online, the hub is asked once and its answer is one line."""
    import importlib
    import time

    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, Response

    from train.evaluate import main

    http = importlib.import_module(Response.__module__.split(".")[0])  # huggingface_hub's httpx
    response = http.Response(404, request=http.Request("GET", "https://huggingface.co/api"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    err = _one_line_exit_2(lambda: main(["--pairs", "nobody-jbert/nopairs"]), capsys)
    assert err == ("error: --pairs nobody-jbert/nopairs: no such file or directory, and offline "
                   "(HF_HUB_OFFLINE) the hub dataset 'nobody-jbert/nopairs' is not in the local "
                   "cache\n")
    assert time.perf_counter() - started < 5

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    asked = []

    def not_found(self, name, **kwargs):
        asked.append(name)
        raise RepositoryNotFoundError("404 Client Error", response=response)

    monkeypatch.setattr(HfApi, "repo_info", not_found)
    err = _one_line_exit_2(lambda: main(["--pairs", "nobody-jbert/nopairs"]), capsys)
    assert err == ("error: --pairs nobody-jbert/nopairs: no such file or directory, nor a "
                   "dataset on the Hugging Face hub that this login can read\n")

    def unreachable(self, name, **kwargs):
        asked.append(name)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(HfApi, "repo_info", unreachable)
    err = _one_line_exit_2(lambda: main(["--pairs", "nobody-jbert/nopairs"]), capsys)
    assert "the Hugging Face hub could not be asked for 'nobody-jbert/nopairs' " \
           "(ConnectionError)" in err
    assert asked == ["nobody-jbert/nopairs"] * 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sources,culprit", [
    ("bad/nopairs", "contrastive.sources: bad/nopairs: no such file or directory, and offline "
                    "(HF_HUB_OFFLINE) the hub dataset 'bad/nopairs' is not in the local cache"),
    ("./bad/nopairs", "contrastive.sources: ./bad/nopairs: no such file or directory"),
    ("{tmp}/a/pairs,{tmp}/b/pairs", "contrastive.sources: two sources are named 'pairs' "),
    ("{tmp}/a/pairs,{tmp}/gone.jsonl",
     "contrastive.sources: {tmp}/gone.jsonl: no such file or directory"),
])
def test_contrastive_sources_are_local_paths_and_config_errors_are_one_line(
        tmp_path, tiny_export, sources, culprit, capsys, monkeypatch):
    """Offline (conftest); all sources are found before any is read or mined."""
    from train.contrastive import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(tiny_export, data / "tokenizer")
    _pairs_dir(data / "pairs")
    for parent in ("a", "b"):
        _pairs_dir(tmp_path / parent / "pairs")
    before = _tree(tmp_path)
    err = _one_line_exit_2(lambda: main([
        "--config", str(ROOT / "configs" / "contrastive_tiny.py"), f"--config.data.dir={data}",
        f"--config.contrastive.sources={sources.format(tmp=tmp_path)}",
        f"--config.workdir={tmp_path / 'run'}", "--config.init_from=none"]), capsys)
    assert err.startswith("error: " + culprit.format(tmp=tmp_path)), err
    assert _tree(tmp_path) == before  # no run dir, no mined negatives cache


def test_contrastive_with_a_missing_data_dir_names_the_key(tmp_path, capsys, hub_calls):
    from train.contrastive import main

    data = tmp_path / "nodata" / "here"
    err = _one_line_exit_2(lambda: main([
        "--config", str(ROOT / "configs" / "contrastive_tiny.py"), f"--config.data.dir={data}",
        f"--config.workdir={tmp_path / 'run'}", "--config.init_from=none"]), capsys)
    assert err.startswith(f"error: data.dir={data}: no such directory"), err
    assert list(tmp_path.iterdir()) == [] and hub_calls == []


def test_a_data_position_of_the_other_layout_names_contrastive_pack():
    from jbert.data.pair_rows import TokenizedPairs
    from jbert.errors import ConfigError

    padded = TokenizedPairs.__new__(TokenizedPairs)
    padded.pack_rows = None
    with pytest.raises(ConfigError, match="contrastive.pack=false: .* of a packed run"):
        padded.set_state({"batcher": {}, "waiting": []})
    packed = TokenizedPairs.__new__(TokenizedPairs)
    packed.pack_rows = 4
    with pytest.raises(ConfigError, match="contrastive.pack=true: .* of a padded run"):
        packed.set_state({"epoch": 0})


# -------------------------------------------------------- nothing overwritten without asking


def _existing(tmp_path: Path, tool: str) -> tuple[list[str], Path]:
    """(arguments of `tool`, the existing output they point at), in a new folder of `tmp_path`."""
    tmp_path = tmp_path / tool.replace(" ", "")
    pairs = _pairs_dir(tmp_path / "pairs")
    if tool == "evaluate --out":
        out = tmp_path / "report.json"
        out.write_text("{}")
        return ["--pairs", str(pairs), "--out", str(out)], out
    if tool == "evaluate --write-beir":
        out = tmp_path / "beir" / "all"  # the set of pairs without a language
        out.mkdir(parents=True)
        (out / "corpus.jsonl").write_text("{}\n")
        return ["--pairs", str(pairs), "--write-beir", str(tmp_path / "beir"), "--no-bm25"], out
    if tool == "export":
        out = tmp_path / "export"
        out.mkdir()
        (out / "config.json").write_text("{}")
        # No such run: the refusal comes before the checkpoint is read.
        return ["--checkpoint", str(tmp_path / "no-run"), "--out", str(out)], out
    if tool == "prepare_corpus":
        out = tmp_path / "data"
        (out / "corpus").mkdir(parents=True)
        (out / "corpus" / "train-00000.parquet").write_bytes(b"PAR1")
        (out / "summary.json").write_text("{}")
        (tmp_path / "src" / "pkg").mkdir(parents=True)
        (tmp_path / "src" / "pkg" / "mod.py").write_text(
            "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(20)))
        return ["--out", str(out), "--no-default-sources", "--source", f"t={tmp_path / 'src'}",
                "--no-measure"], out
    if tool == "mine_negatives":
        out = tmp_path / "mined"
        out.mkdir()
        (out / "train.jsonl").write_text("")
        return ["--bm25", "--pairs", str(pairs), "--out", str(out), "--negatives", "1"], out
    if tool == "mteb":
        out = tmp_path / "mteb"
        out.mkdir()
        (out / "jbert_mteb.json").write_text("{}")
        return ["--model", str(tmp_path / "no-model"), "--beir", str(tmp_path / "no-beir"),
                "--out", str(out)], out
    raise AssertionError(tool)


@pytest.mark.parametrize("tool", ["evaluate --out", "evaluate --write-beir", "export",
                                  "prepare_corpus", "mine_negatives", "mteb"])
def test_existing_outputs_are_refused_without_overwrite(tmp_path, tool, capsys, monkeypatch):
    import importlib

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    main = importlib.import_module(f"train.{tool.split()[0]}").main
    args, out = _existing(tmp_path, tool)
    before = _tree(tmp_path)
    err = _one_line_exit_2(lambda: main(args), capsys)
    flag = "--write-beir" if "beir" in tool else "--out"
    assert err.startswith(f"error: {flag} {args[args.index(flag) + 1]}"), err
    assert str(out) in err and err.endswith("give --overwrite to replace it\n"), err
    assert _tree(tmp_path) == before


def test_overwrite_replaces_the_outputs(tmp_path, capsys):
    from train import evaluate, mine_negatives, prepare_corpus

    args, out = _existing(tmp_path, "evaluate --out")
    report = evaluate.main([*args, "--overwrite"])
    assert json.loads(out.read_text()) == report and "macro" in report
    args, out = _existing(tmp_path, "evaluate --write-beir")
    evaluate.main([*args, "--overwrite"])
    assert len((out / "corpus.jsonl").read_text().splitlines()) == 8
    args, out = _existing(tmp_path, "mine_negatives")
    mine_negatives.main([*args, "--overwrite"])
    assert len((out / "train.jsonl").read_text().splitlines()) == 8
    args, out = _existing(tmp_path, "prepare_corpus")
    prepare_corpus.main([*args, "--overwrite", "--vocab-size", "320", "--no-pairs"])
    assert json.loads((out / "summary.json").read_text())["corpus"]["files"] == {"Python": 1}
    assert (out / "tokenizer" / "tokenizer.json").is_file()


# ----------------------------------------------------------------- empty inputs are errors


@pytest.mark.parametrize("tool", ["mine_negatives", "prepare_corpus --source",
                                  "prepare_corpus --fetched", "evaluate --beir"])
def test_empty_inputs_are_one_line_and_write_nothing(tmp_path, tool, capsys, monkeypatch):
    import importlib

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    main = importlib.import_module(f"train.{tool.split()[0]}").main
    empty = tmp_path / "in"
    empty.mkdir()
    out = tmp_path / "out"
    if tool == "mine_negatives":
        (empty / "train.jsonl").write_text("")
        args = ["--bm25", "--pairs", str(empty), "--out", str(out)]
        culprit = f"--pairs {empty}: no pairs in its train split (empty)"
    elif tool == "prepare_corpus --source":
        (empty / "mod.py").write_bytes(b"\0\1\2")  # a file, but none the corpus keeps
        args = ["--out", str(out), "--no-default-sources", "--source", f"t={empty}"]
        culprit = f"no file kept from the sources (t={empty}, skipped {{'binary': 1}})"
    elif tool == "prepare_corpus --fetched":
        args = ["--out", str(out), "--fetched", str(empty)]
        culprit = f"--fetched {empty}: no deb/ or npm/ packages there"
    else:
        (empty / "qrels").mkdir()
        (empty / "corpus.jsonl").write_text(json.dumps({"_id": "d", "text": "x"}) + "\n")
        (empty / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "x"}) + "\n")
        (empty / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t0\n")
        args = ["--beir", str(empty), "--out", str(out / "report.json")]
        culprit = f"--beir {empty}: no queries with a relevant document in qrels/test.tsv"
    before = _tree(tmp_path)
    err = _one_line_exit_2(lambda: main(args), capsys)
    assert err.startswith(f"error: {culprit}"), err
    assert _tree(tmp_path) == before


# ---------------------------------------------------------------------- flag spellings


@pytest.mark.parametrize("module,args,flag", [
    ("evaluate", ["--pairs", "p"], "--max-query-length"),
    ("evaluate", ["--pairs", "p"], "--max-queries"),
    ("mine_negatives", ["--bm25", "--pairs", "p", "--out", "o"], "--max-doc-length"),
    ("mteb", ["--model", "m", "--tasks", "t", "--out", "o"], "--batch-size"),
    ("demo", [], "--mlm-steps"),
])
def test_flags_answer_to_dashes_and_underscores(module, args, flag, capsys):
    import importlib

    main = importlib.import_module(f"train.{module}").main
    errors = []
    for spelling in (flag, flag.replace("-", "_").replace("__", "--", 1)):
        for form in ([spelling, "0"], [f"{spelling}=0"]):
            with pytest.raises(SystemExit) as exit_:
                main([*args, *form])
            assert exit_.value.code == 2
            errors.append(capsys.readouterr().err.splitlines()[-1])
    # The same flag each time, reached and range-checked (not "unrecognized arguments").
    assert set(errors) == {f"python -m train.{module}: error: argument {flag}: '0': must be at "
                           "least 1"}, errors


def test_multihost_flags_answer_to_both_spellings_and_config_keys_keep_underscores():
    from jbert.errors import ConfigError
    from jbert.training.cli import parse_training_cli

    for flags in (["--num_processes", "2", "--process_id", "0"],
                  ["--num-processes", "2", "--process-id=0"]):
        with pytest.raises(ConfigError, match="--num-processes and --process-id need "
                                          "--coordinator"):
            parse_training_cli(["--config", str(ROOT / "configs" / "pretrain_tiny.py"), *flags])
    config = parse_training_cli(["--config", str(ROOT / "configs" / "pretrain_tiny.py"),
                                 "--config.data.batch_size=8"])
    assert config.data.batch_size == 8


def test_mine_negatives_names_itself_as_run(capsys):
    from train.mine_negatives import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m train.mine_negatives ")
