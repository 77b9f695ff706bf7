"""Teacher embeddings for distillation: written with a sentence-transformers model
(jbert/evaluation/teacher_embeddings.py, train/teacher_embeddings.py) and read back by key
(jbert/data/teacher.py). The teacher is a tiny randomly initialised model built here."""

import hashlib
import json

import numpy as np
import pytest
from helpers.sentence_models import make_st_folder
from safetensors.numpy import load_file, save_file

from jbert.data.teacher import FORMAT, load_teacher, text_key
from jbert.errors import InputError

PAIRS = [
    {"query": "add two numbers", "positive": "def add(x, y): return x + y",
     "negatives": ["def sum(x): return x", " def open(path): return path "]},
    {"query": "  add two numbers ", "positive": "def add2(x, y): return x + y"},  # same query
    {"query": "read a file", "positive": "def open(path): return path",  # a negative above
     "negatives": ["def add(x, y): return x + y"]},
    {"query": "sort the list", "positive": "def sort(x): return sorted(x)", "negatives": []},
]
QUERIES = ["add two numbers", "read a file", "sort the list"]
DOCS = ["def add(x, y): return x + y", "def sum(x): return x", "def open(path): return path",
        "def add2(x, y): return x + y", "def sort(x): return sorted(x)"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_st_folder(tmp_path_factory.mktemp("teacher") / "tiny-teacher",
                          max_seq_length=16)


@pytest.fixture(scope="module")
def model(teacher_dir):
    from jbert.evaluation.sentence_models import load_model

    return load_model(teacher_dir)


def _write(out, model, teacher_dir, **kwargs):
    from jbert.evaluation.teacher_embeddings import write_teacher

    return write_teacher(out, model, PAIRS, teacher=str(teacher_dir), pairs_name="p.jsonl",
                         **kwargs)


def test_written_teacher_holds_every_distinct_text_once_normalised_and_keyed(
        tmp_path, model, teacher_dir):
    out = _write(tmp_path / "t", model, teacher_dir, query_prompt="query: ",
                 max_doc_length=8)
    meta = json.loads((out / "teacher.json").read_text())
    assert meta == {"format": FORMAT, "teacher": str(teacher_dir), "pairs": "p.jsonl",
                    "split": "train", "queries": 3, "documents": 5, "dim": 16,
                    "query_prompt": "query: ", "doc_prompt": "", "max_query_length": None,
                    "max_doc_length": 8}
    arrays = load_file(out / "teacher.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in arrays.items()} == {
        "query_QD": (np.float16, (3, 16)), "query_key_Q20": (np.uint8, (3, 20)),
        "doc_ND": (np.float16, (5, 16)), "doc_key_N20": (np.uint8, (5, 20))}
    for emb in (arrays["query_QD"], arrays["doc_ND"]):
        norms = np.linalg.norm(emb.astype(np.float32), axis=1)
        assert np.allclose(norms, 1.0, atol=2e-3)
    assert [bytes(k) for k in arrays["query_key_Q20"]] == [
        hashlib.sha1(q.encode("utf-8")).digest() for q in QUERIES]
    assert [bytes(k) for k in arrays["doc_key_N20"]] == [
        hashlib.sha1(d.encode("utf-8")).digest() for d in DOCS]
    # Each row is the model's own embedding of the stripped text, after the side's prompt and
    # truncated at the side's length (documents: 8 tokens; queries: the model's own 16).
    want_q = model.encode([f"query: {q}" for q in QUERIES], normalize_embeddings=True)
    np.testing.assert_allclose(arrays["query_QD"], want_q, atol=2e-3)
    model.max_seq_length = 8
    want_d = model.encode(DOCS, normalize_embeddings=True)
    model.max_seq_length = 16
    np.testing.assert_allclose(arrays["doc_ND"], want_d, atol=2e-3)
    full_d = model.encode(DOCS, normalize_embeddings=True)
    assert not np.allclose(arrays["doc_ND"], full_d, atol=2e-3)  # the limit did something
    assert model.max_seq_length == 16  # the writer left the model as it found it


def test_lookups_by_text_and_a_missing_text_names_the_teacher(tmp_path, model, teacher_dir):
    out = _write(tmp_path / "t", model, teacher_dir)
    teacher = load_teacher(out)
    arrays = load_file(out / "teacher.safetensors")
    assert teacher.dim == 16 and teacher.meta["queries"] == 3
    got = teacher.queries(["sort the list", " add two numbers\n", "add two numbers"])
    np.testing.assert_array_equal(got, arrays["query_QD"][[2, 0, 0]])
    got = teacher.docs(["def open(path): return path", "def sum(x): return x"])
    np.testing.assert_array_equal(got, arrays["doc_ND"][[2, 1]])
    assert teacher.queries([]).shape == (0, 16)
    with pytest.raises(InputError) as e:
        teacher.docs(["def sum(x): return x", "def nowhere(): pass", "def other(): pass"])
    assert str(e.value).startswith(f"teacher {out}: no document embedding for "
                                   "'def nowhere(): pass'")
    with pytest.raises(InputError, match="no query embedding for 'def add"):
        teacher.queries(["def add(x, y): return x + y"])  # a document is not a query
    assert text_key(" x ") == text_key("x") == hashlib.sha1(b"x").digest()


def test_the_writer_refuses_to_overwrite(tmp_path, model, teacher_dir):
    out = _write(tmp_path / "t", model, teacher_dir)
    before = (out / "teacher.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="give --overwrite"):
        _write(out, model, teacher_dir, query_prompt="other: ")
    assert (out / "teacher.safetensors").read_bytes() == before
    _write(out, model, teacher_dir, query_prompt="other: ", overwrite=True)
    assert load_teacher(out).meta["query_prompt"] == "other: "
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary sibling left


def test_load_teacher_names_what_is_wrong(tmp_path, model, teacher_dir):
    out = _write(tmp_path / "t", model, teacher_dir)
    with pytest.raises(InputError, match=f"teacher {tmp_path}: no teacher.json"):
        load_teacher(tmp_path)
    meta = json.loads((out / "teacher.json").read_text())
    (out / "teacher.json").write_text(json.dumps({**meta, "format": "jbert-teacher/0"}))
    with pytest.raises(InputError, match="format 'jbert-teacher/0', expected 'jbert-teacher/1'"):
        load_teacher(out)
    (out / "teacher.json").write_text(json.dumps({**meta, "documents": 4}))
    with pytest.raises(InputError, match=r"doc_ND has shape \(5, 16\), teacher.json says "
                                         r"\(4, 16\)"):
        load_teacher(out)
    (out / "teacher.json").write_text(json.dumps(meta))
    arrays = load_file(out / "teacher.safetensors")
    del arrays["query_key_Q20"]
    save_file(arrays, out / "teacher.safetensors")
    with pytest.raises(InputError, match="query_key_Q20 has shape None"):
        load_teacher(out)
    (out / "teacher.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_teacher(out)


def test_train_teacher_embeddings_end_to_end_and_its_bad_input(tmp_path, teacher_dir, capsys,
                                                              monkeypatch):
    from train.teacher_embeddings import main

    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "teacher"
    args = ["--teacher", str(teacher_dir), "--pairs", str(pairs), "--out", str(out),
            "--max-query-length", "8", "--doc-prompt", "code: "]
    main(args)
    teacher = load_teacher(out)
    assert (teacher.meta["pairs"], teacher.meta["split"], teacher.meta["doc_prompt"],
            teacher.meta["max_query_length"], teacher.meta["max_doc_length"]) == (
        str(pairs), "train", "code: ", 8, None)
    assert teacher.docs(DOCS).shape == (5, 16)
    for bad, culprit in [
            (args, f"--out {out}: holds teacher.json, teacher.safetensors already; give "
                   "--overwrite to replace it"),
            (["--teacher", str(tmp_path), "--pairs", str(pairs), "--out", str(tmp_path / "x")],
             f"--teacher {tmp_path}: not a sentence-transformers folder (no modules.json, "
             "config.json); python -m train.fetch_baselines makes them"),
            (["--teacher", str(teacher_dir), "--pairs", str(pairs), "--out",
              str(tmp_path / "x"), "--split", "test"],
             f"--pairs {pairs}: a directory without test.jsonl")]:
        with pytest.raises(SystemExit) as exit_:
            main(bad)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err == f"error: {culprit}\n", err
    assert not (tmp_path / "x").exists()
