"""Hard-negative mining (jbert.tasks.mining, train.mine_negatives): rank window, margin, false
negatives, the BM25 cache, and the command."""

import json

import numpy as np
import pytest

from jbert.tasks import mining
from jbert.tasks.mining import MiningConfig, cached_bm25_negatives, dense_negatives


class FakeEmbedder:
    """Texts are "name" strings (after the prompt) mapped to fixed unit vectors."""

    def __init__(self, vectors, prompts=None):
        self.vectors = vectors
        self.prompts = prompts or {}

    def encode(self, texts, max_length=None, batch_size=None, prompt=""):
        return np.stack([self.vectors[prompt + t] for t in texts]).astype(np.float32)


def _unit(angle):
    return np.array([np.cos(angle), np.sin(angle)])


def test_dense_negatives_keep_the_window_and_drop_false_negatives():
    # One query at angle 0; positives spread by angle, so the rank order is known.
    docs = [f"doc{i}" for i in range(12)]
    vectors = {d: _unit(0.05 * i) for i, d in enumerate(docs)}
    vectors["q"] = _unit(0.02)  # doc0 ranks first, then doc1, ...
    vectors["doc1 "] = vectors["doc1"]  # same code as doc1 up to whitespace
    vectors.update({f"other{i}": _unit(3.0 + i) for i in range(12)})
    pairs = [{"query": "q", "positive": "doc1"}] + [
        {"query": f"other{i}", "positive": d} for i, d in enumerate(docs) if d != "doc1"]
    pairs.append({"query": "other11", "positive": "doc1 "})
    cfg = MiningConfig(negatives=3, rank_window=(0, 6), margin=0.99999, seed=0)
    mined, stats = dense_negatives(FakeEmbedder(vectors), pairs, cfg)
    negs = mined[0]["negatives"]
    # ranks 0..5 for q: doc0 (above the positive's score: dropped by the margin), doc1 (the
    # positive), doc1 with other whitespace (same code), doc2, doc3, doc4
    assert sorted(negs) == ["doc2", "doc3", "doc4"]
    assert stats["dropped_same_code"] >= 1 and stats["dropped_above_margin"] >= 1
    assert all(p["positive"] not in p["negatives"] for p in mined)
    json.dumps(stats)  # written to mining.json: plain Python numbers only
    # A model with prompts embeds "query: q" and "code: doc1": only those have vectors here.
    prompted = {("query: " if k == "q" or k.startswith("other") else "code: ") + k: v
                for k, v in vectors.items()}
    embedder = FakeEmbedder(prompted, {"query": "query: ", "document": "code: "})
    assert dense_negatives(embedder, pairs, cfg)[0] == mined


def test_mining_config_refuses_a_window_too_small():
    with pytest.raises(ValueError, match="rank_window"):
        MiningConfig(negatives=5, rank_window=(10, 12))


def test_bm25_negatives_are_cached_by_file_content(tmp_path, monkeypatch):
    pairs = [{"query": f"read file {i}", "positive": f"def read_{i}(path): return open(path)"}
             for i in range(6)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    first = cached_bm25_negatives(pairs, 2, tmp_path)
    assert all(len(p["negatives"]) == 2 for p in first)
    assert len(list((tmp_path / mining.CACHE_DIR).glob("bm25-n2-*.jsonl"))) == 1

    def no_mining(*args):
        raise AssertionError("mined again")

    monkeypatch.setattr(mining, "bm25_negatives", no_mining)
    assert cached_bm25_negatives(pairs, 2, tmp_path) == first
    (tmp_path / "train.jsonl").write_text(json.dumps(pairs[0]) + "\n")  # another file: new key
    with pytest.raises(AssertionError, match="mined again"):
        cached_bm25_negatives(pairs[:1], 2, tmp_path)


def test_mine_negatives_command(tmp_path, capsys):
    from train import mine_negatives

    src = tmp_path / "pairs"
    src.mkdir()
    pairs = [{"query": f"sort items {i}", "positive": f"def sort_{i}(xs): return sorted(xs)"}
             for i in range(8)]
    (src / "train.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (src / "test.jsonl").write_text(json.dumps(pairs[0]) + "\n")
    out = tmp_path / "mined"
    report = mine_negatives.main(["--bm25", "--pairs", str(src), "--out", str(out),
                                  "--negatives", "2"])
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["negatives"]) == 2 for r in rows)
    assert (out / "test.jsonl").read_text() == (src / "test.jsonl").read_text()
    assert json.loads((out / "mining.json").read_text())["method"] == report["method"] == "bm25"
    before = (out / "train.jsonl").read_text()
    with pytest.raises(SystemExit) as e:  # never overwrites unless asked
        mine_negatives.main(["--bm25", "--pairs", str(src), "--out", str(out), "--negatives", "1"])
    assert e.value.code == 2 and f"--out {out}" in capsys.readouterr().err
    assert (out / "train.jsonl").read_text() == before
    mine_negatives.main(["--bm25", "--pairs", str(src), "--out", str(out), "--negatives", "1",
                         "--overwrite"])
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["negatives"]) == 1 for r in rows)
