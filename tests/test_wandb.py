"""Weights & Biases logging (jbert.training.logger.start_wandb), in W&B's offline mode: the
runs are read back from their `.wandb` files, no network."""

import json
import struct
import sys
from pathlib import Path

import pytest
from helpers.synthetic import synthetic_task, tiny_config

from jbert.errors import ConfigError
from jbert.training.cli import parse_cli
from jbert.training.config import TrainConfig, WandbConfig, apply_overrides
from jbert.training.logger import WANDB_RUN_ID, MetricsLogger
from jbert.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent


def wandb_records(path: Path) -> list:
    """The protobuf records of a `.wandb` file: a 7-byte file header, then records in 32 KiB
    blocks, each a 7-byte header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last
    part) and its bytes; a block's last < 7 bytes are padding."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 1 << 15, 7
    assert data[:4] == b":W&B", path
    pos, parts, records = header, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0:  # zeros: the end of what was written
            break
        parts += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict:
    """One offline run segment: its run record and its history rows as plain values."""
    run, history = None, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            history.append({_key(item): json.loads(item.value_json)
                            for item in record.history.item if not _key(item).startswith("_")})
    return {"run": run, "history": history}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, its files under tmp_path; the next test's wandb reads its own settings."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    wandb.teardown()  # the process's wandb keeps the environment it first saw

    def runs() -> list[dict]:
        """The offline runs written so far, oldest first."""
        wandb.teardown()  # W&B's service writes its last records when it stops
        found = map(read_run, (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/*.wandb"))
        return sorted(found, key=lambda r: r["run"].start_time.ToNanoseconds())

    yield runs
    wandb.teardown()


@pytest.mark.slow  # two tiny training runs: about 20 s on 2 cores
def test_a_run_and_its_resume_log_to_one_offline_run(tmp_path, offline):
    cfg = tiny_config(tmp_path / "tiny-run", steps=6,
                      wandb=WandbConfig(project="jbert-test", tags=("tiny", "ci")))
    assert train(cfg, synthetic_task(cfg), stop_at=3)["status"] == "stopped"
    run_id = (tmp_path / "tiny-run" / WANDB_RUN_ID).read_text().strip()
    assert train(cfg, synthetic_task(cfg))["origin"] == "resumed from step 3"
    assert (tmp_path / "tiny-run" / WANDB_RUN_ID).read_text().strip() == run_id

    # Two segments of one run: the first invocation's and the resumed one's.
    first, second = offline()
    for segment in (first, second):
        run = segment["run"]
        assert (run.run_id, run.project, run.display_name) == (run_id, "jbert-test", "tiny-run")
        assert list(run.tags) == ["tiny", "ci"]
        config = {_key(item): json.loads(item.value_json) for item in run.config.update}
        assert config["steps"] == 6 and config["model"]["hidden_size"] == 32
        assert config["wandb"]["project"] == "jbert-test"

    # Every scalar of metrics.jsonl, at its step, and nothing else.
    logged = [r for s in (first, second) for r in s["history"]]
    expected = [{k: v for k, v in r.items() if k != "time" and isinstance(v, (int, float))}
                for r in map(json.loads, (tmp_path / "tiny-run" / "metrics.jsonl").open())]
    assert logged == expected  # the same float64s: both are JSON of the same values
    assert [r["step"] for r in first["history"]] == [1, 2, 3]
    assert [r["step"] for r in second["history"] if "loss" in r] == [4, 5, 6]
    assert "eval_loss" in second["history"][-1]  # the final eval, at step 6


def test_a_fresh_start_is_a_new_run(tmp_path, offline):
    cfg = tiny_config(tmp_path / "run", steps=2, wandb=WandbConfig(project="p", name="mine"))
    for _ in range(2):  # no checkpoint to resume from: step 0 both times
        MetricsLogger(cfg.workdir, total_steps=2, start_step=0, progress=False,
                      config=cfg).close()
    runs = [segment["run"] for segment in offline()]
    assert len({run.run_id for run in runs}) == 2
    assert {run.display_name for run in runs} == {"mine"}
    assert (tmp_path / "run" / WANDB_RUN_ID).read_text().strip() == runs[-1].run_id


def test_no_project_imports_nothing_and_a_missing_package_names_the_extra(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    off = tiny_config(tmp_path / "off")
    MetricsLogger(off.workdir, total_steps=1, start_step=0, progress=False, config=off).close()
    assert not (tmp_path / "off" / WANDB_RUN_ID).exists()
    on = tiny_config(tmp_path / "on", wandb=WandbConfig(project="p"))
    with pytest.raises(ConfigError, match=r"wandb.project='p'.*pip install 'jbert\[wandb\]'"):
        MetricsLogger(on.workdir, total_steps=1, start_step=0, progress=False, config=on)


def test_online_without_an_account_is_one_config_error(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_config(tmp_path / "run", wandb=WandbConfig(project="p"))
    wandb.teardown()
    with pytest.raises(ConfigError, match="wandb: .*API key.*wandb.mode=offline"):
        MetricsLogger(cfg.workdir, total_steps=1, start_step=0, progress=False, config=cfg)
    wandb.teardown()


def test_a_failing_wandb_stops_wandb_logging_not_the_run(tmp_path, capsys):
    class Gone:  # a W&B run whose service was killed (a job's SIGTERM reaches it too)
        def __init__(self):
            self.calls = []

        def log(self, values):
            self.calls.append(values)
            raise ConnectionResetError("Connection lost")

        def finish(self):
            raise AssertionError("not called after a failure")

    logger = MetricsLogger(tmp_path, total_steps=3, start_step=0, progress=False)
    logger._wandb = run = Gone()
    for step in (1, 2):
        logger.write(step, {"loss": 1.0 / step})
    logger.close()
    assert run.calls == [{"step": 1, "loss": 1.0}]  # and no more calls after it failed
    assert [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()] == [1.0, 0.5]
    assert capsys.readouterr().out == ("[jbert] W&B logging stopped (ConnectionResetError: "
                                       "Connection lost); metrics.jsonl and TensorBoard go on\n")


def test_flags_set_the_wandb_section():
    config, _ = parse_cli(["--config", str(ROOT / "configs/pretrain_tiny.py"),
                           "--config.wandb.project=x", "--config.wandb.tags=a,b",
                           "--config.wandb.mode=offline", "--config.wandb.entity=team"])
    assert config.wandb == WandbConfig(project="x", entity="team", mode="offline",
                                       tags=("a", "b"))
    with pytest.raises(ConfigError, match="wandb.mode='ofline': must be online, offline"):
        apply_overrides(TrainConfig(), {"wandb.mode": "ofline"})
    with pytest.raises(ConfigError, match="did you mean 'wandb.project'"):
        apply_overrides(TrainConfig(), {"wandb.projet": "x"})
