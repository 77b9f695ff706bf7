import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jbert.training.cli import parse_cli, usage_errors
from jbert.training.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_config,
    replace_paths,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "pretrain_tiny.py")


def test_every_recipe_loads_and_documents_itself():
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.name.startswith("_"):  # __init__.py, _contrastive.py: shared, not recipes
            continue
        config = load_config(str(path))
        assert isinstance(config, TrainConfig)
        doc = path.read_text().split('"""')[1]
        assert "Run:" in doc and "Time:" in doc and "Reach:" in doc, path.name


def test_overrides_parse_to_the_declared_types():
    config, rest = parse_cli(["--config", TINY, "--config.optim.learning_rate=3e-4",
                              "--config.steps", "7", "--config.data.whole_word=false",
                              "--config.init_from=none", "--config.model.hidden_size=64",
                              "--coordinator", "auto"])
    assert config.optim.learning_rate == 3e-4 and config.steps == 7
    assert config.data.whole_word is False and config.init_from is None
    assert config.model.hidden_size == 64
    assert rest == ["--coordinator", "auto"]
    assert parse_cli([f"--config={TINY}:smoke"])[0].steps == 20


@pytest.mark.parametrize("override,match", [
    ({"optim.lr": "1"}, "unknown config key 'optim.lr'.*known: .*learning_rate"),
    ({"stpes": "1"}, "unknown config key 'stpes'.*did you mean 'steps'"),
    ({"optim.learning_rte": "1"}, "did you mean 'optim.learning_rate'"),
    ({"steps": "ten"}, "'steps': cannot parse 'ten' as int"),
    ({"data.whole_word": "maybe"}, "whole_word"),
    ({"optim": "3"}, "is a section"),
    ({"steps.x": "3"}, "is a value"),
    ({"model.hidden_size": "102"}, "model.hidden_size.*num_attention_heads"),
    ({"steps": "0"}, "config.steps=0"),
    ({"optim.decay": "exp"}, "optim.decay"),
    # Every size, count and rate is range-checked, its key named (batch_size=0 hung a run).
    ({"data.batch_size": "0"}, "data.batch_size=0: must be >= 1"),
    ({"data.batch_size": "-4"}, "data.batch_size=-4: must be >= 1"),
    ({"data.seq_len": "2"}, "data.seq_len=2: must be >= 3"),
    ({"data.mask_rate": "1.5"}, r"data.mask_rate=1.5: must be in \(0, 1\]"),
    ({"data.mask_rate": "nan"}, "data.mask_rate=nan"),
    ({"data.docs_per_chunk": "0"}, "data.docs_per_chunk=0"),
    ({"data.max_predictions": "0"}, "data.max_predictions=0"),
    ({"mesh.fsdp": "0"}, "mesh.fsdp=0"),
    ({"mesh.data": "-2"}, "mesh.data=-2"),
    ({"checkpoint.every_steps": "0"}, "checkpoint.every_steps=0"),
    ({"checkpoint.keep": "0"}, "checkpoint.keep=0"),
    ({"contrastive.max_doc_length": "0"}, "contrastive.max_doc_length=0"),
    ({"contrastive.temperature": "0"}, "contrastive.temperature=0.0: must be > 0"),
    ({"optim.b2": "1"}, r"optim.b2=1.0: must be in \[0, 1\)"),
    ({"optim.clip_norm": "-1"}, "optim.clip_norm=-1.0"),
    ({"eval_batches": "-1"}, "config.eval_batches=-1"),
    ({"model.layer_norm_eps": "0"}, "layer_norm_eps=0.0: must be > 0"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(load_config(TINY), override)


def test_replace_paths_sets_typed_values_on_the_frozen_config():
    config = load_config(TINY)
    new = replace_paths(config, {"data.batch_size": 64, "optim.learning_rate": 2,
                                 "contrastive.matryoshka_dims": (64, 32), "init_from": "runs/x",
                                 "optim.clip_norm": None, "data.whole_word": False})
    assert new.data.batch_size == 64 and new.contrastive.matryoshka_dims == (64, 32)
    assert new.optim.learning_rate == 2.0 and type(new.optim.learning_rate) is float
    assert new.init_from == "runs/x" and new.optim.clip_norm is None
    assert new.data.whole_word is False
    assert new.model == config.model and config.data.batch_size == 32  # a copy, config untouched
    # The same keys from the command line give the same config.
    assert new == apply_overrides(config, {
        "data.batch_size": "64", "optim.learning_rate": "2", "contrastive.matryoshka_dims": "64,32",
        "init_from": "runs/x", "optim.clip_norm": "none", "data.whole_word": "false"})


@pytest.mark.parametrize("values,match", [
    ({"data.batch_sise": 64}, "unknown config key 'data.batch_sise'.*did you mean 'data.batch"),
    ({"optim.lr": 1e-3}, "unknown config key 'optim.lr'.*known: .*learning_rate"),
    ({"data.batch_size": 64.0}, "config key 'data.batch_size': expects int, got float 64.0"),
    ({"data.batch_size": "64"}, "config key 'data.batch_size': expects int, got str '64'"),
    ({"steps": True}, "config key 'steps': expects int, got bool True"),
    ({"data.whole_word": 1}, "config key 'data.whole_word': expects bool, got int 1"),
    ({"optim.learning_rate": "1e-3"}, "'optim.learning_rate': expects float, got str"),
    ({"optim.clip_norm": "none"}, r"'optim.clip_norm': expects float \| None, got str"),
    ({"data.dir": None}, "config key 'data.dir': expects str, got NoneType None"),
    ({"contrastive.matryoshka_dims": [64]}, r"dims': expects tuple\[int, ...\], got list"),
    ({"contrastive.matryoshka_dims": (64.0,)}, "matryoshka_dims': expects int, got float 64.0"),
    ({"optim": 3}, "is a section"),
    ({"data.batch_size": 0}, "data.batch_size=0: must be >= 1"),  # the dataclass's own check
])
def test_replace_paths_refuses_unknown_keys_and_wrong_types(values, match):
    with pytest.raises(ConfigError, match=match):
        replace_paths(load_config(TINY), values)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.py: no such config file"):
        load_config(str(tmp_path / "nope.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(str(empty))
    with pytest.raises(ConfigError, match="pretrain_tiny.py: unknown variant 'fast' .known: smo"):
        load_config(TINY + ":fast")
    with pytest.raises(ConfigError, match="pretrain_tiny.py: unknown variant 'smok' .did you"):
        load_config(TINY + ":smok")
    typo = tmp_path / "typo.py"
    typo.write_text("from jbert.training.optim import OptimConfig\n"
                    "from jbert.training.config import TrainConfig\n\ndef get_config(arg):\n"
                    "    return TrainConfig(optim=OptimConfig(lr=1.0))\n")
    with pytest.raises(ConfigError, match="typo.py: .*unexpected keyword argument 'lr'"):
        load_config(str(typo))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(arg):\n    return undefined_name\n")
    with pytest.raises(NameError):  # a bug in the file keeps its traceback
        load_config(str(broken))
    syntax = tmp_path / "syntax.py"
    syntax.write_text("def get_config(arg):\n    return TrainConfig(steps=3,,)\n")
    with pytest.raises(ConfigError, match=r"syntax.py:2: invalid syntax.*steps=3,,"):
        load_config(str(syntax))
    with pytest.raises(ConfigError, match="--config FILE is required"):
        parse_cli(["--config.steps=3"])


RECIPE = """
from typing import Literal

from jbert.training.config import TrainConfig, replace_paths


def get_config(variant: Literal["hardneg", "long-docs"] | None = None, *, steps: int = 100,
               lr: float | None = None, data: str = "artifacts/data", pack: bool = False):
    config = replace_paths(TrainConfig(), {"steps": steps, "data.dir": data,
                                           "contrastive.pack": pack})
    if lr is not None:
        config = replace_paths(config, {"optim.learning_rate": lr})
    variants = {"hardneg": {"contrastive.hard_negatives": 3},
                "long-docs": {"contrastive.max_doc_length": 1024}}
    return replace_paths(config, variants[variant]) if variant else config
"""


def test_recipe_arguments_are_typed_keywords_after_the_variant(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    assert load_config(str(recipe)).steps == 100
    config = load_config(f"{recipe}:hardneg,steps=300,lr=2e-4,data=/d/x,pack=true")
    assert config.contrastive.hard_negatives == 3 and config.steps == 300
    assert config.optim.learning_rate == 2e-4 and config.data.dir == "/d/x"
    assert config.contrastive.pack is True
    assert load_config(f"{recipe}:steps=7,long-docs,").contrastive.max_doc_length == 1024
    assert load_config(f"{recipe}:lr=none").optim.learning_rate == TrainConfig().optim.learning_rate
    for words, match in [
        ("hardnge", "recipe.py: unknown variant 'hardnge' .did you mean 'hardneg'"),
        ("fast", "recipe.py: unknown variant 'fast' .known: hardneg, long-docs"),
        ("hardneg,stesp=3", "recipe.py: unknown recipe argument 'stesp' .did you mean 'steps'"),
        ("seed=3", "recipe.py: unknown recipe argument 'seed' .known: data, lr, pack, steps"),
        ("steps=many", "recipe.py: recipe argument 'steps=many': cannot parse 'many' as int"),
        ("pack=maybe", "recipe argument 'pack=maybe': cannot parse 'maybe' as bool"),
        ("hardneg,long-docs", "recipe.py: two variants, 'hardneg' and 'long-docs'"),
        ("steps=0", "recipe.py: config key 'steps': config.steps=0: must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(f"{recipe}:{words}")
    # A recipe that declares no arguments takes none; one that lists no variants takes any word.
    plain = tmp_path / "plain.py"
    plain.write_text("from jbert.training.config import TrainConfig\n\n"
                     "def get_config(arg=None):\n    return TrainConfig(workdir=str(arg))\n")
    assert load_config(f"{plain}:anything").workdir == "anything"
    with pytest.raises(ConfigError, match="plain.py: unknown recipe argument 'steps' .it takes "
                                          "none"):
        load_config(f"{plain}:steps=3")


def test_usage_errors_are_one_line_unless_debugging(capsys, monkeypatch):
    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_, usage_errors():
        raise FileNotFoundError("data.dir=nope: no corpus/ there")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: data.dir=nope: no corpus/ there\n"
    with pytest.raises(RuntimeError), usage_errors():  # not the user's input: untouched
        raise RuntimeError("a bug")
    monkeypatch.setenv("JBERT_DEBUG", "1")
    with pytest.raises(ConfigError), usage_errors():
        raise ConfigError("unknown config key")


@pytest.mark.parametrize("args,culprit", [
    (["--config", TINY, "--config.optim.lr=1"], "unknown config key 'optim.lr'"),
    (["--config", "configs/nope.py"], "configs/nope.py: no such config file"),
    (["--config", TINY, "--config.data.batch_size=0"], "data.batch_size=0: must be >= 1"),
])
def test_entry_point_reports_bad_input_in_one_line(args, culprit):
    env = {k: v for k, v in os.environ.items() if k != "JBERT_DEBUG"}
    run = subprocess.run([sys.executable, "-m", "train.pretrain", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and culprit in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


@pytest.mark.parametrize("module", ["pretrain", "contrastive", "evaluate", "export",
                                    "prepare_corpus", "demo", "compile"])
def test_every_entry_point_answers_help(module, capsys):
    main = importlib.import_module(f"train.{module}").main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m train.{module} ")
    assert "-h, --help" in out
    if module in ("pretrain", "contrastive", "compile"):
        assert "--config FILE[:ARG]" in out and "--config.KEY=VALUE" in out
    if module in ("pretrain", "contrastive"):
        assert "--config FILE --help" in out and "--coordinator HOST:PORT" in out


def test_help_with_a_config_lists_its_keys_with_types_and_current_values(capsys):
    from train.pretrain import main

    with pytest.raises(SystemExit) as exit_:
        main(["--config", TINY, "--config.steps=7", "-h"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for line in ["  steps: int = 7", "  optim.learning_rate: float = 0.004",
                 "  optim.clip_norm: float | None = 1.0", "  data.dir: str = 'artifacts/data-tiny'",
                 "  init_from: str | None = None", "  model.num_hidden_layers: int = 2"]:
        assert f"\n{line}\n" in out, line


def test_help_with_a_config_lists_the_recipes_variants_and_arguments(tmp_path, capsys):
    from train.pretrain import main

    recipe = tmp_path / "recipe.py"
    recipe.write_text(RECIPE)
    with pytest.raises(SystemExit) as exit_:
        main(["--config", f"{recipe}:hardneg,steps=7", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "\n  steps: int = 7\n" in out and "\n  contrastive.hard_negatives: int = 3\n" in out
    assert out.endswith("as --config FILE:VARIANT,KEY=VALUE:\n  variants: hardneg, long-docs\n"
                        "  steps: int = 100\n  lr: float | None = None\n"
                        "  data: str = 'artifacts/data'\n  pack: bool = False\n"), out


def test_help_from_the_command_line_exits_0():
    run = subprocess.run([sys.executable, "-m", "train.pretrain", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m train.pretrain")


@pytest.mark.parametrize("flags,culprit", [
    (["--coordinator", "localhost:1"], "--coordinator needs --num-processes and --process-id"),
    (["--num_processes", "2", "--process_id", "0"], "need --coordinator HOST:PORT"),
    (["--process_id", "1"], "need --coordinator HOST:PORT"),
    (["--coordinator", "localhost", "--num_processes", "2", "--process_id", "0"],
     "--coordinator 'localhost': expected HOST:PORT"),
    (["--coordinator", "h:99999", "--num_processes", "2", "--process_id", "0"],
     "expected HOST:PORT"),
    (["--coordinator", "h:1", "--num_processes", "2", "--process_id", "2"],
     "--process-id 2: must be in 0..1 for --num-processes 2"),
    (["--coordinator", "h:1", "--num_processes", "0", "--process_id", "0"],
     "--num-processes 0: must be >= 1"),
    (["--coordinator", "auto", "--num_processes", "2"], "--coordinator auto finds"),
])
def test_bad_multihost_flags_are_one_line_before_anything_starts(flags, culprit, capsys,
                                                                 monkeypatch):
    from train.pretrain import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    # Were the flags accepted, the run would stop at the missing data dir instead.
    with pytest.raises(SystemExit) as exit_:
        main(["--config", TINY, "--config.data.dir=/nonexistent/jbert-data",
              "--config.data.prepare_if_missing=false", *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit in err and err.count("\n") == 1, err


def test_training_cli_takes_the_multihost_flags_and_rejects_others():
    from jbert.training.cli import parse_training_cli

    config = parse_training_cli(["--config", TINY, "--config.steps=5"])
    assert config.steps == 5
    with pytest.raises(SystemExit):
        parse_training_cli(["--config", TINY, "--bogus"])
    with pytest.raises(ValueError, match="--num-processes and --process-id"):
        parse_training_cli(["--config", TINY, "--coordinator", "localhost:1"])


def test_the_demo_finds_the_repository_configs():
    """`jbert.tasks.demo` reads configs/ beside the package (it broke once when it moved)."""
    from jbert.tasks import demo

    for name in ("pretrain_tiny.py", "contrastive_tiny.py"):
        assert (demo.CONFIGS / name).is_file(), demo.CONFIGS / name
