"""BM25, code tokenisation, and the embedding evaluation path against the encoder itself
(metrics and fusion: tests/test_beir.py)."""

import dataclasses

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import tokenize_texts, train_tokenizer
from jbert.evaluation.beir import pairs_to_sets
from jbert.evaluation.embedder import Embedder
from jbert.evaluation.retrieval import (
    BM25Index,
    code_tokens,
    evaluate_retrieval,
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
    out = evaluate_retrieval(Embedder.from_pretrained(tmp_path / "export"), sets,
                             max_query_length=16, max_doc_length=16)

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


@pytest.fixture(scope="module")
def tiny_model():
    texts = ["def add(a, b): return a + b", "add two numbers", "def read(p): return p",
             "read a path"] * 20
    tok = train_tokenizer(texts, vocab_size=320)
    config = preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                    intermediate_size=64, num_hidden_layers=1)
    return config, functional.init_params(config, jax.random.key(0), "base"), tok


def _pairs(language="Python", n=7):
    verbs = ["add", "read", "sum", "load", "sort", "join", "find", "open", "close", "parse"]
    return [{"query": f"{verbs[i % 10]} item {i}", "language": language,
             "positive": f"def {verbs[i % 10]}_{i}(x): return x + {i}"} for i in range(n)]


def test_set_evaluator_reports_matryoshka_sizes_from_one_pass(tiny_model):
    from jbert.evaluation.embedder import truncate
    from jbert.evaluation.retrieval import SetEvaluator, evaluate_set, logged_metrics

    config, params, tok = tiny_model
    sets = pairs_to_sets(_pairs("Python") + _pairs("Go", 9))
    plain = SetEvaluator(config, tok, sets, max_query_length=16, max_doc_length=16)
    sized = SetEvaluator(config, tok, sets, max_query_length=16, max_doc_length=16,
                         dims=(8, 16, 32))  # 32 = hidden_size: the full size, reported anyway
    assert sized.dims == (16, 8)
    want, got = plain(params), sized(params)
    assert {k: got[k] for k in want} == want  # the full size: today's figures, unchanged
    embeddings = sized.embeddings(params)
    for d in (16, 8):
        for rs, (q_QD, d_ND), bm25_QN in zip(sets, embeddings, sized.bm25, strict=True):
            expected = evaluate_set(rs, truncate(q_QD, d) @ truncate(d_ND, d).T, bm25_QN)
            del expected["bm25"]
            assert got["dims"][d]["sets"][rs.name] == expected
    # a smaller size ranks differently (so the sizes are not the full width relabelled)
    assert got["dims"][8]["macro"]["dense"] != got["macro"]["dense"]
    logged = logged_metrics(got)
    assert {k: v for k, v in logged.items() if not k.startswith("dim")} == logged_metrics(want)
    assert logged["dim8/retrieval_ndcg@10"] == got["dims"][8]["macro"]["dense"]["ndcg@10"]
    assert logged["dim16/go/rrf_ndcg@10"] == got["dims"][16]["sets"]["go"]["rrf"]["ndcg@10"]
    assert not any(k.startswith("dim") and "bm25" in k for k in logged)
    with pytest.raises(ValueError, match=r"sizes \[33\] must be in \[1, 32\]"):
        SetEvaluator(config, tok, sets, dims=(33,))


def test_set_evaluator_puts_prompts_before_queries_and_documents(tiny_model):
    from jbert.evaluation.retrieval import SetEvaluator

    config, params, tok = tiny_model
    rs = pairs_to_sets(_pairs())[0]
    prefixed = dataclasses.replace(rs, queries=["query: " + q for q in rs.queries],
                                   docs=["code: " + d for d in rs.docs])
    lengths = dict(max_query_length=16, max_doc_length=24, bm25=False)
    with_prompts = SetEvaluator(config, tok, [rs], query_prompt="query: ", doc_prompt="code: ",
                                **lengths)
    np.testing.assert_array_equal(with_prompts.dense_scores(params)[0],
                                  SetEvaluator(config, tok, [prefixed], **lengths
                                               ).dense_scores(params)[0])
    assert not np.allclose(with_prompts.dense_scores(params)[0],
                           SetEvaluator(config, tok, [rs], **lengths).dense_scores(params)[0])


def test_export_prompts_and_sizes_reach_the_evaluation(tiny_model, tmp_path):
    from jbert.evaluation.retrieval import SetEvaluator

    config, params, tok = tiny_model
    save_pretrained(tmp_path / "export", config, params, tokenizer=tok,
                    prompts={"query": "query: ", "document": ""}, matryoshka_dims=(16, 8))
    embedder = Embedder.from_pretrained(tmp_path / "export")
    assert embedder.prompts == {"query": "query: "} and embedder.matryoshka_dims == (16, 8)
    sets = pairs_to_sets(_pairs())
    out = evaluate_retrieval(embedder, sets, max_query_length=16, max_doc_length=16)
    want = SetEvaluator(config, tok, sets, max_query_length=16, max_doc_length=16,
                        query_prompt="query: ", dims=(16, 8))(params)
    assert out == want and set(out["dims"]) == {16, 8}
    assert "dims" not in evaluate_retrieval(embedder, sets, max_query_length=16,
                                            max_doc_length=16, dims=())


