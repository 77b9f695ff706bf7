"""Faults a long run meets: kill -9, corrupted checkpoints, interrupted writers, bad inputs,
untrusted data. Each fault and what it costs is listed in docs/reliability.md."""

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import tokenize
from pathlib import Path

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.synthetic import synthetic_task, tiny_config

from jbert.data import corpus as corpus_lib
from jbert.data import pairs as pairs_lib
from jbert.data.corpus import FileFilter, Source, build_corpus, iter_files
from jbert.data.pairs import build_pairs
from jbert.hf import save as hf_save
from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.model.config import preset
from jbert.ops.sharding import make_mesh
from jbert.tasks.mlm import ensure_data
from jbert.training.checkpoint import Checkpointer, CorruptCheckpointError
from jbert.training.config import ConfigError, DataConfig, TrainConfig, to_json
from jbert.training.export import export_run
from jbert.training.optim import make_optimizer
from jbert.training.run_dir import init_params_from
from jbert.training.state import init_state
from jbert.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "helpers" / "kill_worker.py"


def _last_losses(workdir: Path) -> dict[int, float]:
    """The last loss logged for each step (metrics.jsonl is appended to across restarts)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def _committed_steps(workdir: Path) -> list[int]:
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _partial_saves(workdir: Path) -> set[tuple[str, int]]:
    """Orbax's temporary dirs of saves not committed yet: (name, inode)."""
    ckpts = workdir / "checkpoints"
    if not ckpts.is_dir():
        return set()
    return {(p.name, p.stat().st_ino) for p in ckpts.iterdir() if "orbax-checkpoint-tmp" in p.name}


