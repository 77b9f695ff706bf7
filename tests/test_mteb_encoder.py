"""The mteb adapter: mteb's own retrieval evaluation of a tiny jbert model on a local BEIR-layout
task, checked against nDCG@10 computed here from the same embeddings; the CLI and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import train_tokenizer
from jbert.evaluation.embedder import Embedder, load_encoder
from jbert.evaluation.mteb_encoder import beir_task, encoder_from_embedder, run
from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.model.config import preset
from train.mteb import main

VERBS = ["add", "scale", "sort", "read", "parse", "merge", "split", "count"]
# Documents: id -> (title, text); some titles empty, as in CoIR.
DOCS = {f"d{i}": ("" if i % 3 else f"{verb} helper",
                  f"def {verb}_{i}(items, factor={i}):\n    return [{verb}(x) * factor "
                  f"for x in items if x > {i % 4}]")
        for i, verb in enumerate(VERBS * 2)}
# Queries longer than 8 tokens, so --max_query_length 8 truncates them.
QUERIES = {f"q{j}": f"how do I {verb} every item of a list and multiply the result by a factor"
           for j, verb in enumerate(VERBS[:6])}
# Several relevant documents per query, graded (linear gains tell 2 from 1); q5 has one.
QRELS = {f"q{j}": {f"d{j}": 2, f"d{j + 8}": 1, f"d{(j + 3) % 16}": 1} for j in range(5)}
QRELS["q5"] = {"d13": 1}


def write_beir(path: Path, docs: dict, queries: dict, qrels: dict) -> Path:
    (path / "qrels").mkdir(parents=True)
    with (path / "corpus.jsonl").open("w") as f:
        for i, (title, text) in docs.items():
            f.write(json.dumps({"_id": i, "title": title, "text": text}) + "\n")
    with (path / "queries.jsonl").open("w") as f:
        for i, text in queries.items():
            f.write(json.dumps({"_id": i, "text": text}) + "\n")
    rows = [f"{q}\t{d}\t{s}" for q, rel in qrels.items() for d, s in rel.items()]
    (path / "qrels" / "test.tsv").write_text("\n".join(["query-id\tcorpus-id\tscore", *rows]))
    return path


def doc_text(title: str, text: str) -> str:
    """A document as mteb hands it to the encoder: title and text joined by a space."""
    return f"{title} {text}".strip() if title else text.strip()


def ndcg_at_10(q_QD: np.ndarray, d_ND: np.ndarray, query_ids: list, doc_ids: list,
               qrels: dict) -> float:
    """trec_eval's ndcg_cut.10: linear gains, log2(rank + 1) discounts, mean over the judged
    queries; the ranking is by cosine similarity of the embeddings."""
    scores_QN = q_QD @ d_ND.T
    out = []
    for q, scores in zip(query_ids, scores_QN, strict=True):
        top = np.argsort(-scores, kind="stable")[:10]
        gains = np.array([qrels[q].get(doc_ids[n], 0) for n in top], np.float64)
        ideal = np.sort(np.array(list(qrels[q].values()), np.float64))[::-1][:10]
        discount = 1.0 / np.log2(np.arange(2, 12))
        out.append(gains @ discount[: len(gains)] / (ideal @ discount[: len(ideal)]))
    return float(np.mean(out))


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    texts = [doc_text(*d) for d in DOCS.values()] + list(QUERIES.values())
    tokenizer = train_tokenizer(texts * 4, vocab_size=384)
    config = preset("tiny", vocab_size=tokenizer.get_vocab_size(), hidden_size=32,
                    num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    params = functional.init_params(config, jax.random.key(0), "base")
    # Laid out as a contrastive run's export, which names the results after the run.
    return save_pretrained(tmp_path_factory.mktemp("runs") / "tiny" / "export", config, params,
                           tokenizer)


@pytest.mark.slow
def test_mteb_ndcg_matches_an_independent_computation(tiny_export, tmp_path, capsys):
    beir = write_beir(tmp_path / "toy-code", DOCS, QUERIES, QRELS)
    out = tmp_path / "out"
    report = main(["--model", str(tiny_export), "--beir", str(beir), "--out", str(out),
                   "--max_query_length", "8", "--max_doc_length", "64",
                   "--query_prompt", "find: "])
    result_dir = out / "results" / "jbert__tiny-export" / "local"
    result = json.loads((result_dir / "toy-code.json").read_text())
    mteb_ndcg = result["scores"]["test"][0]["ndcg_at_10"]
    assert report["scores"]["toy-code"]["ndcg@10"] == pytest.approx(mteb_ndcg, abs=1e-6)
    assert "toy-code" in capsys.readouterr().out

    config, params, tokenizer, _ = load_encoder(tiny_export)
    embedder = Embedder(config, params, tokenizer, max_length=64)
    query_ids, doc_ids = list(QRELS), list(DOCS)
    q_QD = embedder.encode([f"find: {QUERIES[q]}" for q in query_ids], max_length=8)
    d_ND = embedder.encode([doc_text(*DOCS[d]) for d in doc_ids], max_length=64)
    expected = ndcg_at_10(q_QD, d_ND, query_ids, doc_ids, QRELS)
    assert mteb_ndcg == pytest.approx(expected, abs=1e-4)
    # The settings matter: without the prefix and the query length the figure differs, so the
    # match above is the adapter's doing.
    plain_QD = embedder.encode([QUERIES[q] for q in query_ids], max_length=64)
    assert abs(ndcg_at_10(plain_QD, d_ND, query_ids, doc_ids, QRELS) - expected) > 1e-3


@pytest.mark.slow
def test_a_perfect_ranking_scores_one(tiny_export, tmp_path):
    config, params, tokenizer, _ = load_encoder(tiny_export)
    encoder = encoder_from_embedder(Embedder(config, params, tokenizer, max_length=64),
                                    max_query_length=64, max_doc_length=64)
    # Each query is its document's text as mteb reads it: cosine 1 ranks it first.
    queries = {f"q{d}": doc_text(*DOCS[d]) for d in DOCS}
    own = {f"q{d}": {d: 1} for d in DOCS}
    ids = list(DOCS)
    shifted = {f"q{d}": {ids[(i + 1) % len(ids)]: 1} for i, d in enumerate(ids)}
    tasks = [beir_task(write_beir(tmp_path / "own", DOCS, queries, own)),
             beir_task(write_beir(tmp_path / "shifted", DOCS, queries, shifted))]
    scores = run(encoder, tasks, tmp_path / "out")
    assert scores["own"]["ndcg@10"] == pytest.approx(1.0, abs=1e-6)
    assert scores["shifted"]["ndcg@10"] < 0.7


@pytest.mark.slow  # about 4 s on 2 cores
def test_encode_applies_each_sides_prompt_and_length(tiny_export, tmp_path):
    from mteb.types import PromptType

    config, params, tokenizer, _ = load_encoder(tiny_export)
    embedder = Embedder(config, params, tokenizer, max_length=64)
    encoder = encoder_from_embedder(embedder, max_query_length=8, max_doc_length=64,
                                    prompts={"query": "find: ", "document": "code: "})
    task = beir_task(write_beir(tmp_path / "unit", DOCS, QUERIES, QRELS))
    texts = list(QUERIES.values())
    batches = [{"text": texts[:4]}, {"text": texts[4:]}]  # what mteb's dataloader yields

    def encode(prompt_type):
        return encoder.encode(batches, task_metadata=task.metadata, hf_split="test",
                              hf_subset="default", prompt_type=prompt_type)

    np.testing.assert_allclose(
        encode(PromptType.query),
        embedder.encode([f"find: {t}" for t in texts], max_length=8), atol=1e-6)
    np.testing.assert_allclose(
        encode(PromptType.document),
        embedder.encode([f"code: {t}" for t in texts], max_length=64), atol=1e-6)
    assert not np.allclose(encode(PromptType.query), encode(PromptType.document), atol=1e-3)
    assert encoder.mteb_model_meta.embed_dim == config.hidden_size


@pytest.mark.parametrize("args, message", [
    (["--tasks", "CosQAx"], "CosQA"),
    (["--benchmark", "CoIRx"], "CoIR"),
    (["--beir", "no/such/dir"], "corpus.jsonl"),
    (["--tasks", "CosQA", "--max_query_length", "100000"], "max_position_embeddings"),
    (["--tasks", "CosQA", "--name", "tiny"], "org/model"),
])
def test_cli_errors_are_one_line(tiny_export, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny_export), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
    assert message in err


def test_cli_refuses_a_bad_qrels_line(tiny_export, tmp_path, capsys):
    beir = write_beir(tmp_path / "toy", DOCS, QUERIES, QRELS)
    qrels = beir / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text() + "\nq0\td1\tvery\n")
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny_export), "--beir", str(beir), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "test.tsv:" in err


def test_cli_refuses_a_missing_model(tmp_path, capsys):
    beir = write_beir(tmp_path / "toy", DOCS, QUERIES, QRELS)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "nope"), "--beir", str(beir), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err


def test_importing_jbert_does_not_import_mteb():
    code = ("import sys, jbert, jbert.evaluation.mteb_encoder, train.mteb; "
            "assert 'mteb' not in sys.modules, 'mteb imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_an_exports_own_prompts_apply_unless_others_are_given(tiny_export, tmp_path):
    import shutil

    from jbert.evaluation.mteb_encoder import mteb_encoder

    prompted = tmp_path / "prompted"
    shutil.copytree(tiny_export, prompted)
    settings = json.loads((prompted / "config_sentence_transformers.json").read_text())
    settings["prompts"] = {"query": "find: ", "document": "code: "}
    (prompted / "config_sentence_transformers.json").write_text(json.dumps(settings))
    lengths = dict(max_query_length=8, max_doc_length=64)
    assert not mteb_encoder(tiny_export, **lengths).model_prompts  # mteb keeps None
    assert mteb_encoder(prompted, **lengths).model_prompts == {"query": "find: ",
                                                               "document": "code: "}
    assert mteb_encoder(prompted, prompts={"query": "search: "}, **lengths).model_prompts == {
        "query": "search: ", "document": "code: "}