def test_named_eval_sets_read_beir_dirs_and_pairs_and_name_bad_entries(tiny_model, tmp_path):
    import json

    from jbert.errors import InputError
    from jbert.evaluation.beir import load_named_sets, write_beir
    from jbert.evaluation.retrieval import named_evaluators

    config, _, tok = tiny_model
    beir = write_beir(pairs_to_sets(_pairs())[0], tmp_path / "beir")
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "test.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in _pairs("Python") + _pairs("Go")))
    (tmp_path / "one.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs("Java")))
    named = load_named_sets(f"mine={beir}, theirs={tmp_path / 'pairs'},one={tmp_path}/one.jsonl")
    assert [rs.name for rs in named["mine"]] == ["mine"]
    assert [rs.name for rs in named["theirs"]] == ["go", "python"]
    assert [rs.name for rs in named["one"]] == ["java"] and len(named["one"][0].queries) == 7
    assert load_named_sets(f"m={beir}", max_queries=3)["m"][0].queries != named["mine"][0].queries
    (tmp_path / "empty").mkdir()
    (tmp_path / "beir-bad" / "qrels").mkdir(parents=True)
    bad = {f"x={tmp_path / 'nowhere'}": "does not exist",
           f"x={tmp_path / 'empty'}": "neither a BEIR-layout directory",
           f"x={tmp_path / 'beir-bad'}": "no corpus.jsonl",
           "x": "is not name=path",
           f"x={beir},x={beir}": "given twice"}
    for spec, message in bad.items():
        with pytest.raises(InputError, match=f"^contrastive.eval_sets: .*{message}") as e:
            load_named_sets(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"name\(s\) \['python'\]"):
        named_evaluators(f"python={beir}", config, tok, reserved=["python"])
    with pytest.raises(InputError, match=r"name\(s\) \['dim64'\]"):
        named_evaluators(f"dim64={beir}", config, tok)
    evaluators = named_evaluators(f"mine={beir}", config, tok, max_query_length=16)
    assert evaluators["mine"].lengths == (16, 256) and evaluators["mine"].sets == named["mine"]


@pytest.mark.slow  # four evaluations
def test_train_evaluate_applies_the_exports_prompts_and_reports_dims(tiny_model, tmp_path,
                                                                    capsys, monkeypatch):
    import json

    from train.evaluate import main

    config, params, tok = tiny_model
    export = save_pretrained(tmp_path / "export", config, params, tokenizer=tok,
                             prompts={"query": "query: "}, matryoshka_dims=(8,))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs()))
    args = ["--model", str(export), "--pairs", str(tmp_path / "test.jsonl"),
            "--max_query_length", "16", "--max_doc_length", "16"]
    out = main(args)
    assert out["prompts"] == {"query": "query: "} and list(out["dims"]) == [8]
    assert main([*args, "--dims", "16,4"])["dims"].keys() == {16, 4}
    assert "dims" not in main([*args, "--dims", ""])
    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--dims", "64"])
    assert capsys.readouterr().err == ("error: --dims 64: sizes must be at most the model's "
                                       "hidden_size 32\n")


def test_baselines_are_systems_beside_the_others_with_their_per_query_values():
    """Other models' scores (`baselines`) are reported under their names after the built-in
    systems, per set and macro; `per_query` keeps the values the means are taken of."""
    from jbert.evaluation.retrieval import (
        SetEvaluator,
        evaluate_set,
        macro_average,
        query_metrics,
        set_metrics,
    )

    sets = pairs_to_sets(_pairs("Python") + _pairs("Go", 9))
    rng = np.random.default_rng(0)
    scores = {rs.name: {s: rng.normal(size=(len(rs.queries), len(rs.docs)))
                        for s in ("dense", "bm25", "minilm")} for rs in sets}
    per_query = {}
    rs = sets[0]
    s = scores[rs.name]
    out = evaluate_set(rs, s["dense"], s["bm25"], baselines={"minilm": s["minilm"]},
                       per_query=per_query)
    assert list(out) == ["dense", "bm25", "rrf", "linear", "minilm"] == list(per_query)
    assert out["minilm"] == set_metrics(s["minilm"], rs)
    for system, values in per_query.items():
        assert {m: float(np.mean(v)) for m, v in values.items()} == {
            m: v for m, v in out[system].items() if m != "alpha_mean"}
    for m, v in query_metrics(s["dense"], rs).items():
        np.testing.assert_array_equal(per_query["dense"][m], v)
    assert evaluate_set(rs, s["dense"], s["bm25"]) == {
        k: v for k, v in out.items() if k != "minilm"}  # nothing else moves
    with pytest.raises(ValueError, match="clash"):
        evaluate_set(rs, s["dense"], baselines={"bm25": s["minilm"]})
    result = SetEvaluator(None, None, sets).results(
        None, baselines={"minilm": [scores[r.name]["minilm"] for r in sets]}, per_query=True)
    assert list(result["macro"]) == ["bm25", "minilm"]
    assert result["per_query"].keys() == {r.name for r in sets}
    assert result["macro"] == macro_average(result["sets"])
    assert "per_query" not in SetEvaluator(None, None, sets).results(None)
