from pathlib import Path

import pytest

from jbert.train_config import TrainConfig, apply_overrides, load_config, parse_cli

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "pretrain_tiny.py")


def test_every_recipe_loads_and_documents_itself():
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.name == "__init__.py":
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


@pytest.mark.parametrize("override,error,match", [
    ({"optim.lr": "1"}, KeyError, "unknown config key 'optim.lr'.*learning_rate"),
    ({"stpes": "1"}, KeyError, "unknown config key 'stpes'"),
    ({"steps": "ten"}, ValueError, "'steps': cannot parse 'ten' as int"),
    ({"data.whole_word": "maybe"}, ValueError, "whole_word"),
    ({"optim": "3"}, KeyError, "is a section"),
    ({"steps.x": "3"}, KeyError, "is a value"),
    ({"model.hidden_size": "102"}, ValueError, "model.hidden_size.*num_attention_heads"),
    ({"steps": "0"}, ValueError, "config.steps=0"),
    ({"optim.decay": "exp"}, ValueError, "optim.decay"),
])
def test_bad_overrides_name_the_key(override, error, match):
    with pytest.raises(error, match=match):
        apply_overrides(load_config(TINY), override)


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(str(tmp_path / "nope.py"))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(AttributeError, match="get_config"):
        load_config(str(empty))
    with pytest.raises(ValueError, match="unknown argument 'fast'"):
        load_config(TINY + ":fast")
    with pytest.raises(ValueError, match="--config FILE is required"):
        parse_cli(["--config.steps=3"])


def test_training_cli_takes_the_multihost_flags_and_rejects_others():
    from jbert.train_config import parse_training_cli

    config = parse_training_cli(["--config", TINY, "--config.steps=5"])
    assert config.steps == 5
    with pytest.raises(SystemExit):
        parse_training_cli(["--config", TINY, "--bogus"])
    with pytest.raises(ValueError, match="--num_processes and --process_id"):
        parse_training_cli(["--config", TINY, "--coordinator", "localhost:1"])
