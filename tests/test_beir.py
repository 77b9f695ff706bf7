"""BEIR-layout sets (evaluation.beir) and the graded-relevance evaluator (evaluation.retrieval):
metrics against hand computations and against pytrec_eval, fusion, the trainer's set evaluator."""

import json

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import train_tokenizer
from jbert.evaluation.beir import RetrievalSet, load_beir, pairs_to_sets, write_beir
from jbert.evaluation.embedder import Embedder
from jbert.evaluation.retrieval import (
    BM25Index,
    SetEvaluator,
    evaluate_set,
    linear_fusion,
    macro_average,
    per_query_metrics,
    rank_documents,
    rrf_scores,
    set_metrics,
)
from jbert.model import functional
from jbert.model.config import preset


def _set():
    return RetrievalSet("toy", ["d0", "d1", "d2", "d3"], ["a", "b", "c", "d"], ["q0", "q1"],
                        ["x", "y"], {"q0": {"d1": 2, "d3": 1}, "q1": {"d0": 1}})


def test_beir_round_trip_and_errors(tmp_path):
    rs = _set()
    write_beir(rs, tmp_path / "toy")
    back = load_beir(tmp_path / "toy")
    assert back == rs
    (tmp_path / "toy" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tzz\t1\n")
    with pytest.raises(ValueError, match="not in corpus.jsonl"):
        load_beir(tmp_path / "toy")
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path / "missing")
    (tmp_path / "toy" / "qrels" / "test.tsv").write_text("q0\td1\n")
    with pytest.raises(ValueError, match=r"test.tsv:1"):
        load_beir(tmp_path / "toy")


def test_beir_titles_and_queries_without_relevance(tmp_path):
    root = tmp_path / "set"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(
        json.dumps({"_id": 1, "title": "Head", "text": "body"}) + "\n"
        + json.dumps({"_id": 2, "text": "other"}) + "\n")
    (root / "queries.jsonl").write_text(
        json.dumps({"_id": "a", "text": "find"}) + "\n" + json.dumps({"_id": "b", "text": "no"}))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\na\t1\t1\nb\t2\t0\n")
    rs = load_beir(root)
    assert rs.docs == ["Head body", "other"] and rs.query_ids == ["a"]  # b has no relevant doc


def test_pairs_become_one_set_per_language_with_grouped_queries():
    pairs = [{"query": "add", "positive": "def add", "language": "Python"},
             {"query": "add", "positive": "def plus", "language": "Python"},
             {"query": "sub", "positive": "def sub", "language": "Python"},
             {"query": "add", "positive": "func Add", "language": "GO"}]
    sets = {rs.name: rs for rs in pairs_to_sets(pairs)}
    assert sorted(sets) == ["go", "python"]
    py = sets["python"]
    assert py.queries == ["add", "sub"] and len(py.docs) == 3
    assert py.qrels[py.query_ids[0]] == {"d0": 1, "d1": 1}
    sampled = pairs_to_sets(pairs, max_queries=1)[1]
    assert len(sampled.queries) == 1 and len(sampled.docs) == 3  # the corpus stays whole


def test_metrics_by_hand_with_graded_relevance_and_ties():
    rs = _set()
    # q0 ranks d3 (rel 1), d1 (rel 2), ...; q1: all scores tie, so doc ids decide, highest
    # first (trec_eval's rule): d3, d2, d1, d0.
    scores = np.array([[0.1, 0.5, 0.0, 0.9], [0.3, 0.3, 0.3, 0.3]])
    top = rank_documents(scores, rs.doc_ids)
    np.testing.assert_array_equal(top, [[3, 1, 0, 2], [3, 2, 1, 0]])
    m = per_query_metrics(top, rs)
    idcg = 2 + 1 / np.log2(3)
    assert m["ndcg@10"][0] == pytest.approx((1 + 2 / np.log2(3)) / idcg)
    assert m["ndcg@10"][1] == pytest.approx(1 / np.log2(5))
    assert list(m["mrr@10"]) == [1.0, 0.25]
    assert list(m["recall@1"]) == [0.5, 0.0] and list(m["recall@10"]) == [1.0, 1.0]