def _start(workdir: Path, steps: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(steps)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _origin(lines: list[str]) -> str:
    for line in lines:
        m = re.match(r"\[jbert\] (.*?); \d+ devices", line)  # not the lock's takeover line
        if m:
            return m.group(1)
    raise AssertionError("no origin line:\n" + "".join(lines[-40:]))


def _run_to_end(workdir: Path, steps: int) -> list[str]:
    proc = _start(workdir, steps)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    return out.splitlines(keepends=True)


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_from_the_last_complete_checkpoint(tmp_path):
    """10 kills (during a step, right after an async save started, during eval) of one run,
    each followed by a restart: every restart resumes from the newest committed checkpoint and
    the run ends bitwise equal to an uninterrupted one, loss by loss."""
    steps, rng = 34, np.random.default_rng(0)
    reference = tmp_path / "reference"
    _run_to_end(reference, steps)
    workdir = tmp_path / "killed"
    kinds = rng.permutation(["step"] * 4 + ["save"] * 3 + ["eval"] * 3)
    resumed_from, during_write = 0, 0
    for i, kind in enumerate(kinds):
        if kind == "save":
            target = ("SAVE", 3 * (resumed_from // 3 + 1), rng.uniform(0, 0.02))
        elif kind == "eval":
            target = ("EVAL", 4 * (resumed_from // 4 + 1), rng.uniform(0, 0.2))
        else:
            target = ("STEP", resumed_from + int(rng.integers(1, 4)), rng.uniform(0, 0.05))
        partial_before = _partial_saves(workdir)  # left by earlier kills
        proc = _start(workdir, steps)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.split()[:2] == [target[0], str(target[1])]:
                time.sleep(target[2])
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"{kind} {target} missed:\n" + "".join(
            lines[-40:])
        expected = f"resumed from step {resumed_from}" if resumed_from else "fresh initialisation"
        assert _origin(lines) == expected
        # Every kill leaves the run's lock behind; each restart takes it over, saying so.
        assert any("taking over" in line for line in lines) == (i > 0), lines[:5]
        during_write += bool(_partial_saves(workdir) - partial_before)
        # What orbax lists is what a restart takes: only renamed (committed) step dirs count.
        resumed_from = max(_committed_steps(workdir), default=0)
    lines = _run_to_end(workdir, steps)
    assert _origin(lines) == f"resumed from step {resumed_from}"
    print(f"kills landing while a checkpoint was being written: {during_write}")
    assert during_write >= 1  # the async-save kills do land inside a write
    with np.load(reference / "final_params.npz") as want, \
            np.load(workdir / "final_params.npz") as got:
        assert want.files == got.files
        for name in want.files:
            np.testing.assert_array_equal(want[name], got[name])
    assert _last_losses(workdir) == _last_losses(reference)
    assert len(_last_losses(reference)) == steps


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # flip 8 bytes in the middle: orbax itself restores these without complaint
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes(b ^ 0xFF for b in data[i:i + 8]) + data[i + 8:])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupted_latest_checkpoint_is_reported_set_aside_and_the_previous_used(
        tmp_path, how, caplog):
    """The unreadable step-6 dir is moved (not deleted) to `checkpoints.unreadable/6-<time>`,
    a warning names it, and the run resumes from step 3 to the same final state."""
    cfg = tiny_config(tmp_path, steps=6)
    first = train(cfg, synthetic_task(cfg))
    want = jax.device_get(first["state"])
    step6 = tmp_path / "checkpoints" / "6"
    # The array chunks (tensorstore OCDBT data files, `d/*`, merged and per process); which
    # file holds which leaf is orbax's business.
    data_files = sorted(p for p in (step6 / "state").rglob("*") if p.parent.name == "d")
    assert data_files
    for path in data_files:
        _corrupt(path, how)
    victim = data_files[0]
    corrupted = victim.read_bytes()
    with caplog.at_level(logging.WARNING, logger="jbert.training.checkpoint"):
        again = train(cfg, synthetic_task(cfg))
    assert again["origin"] == "resumed from step 3"
    assert f"checkpoint step 6 at {step6} is unreadable" in caplog.text
    (kept,) = (tmp_path / "checkpoints.unreadable").iterdir()
    assert kept.name.startswith("6-")
    assert (kept / victim.relative_to(step6)).read_bytes() == corrupted  # kept as it was
    assert _committed_steps(tmp_path) == [3, 6]  # step 6 written afresh
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(jax.device_get(again["state"])),
                    strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_no_readable_checkpoint_refuses_to_start_over(tmp_path):
    cfg = tiny_config(tmp_path, steps=3)
    train(cfg, synthetic_task(cfg))
    (tmp_path / "checkpoints" / "3" / "meta" / "metadata").write_text("{trunc")
    with pytest.raises(CorruptCheckpointError, match="no readable checkpoint"):
        train(cfg, synthetic_task(cfg))
    assert (tmp_path / "checkpoints.unreadable").is_dir()


# ----------------------------------------------------------------------------- atomic writers


def _failing_after(monkeypatch, module, name: str, calls: int):
    """Patches `module.name` to raise on its call number `calls + 1` (a crash mid-write)."""
    original, count = getattr(module, name), [0]

    def wrapped(*args, **kw):
        count[0] += 1
        if count[0] > calls:
            raise OSError("disk gone")
        return original(*args, **kw)

    monkeypatch.setattr(module, name, wrapped)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _source_tree(root: Path) -> Path:
    for i in range(6):
        (root / f"pkg{i}").mkdir(parents=True)
        (root / f"pkg{i}" / "mod.py").write_text(
            f'def f{i}(x):\n    """Adds {i} to the number x."""\n    y = x\n    return y + {i}\n')
    return root


def test_export_interrupted_leaves_the_old_directory(tmp_path, monkeypatch):
    config = preset("tiny")
    params = functional.init_params(config, jax.random.key(0))
    out = save_pretrained(tmp_path / "export", config, params)
    before = _snapshot(out)
    # config.json, then the sentence-transformers files: fail after the first file.
    _failing_after(monkeypatch, hf_save.json, "dumps", 1)
    with pytest.raises(OSError, match="disk gone"):
        save_pretrained(out, config, functional.init_params(config, jax.random.key(1)),
                        overwrite=True)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left


def test_corpus_writer_interrupted_leaves_the_old_corpus(tmp_path, monkeypatch):
    src = _source_tree(tmp_path / "src")
    out = tmp_path / "corpus"
    build_corpus([Source("t", str(src))], out, shard_bytes=100)
    before = _snapshot(out)
    assert len([k for k in before if k.endswith(".parquet")]) > 2
    _failing_after(monkeypatch, corpus_lib.pq, "ParquetWriter", 1)  # the second shard fails
    with pytest.raises(OSError, match="disk gone"):
        build_corpus([Source("t", str(src))], out, shard_bytes=10)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "src"]


def test_pairs_writer_interrupted_leaves_the_old_pairs(tmp_path, monkeypatch):
    src = _source_tree(tmp_path / "src")
    build_corpus([Source("t", str(src))], tmp_path / "corpus", test_fraction=0.3)
    out = tmp_path / "pairs"
    build_pairs(tmp_path / "corpus", out)
    before = _snapshot(out)
    assert before["train.jsonl"]
    _failing_after(monkeypatch, pairs_lib.json, "dumps", 2)
    with pytest.raises(OSError, match="disk gone"):
        build_pairs(tmp_path / "corpus", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "pairs", "src"]


def test_writers_refuse_to_replace_a_directory_with_other_files(tmp_path):
    src = _source_tree(tmp_path / "src")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="notes.txt"):
        build_corpus([Source("t", str(src))], tmp_path / "mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        build_pairs(tmp_path / "corpus", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- security


_FORBIDDEN = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "eval",
              "exec", "allow_pickle", "__import__", "compile"}


def test_no_pickle_or_code_execution_in_the_package():
    """Names that load pickles or run strings as code, in code (not comments or strings).
    The one exception: jbert.training.config.load_config runs the config file the user named."""
    found = []
    for path in sorted((ROOT / "jbert").rglob("*.py")) + sorted((ROOT / "train").rglob("*.py")):
        with tokenize.open(path) as f:
            tokens = list(tokenize.generate_tokens(f.readline))
        for i, tok in enumerate(tokens):
            if tok.type != tokenize.NAME:
                continue
            dotted = tokens[i - 1].string == "." and tokens[i - 2].string
            # `x.compile()` is a method (jax's `Lowered.compile`), never the builtin.
            method = tok.string == "compile" and tokens[i - 1].string == "."
            if tok.string in _FORBIDDEN and dotted not in ("re", "self") and not method:
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string}")
            if tok.string == "load" and dotted == "torch":
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: torch.load")
    assert found == [], found
    config_loader = (ROOT / "jbert" / "training" / "config.py").read_text()
    assert config_loader.count("exec_module(") == 1


def test_paths_in_data_files_never_choose_where_files_are_written(tmp_path):
    """Corpus and pair records carry `path`/`repo` fields; hostile values stay data: every
    file the writers create is under their output folder, with names of their own."""
    hostile = [{"text": 'def f(x):\n    """Returns x plus one, always."""\n    a = x\n'
                        "    return a + 1\n",
                "language": "Python", "path": p, "repo": r}
               for p, r in [("../../escape.py", "../../evil"), ("/tmp/abs.py", "/etc"),
                            ("a/../../b.py", "x/../../../y")]]
    monkey = pytest.MonkeyPatch()
    monkey.setattr(corpus_lib, "iter_files", lambda *a, **k: iter(hostile))
    try:
        build_corpus([], tmp_path / "out" / "corpus", test_fraction=0.5)
    finally:
        monkey.undo()
    build_pairs(tmp_path / "out" / "corpus", tmp_path / "out" / "pairs")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.startswith("out/corpus/") or p.startswith("out/pairs/") for p in written)
    assert {Path(p).name for p in written} <= {"stats.json", "train.jsonl", "test.jsonl",
                                                "heldout_repos.json", "train-00000.parquet",
                                                "test-00000.parquet"}
    rows = [r for f in (tmp_path / "out" / "corpus").glob("*.parquet")
            for r in pq.read_table(f).to_pylist()]
    assert sorted(r["path"] for r in rows) == sorted(r["path"] for r in hostile)  # kept as data
    pairs = [json.loads(line) for f in (tmp_path / "out" / "pairs").glob("*.jsonl")
             for line in f.read_text().splitlines()]
    assert {p["path"] for p in pairs} <= {r["path"] for r in hostile} and pairs


