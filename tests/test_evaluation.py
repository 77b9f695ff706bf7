"""Retrieval metrics on hand-made rankings, BM25, and the embedding evaluation path."""

import numpy as np
import pytest

from jbert import functional
from jbert.config import preset
from jbert.data.tokenizer import tokenize_texts, train_tokenizer
from jbert.evaluation import (
    BM25Index,
    code_tokens,
    evaluate_embeddings,
    ranks_of_relevant,
    retrieval_metrics,
    retrieval_set,
)
from jbert.mining import bm25_negatives


def test_metrics_on_known_ranks():
    # ranks 1, 2, 4, 11 (a miss at k=10)
    m = retrieval_metrics(np.array([1, 2, 4, 11]))
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 0) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(5) + 0) / 4)
    assert m["recall@1"] == pytest.approx(0.25)
    assert m["recall@10"] == pytest.approx(0.75)


def test_ranks_from_scores_count_ties_against_the_relevant_document():
    scores_QN = np.array([[0.9, 0.1, 0.5],    # relevant 0: first
                          [0.9, 0.1, 0.5],    # relevant 2: second
                          [0.0, 0.0, 0.0]])   # all tied: last, not first
    np.testing.assert_array_equal(ranks_of_relevant(scores_QN, np.array([0, 2, 1])), [1, 2, 3])


def test_retrieval_set_deduplicates_the_corpus():
    pairs = [{"query": "a", "positive": "x"}, {"query": "b", "positive": "y"},
             {"query": "c", "positive": "x"}]
    queries, corpus, relevant = retrieval_set(pairs)
    assert queries == ["a", "b", "c"] and corpus == ["x", "y"]
    np.testing.assert_array_equal(relevant, [0, 1, 0])
    assert len(retrieval_set(pairs, max_pairs=2)[1]) == 2


def test_code_tokens_split_identifiers():
    assert code_tokens("def readFile(path_name):") == [
        "def", "read", "file", "readfile", "path", "name", "path_name"]


def test_bm25_ranks_the_exact_match_first_and_mines_negatives():
    corpus = ["def add(a, b): return a + b", "def read_file(path): return open(path).read()",
              "def sort_list(items): return sorted(items)", "class Tree: pass"]
    index = BM25Index(corpus)
    scores_QN = index.scores(["read file from path", "sort a list of items"])
    assert list(np.argmax(scores_QN, axis=1)) == [1, 2]
    pairs = [{"query": "read file", "positive": corpus[1]},
             {"query": "read the file list", "positive": corpus[2]},
             {"query": "add", "positive": corpus[0]}]
    mined = bm25_negatives(pairs, 1)
    assert all(len(p["negatives"]) == 1 and p["negatives"][0] != p["positive"] for p in mined)
    assert mined[1]["negatives"] == [corpus[1]]  # "read", "file": the best other document


def test_evaluate_embeddings_runs_on_an_encoder():
    texts = ["def add(a, b): return a + b", "add two numbers", "def read(p): return p",
             "read a path"] * 20
    tok = train_tokenizer(texts, vocab_size=320)
    config = preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                    intermediate_size=64, num_hidden_layers=1)
    params = functional.init_params(config, __import__("jax").random.key(0), "base")
    pairs = [{"query": "add two numbers", "positive": texts[0]},
             {"query": "read it", "positive": texts[2]}]
    out = evaluate_embeddings(config, params, tok, pairs, max_query_length=16,
                              max_doc_length=16, bm25=True)
    assert out["corpus"] == 2 and 0.5 <= out["mrr@10"] <= 1.0
    assert out["bm25_mrr@10"] == pytest.approx(1.0)

    # The figures are those of the encoder's own embeddings, one text per padded row (not the
    # packed `encode` path evaluate_embeddings takes): MRR from the ranks of q . d.
    many = [{"query": f"{verb} item {i}", "positive": f"def {verb}_{i}(x): return x + {i}"}
            for i, verb in enumerate(["add", "read", "sum", "load", "sort", "join", "find"])]
    out = evaluate_embeddings(config, params, tok, many, max_query_length=16, max_doc_length=16)

    def embed(texts):
        rows = tokenize_texts(tok, texts, 16)
        return np.asarray(functional.embed(config, params, rows["input_ids"],
                                           rows["attention_mask"]))

    scores_QN = embed([p["query"] for p in many]) @ embed([p["positive"] for p in many]).T
    ranks_Q = 1 + (scores_QN > np.diag(scores_QN)[:, None]).sum(1)
    assert out["corpus"] == len(many)
    assert out["mrr@10"] == pytest.approx(np.mean(np.where(ranks_Q <= 10, 1.0 / ranks_Q, 0.0)),
                                          abs=1e-6)
    assert out["recall@1"] == pytest.approx(np.mean(ranks_Q == 1), abs=1e-6)
