"""BM25, code tokenisation, and the embedding evaluation path against the encoder itself
(metrics and fusion: tests/test_beir.py)."""

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import tokenize_texts, train_tokenizer
from jbert.evaluation.beir import pairs_to_sets
from jbert.evaluation.retrieval import (
    BM25Index,
    code_tokens,
    evaluate_retrieval,
    load_encoder,
    per_query_metrics,
)
from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.model.config import preset
from jbert.tasks.mining import bm25_negatives


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


def test_evaluate_retrieval_gives_the_encoders_own_figures(tmp_path):
    """The figures are those of the encoder's own embeddings, one text per padded row (not the
    packed `encode` path the evaluator takes): ranks of q . d over the set's corpus."""
    texts = ["def add(a, b): return a + b", "add two numbers", "def read(p): return p",
             "read a path"] * 20
    tok = train_tokenizer(texts, vocab_size=320)
    config = preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                    intermediate_size=64, num_hidden_layers=1)
    params = functional.init_params(config, jax.random.key(0), "base")
    save_pretrained(tmp_path / "export", config, params, tokenizer=tok)
    many = [{"query": f"{verb} item {i}", "positive": f"def {verb}_{i}(x): return x + {i}",
             "language": "Python"}
            for i, verb in enumerate(["add", "read", "sum", "load", "sort", "join", "find"])]
    sets = pairs_to_sets(many)
    out = evaluate_retrieval(load_encoder(tmp_path / "export"), sets, max_query_length=16,
                             max_doc_length=16)

    def embed(texts):
        rows = tokenize_texts(tok, texts, 16)
        return np.asarray(functional.embed(config, params, rows["input_ids"],
                                           rows["attention_mask"]))

    scores_QN = embed(sets[0].queries) @ embed(sets[0].docs).T
    top_QK = np.argsort(-scores_QN, axis=1, kind="stable")  # no ties among float scores
    expected = {m: float(np.mean(v)) for m, v in per_query_metrics(top_QK, sets[0]).items()}
    ranks_Q = 1 + (scores_QN > np.diag(scores_QN)[:, None]).sum(1)
    assert expected["mrr@10"] == pytest.approx(np.mean(1.0 / ranks_Q))
    for m, v in expected.items():
        assert out["sets"]["python"]["dense"][m] == pytest.approx(v, abs=1e-6), m
    assert out["macro"]["dense"] == out["sets"]["python"]["dense"]
    assert set(out["sets"]["python"]) == {"dense", "bm25", "rrf", "linear"}