def test_metrics_equal_pytrec_eval():
    import pytrec_eval  # the test extra installs it
    rng = np.random.default_rng(0)
    n_docs, n_queries = 150, 40
    doc_ids = [f"doc{i}" for i in range(n_docs)]
    qrels = {f"q{q}": {doc_ids[j]: int(rng.integers(1, 4))
                       for j in rng.choice(n_docs, int(rng.integers(1, 5)), replace=False)}
             for q in range(n_queries)}
    rs = RetrievalSet("rand", doc_ids, doc_ids, list(qrels), list(qrels), qrels)
    scores = np.round(rng.normal(size=(n_queries, n_docs)), 1)  # many ties
    ours = set_metrics(scores, rs)
    top = rank_documents(scores, doc_ids)
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qrels)}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.1,10,100"})
    theirs = evaluator.evaluate(run)
    for ours_key, key in (("ndcg@10", "ndcg_cut_10"), ("recall@1", "recall_1"),
                          ("recall@10", "recall_10"), ("recall@100", "recall_100")):
        assert ours[ours_key] == pytest.approx(np.mean([v[key] for v in theirs.values()]),
                                               abs=1e-9), ours_key


def test_fusion():
    rs = RetrievalSet("f", ["a", "b", "c"], ["", "", ""], ["q0", "q1", "q2", "q3"],
                      ["", "", "", ""], {"q0": {"a": 1}, "q1": {"b": 1}, "q2": {"c": 1},
                                         "q3": {"a": 1}})
    perfect = np.eye(3)[[0, 1, 2, 0]] + 0.0
    noise = np.array([[0.0, 1.0, 0.5]] * 4)
    fused = rrf_scores(perfect, noise)
    assert fused.shape == (4, 3) and fused[0, 0] > fused[0, 2]
    metrics, alphas = linear_fusion(perfect, noise, rs)
    assert metrics["ndcg@10"] == pytest.approx(1.0) and all(a > 0.5 for a in alphas)
    out = evaluate_set(rs, perfect, noise)
    assert out["dense"]["ndcg@10"] == 1.0 and out["bm25"]["ndcg@10"] < 1.0
    assert set(out) == {"dense", "bm25", "rrf", "linear"}
    macro = macro_average({"x": out, "y": evaluate_set(rs, noise, perfect)})
    assert macro["dense"]["ndcg@10"] == pytest.approx(
        (1.0 + out["bm25"]["ndcg@10"]) / 2)


@pytest.mark.slow
def test_set_evaluator_matches_encode_and_compiles_once():
    texts = ["def add(a, b): return a + b", "add two numbers", "def read(p): return p",
             "read a path", "def sort(x): return sorted(x)", "sort the list"] * 10
    tok = train_tokenizer(texts, vocab_size=320)
    config = preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                    intermediate_size=64, num_hidden_layers=1)
    pairs = [{"query": texts[i + 1], "positive": texts[i], "language": "Python"}
             for i in range(0, 6, 2)]
    sets = pairs_to_sets(pairs)
    evaluator = SetEvaluator(config, tok, sets, max_query_length=16, max_doc_length=32)
    compiled = []  # new compilations of each evaluation (embedders of a config share them)
    for seed in (0, 1):
        params = functional.init_params(config, jax.random.key(seed), "base")
        before = evaluator.embedder._encode._cache_size()
        out = evaluator(params)
        compiled.append(evaluator.embedder._encode._cache_size() - before)
        embedder = Embedder(config, params, tok, max_length=32)
        q = embedder.encode(sets[0].queries, max_length=16)
        d = embedder.encode(sets[0].docs, max_length=32)
        assert out["sets"]["python"]["dense"] == set_metrics(q @ d.T, sets[0])
        bm25 = BM25Index(sets[0].docs).scores(sets[0].queries)
        assert out["sets"]["python"]["bm25"] == set_metrics(bm25, sets[0])
        assert out["sets"]["python"]["rrf"] == set_metrics(rrf_scores(q @ d.T, bm25), sets[0])
    # two shapes (queries, documents) at most for the first params, none for the second
    assert compiled[0] <= 2 and compiled[1] == 0
    before = evaluator.embedder._encode._cache_size()
    SetEvaluator(config, tok, sets, max_query_length=16, max_doc_length=32)(params)
    assert evaluator.embedder._encode._cache_size() == before  # another evaluator: no compile