def test_symlinks_out_of_a_source_tree_are_not_followed(tmp_path):
    (tmp_path / "outside.py").write_text("SECRET = 1\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "ok.py").write_text("x = 1\n")
    os.symlink(tmp_path / "outside.py", tmp_path / "src" / "pkg" / "link.py")
    records = list(iter_files([Source("t", str(tmp_path / "src"))]))
    assert [r["path"] for r in records] == ["pkg/ok.py"]


# ----------------------------------------------------------------------------- bad inputs


def test_missing_data_directory_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.dir=.*nowhere.*prepare_if_missing"):
        ensure_data(DataConfig(dir=str(tmp_path / "nowhere"), prepare_if_missing=False))


def test_empty_corpus_names_the_directory(tmp_path):
    empty = tmp_path / "src"
    empty.mkdir()
    stats = build_corpus([Source("t", str(empty))], tmp_path / "corpus")
    assert sum(stats.files.values()) == 0
    with pytest.raises(FileNotFoundError, match=r"no train-\*.parquet shards.*corpus"):
        corpus_lib.corpus_files(tmp_path / "corpus")


def test_documents_longer_than_the_maximum_are_counted_not_read(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "big.py").write_text("x = 1\n" * 2000)
    (tmp_path / "src" / "pkg" / "small.py").write_text("y = 2\n")
    stats = corpus_lib.CorpusStats()
    records = list(iter_files([Source("t", str(tmp_path / "src"))],
                              FileFilter(max_file_bytes=1000), stats))
    assert [r["path"] for r in records] == ["pkg/small.py"]
    assert stats.skipped == {"oversized": 1}



# ----------------------------------------------------------------------------- config changes


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _checkpointed_run(cfg: TrainConfig, step: int = 3) -> dict:
    """What `train` leaves in a workdir (config.json, a checkpoint of step `step` with its
    meta), without compiling a train step: the faults below happen before the first step.
    Returns the saved state."""
    tx = make_optimizer(cfg.optim, cfg.steps)
    state = init_state(make_mesh(cfg.mesh.data), cfg.model, "masked_lm", tx, cfg.seed)
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.workdir) / "config.json").write_text(to_json(cfg))
    checkpointer = Checkpointer(Path(cfg.workdir) / "checkpoints")
    checkpointer.save(step, state, {"position": step}, {"step": step, "head": "masked_lm"})
    checkpointer.close()
    return state


@pytest.mark.parametrize("change,field,advice", [
    (dict(model=dict(hidden_size=64, intermediate_size=128)), "model.hidden_size 32 -> 64",
     "its weights do not fit this model"),
    pytest.param(dict(optim=dict(clip_norm=None)), "optim.clip_norm 1.0 -> None",
                 "--config.init_from=", marks=pytest.mark.slow),
], ids=["model", "optimiser"])
def test_resume_after_a_config_change_names_it_and_moves_nothing(tmp_path, change, field,
                                                                  advice):
    """Not corruption: one error naming the differing arrays, the changed config fields and
    what to do; the checkpoints, config.json and logs stay as they were."""
    cfg = tiny_config(tmp_path, steps=3)
    _checkpointed_run(cfg)
    before = _tree(tmp_path)
    saved_config = (tmp_path / "config.json").read_text()
    changed = dataclasses.replace(cfg, **{
        section: dataclasses.replace(getattr(cfg, section), **values)
        for section, values in change.items()})
    with pytest.raises(ConfigError) as error:
        train(changed, synthetic_task(changed))
    message = str(error.value)
    assert "\n" not in message
    assert f"cannot resume: checkpoint {tmp_path / 'checkpoints' / '3'} holds another" in message
    assert field in message and advice in message and "Nothing was moved" in message
    shapes = "(32,) float32 in the checkpoint, (64,) float32 now" if "model" in change else (
        "opt_state/0/0/count: not in the checkpoint")
    assert shapes in message
    assert _tree(tmp_path) == before and (tmp_path / "config.json").read_text() == saved_config
    assert not (tmp_path / "checkpoints.unreadable").exists()


@pytest.mark.parametrize("how", ["fingerprint", pytest.param("flip", marks=pytest.mark.slow)])
def test_bit_flipped_checkpoint_is_refused_by_weights_only_restore(tmp_path, how, capsys,
                                                                    monkeypatch):
    """Export and `init_from` read only the params; they check them like a resume and refuse
    the checkpoint by name, writing nothing. Flipped data files: tensorstore's checksums catch
    them. Flips those miss: only the state fingerprint can, simulated by editing it."""
    from train.export import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    _checkpointed_run(tiny_config(tmp_path / "run", steps=3))
    step3 = tmp_path / "run" / "checkpoints" / "3"
    if how == "fingerprint":
        meta = step3 / "meta" / "metadata"
        record = json.loads(meta.read_text())
        record["fingerprint"][-3] += 1  # the last params leaf (rng and step follow)
        meta.write_text(json.dumps(record))
        # Exactly that leaf: every other params leaf matches its slice of the fingerprint.
        match = (rf"checkpoint {step3}: contents differ from what was saved in \['params'\]"
                 r"\['cls'\]\['predictions'\]\['transform'\]\['dense'\]\['kernel'\]$")
    else:
        for path in (p for p in (step3 / "state").rglob("*") if p.parent.name == "d"):
            _corrupt(path, "flip")
        match = rf"checkpoint {step3}: unreadable \(ValueError: DATA_LOSS"
    with pytest.raises(CorruptCheckpointError, match=match):
        export_run(tmp_path / "run", tmp_path / "export", head="base")
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"error: checkpoint {step3}: ")
    assert err.count("\n") == 1
    fresh = tiny_config(tmp_path / "tuned", steps=3, init_from=str(tmp_path / "run"))
    with pytest.raises(CorruptCheckpointError, match=match):
        train(fresh, synthetic_task(fresh))
    assert not (tmp_path / "export").exists() and not (tmp_path / "tuned").exists()


def test_missing_or_unusable_init_from_is_named_and_nothing_is_written(tmp_path):
    for source, culprit in [(tmp_path / "nowhere", "no such directory"),
                            (tmp_path, "neither an HF export")]:
        cfg = tiny_config(tmp_path / "run", steps=3, init_from=str(source))
        with pytest.raises(ConfigError, match=f"init_from={source}: {culprit}"):
            train(cfg, synthetic_task(cfg))
        assert not (tmp_path / "run").exists()
    # A usable run gives its encoder (checked against the fingerprint on the way).
    saved = _checkpointed_run(tiny_config(tmp_path / "mlm"))
    params = init_params_from(str(tmp_path / "mlm"), tiny_config("unused").model, "masked_lm")
    for want, got in zip(jax.tree.leaves(jax.device_get(saved["params"]["bert"])),
                         jax.tree.leaves(params["bert"]), strict=True):
        np.testing.assert_array_equal(want, got)
