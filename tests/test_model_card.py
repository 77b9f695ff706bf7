"""The model card an export writes (`jbert.hf.model_card`, `jbert.training.run_card`)."""

import json
import re

import jax
import pytest
import yaml
from helpers.contrastive import make_data_dir
from helpers.synthetic import synthetic_task, tiny_config, tiny_model

from jbert.hf.model_card import ModelCard, Table, render_card
from jbert.hf.save import save_pretrained
from jbert.model import functional
from jbert.training.export import export_run
from jbert.training.run_card import base_model
from jbert.training.trainer import train


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    header, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(header)


def table_row(text: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row that starts with `first_cell`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in the card")


def test_plain_save_pretrained_writes_a_card_that_says_what_the_weights_are(tmp_path):
    config = tiny_model()
    params = functional.init_params(config, jax.random.key(0), "base")
    with pytest.warns(UserWarning, match="without a tokenizer"):
        out = save_pretrained(tmp_path / "plain", config, params, base_model="jinaai/some-model")
    text = (out / "README.md").read_text()
    meta = front_matter(text)
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "feature-extraction"
    assert meta["base_model"] == "jinaai/some-model"
    assert meta["language"] == ["en"]
    assert {"sentence-transformers", "custom_code", "jbert"} <= set(meta["tags"])
    assert f"{config.num_hidden_layers} layers, hidden size {config.hidden_size}" in text
    assert 'SentenceTransformer("path/or/repo", trust_remote_code=True)' in text
    assert 'AutoModel.from_pretrained("path/or/repo", trust_remote_code=True)' in text
    assert "jbert.Embedder(config, params, load_tokenizer(" in text
    # Nothing known about training: no sections that would have to make facts up.
    for absent in ("## Training", "## Evaluation", "prompt_name", "truncate_dim",
                   "base_model: None"):
        assert absent not in text


def test_prompts_and_matryoshka_sizes_reach_the_snippets():
    config = tiny_model()
    card = ModelCard(prompts={"query": "query: ", "document": "code: "},
                     matryoshka_dims=(8, 16, config.hidden_size),
                     programming_languages=("python",))
    text = render_card(config, "base", card)
    meta = front_matter(text)
    assert {"python", "matryoshka"} <= set(meta["tags"])
    assert 'prompt_name="query"' in text and 'prompt_name="document"' in text
    assert "truncate_dim=16" in text  # the largest trained size below the full one
    assert '"query: how to add two numbers"' in text  # transformers and jbert prepend it
    assert "leading 16, 8 dimensions" in text
    assert table_row(text, "`query`") == ["`query`", '`"query: "`']


def test_front_matter_survives_values_yaml_would_misread():
    card = ModelCard(base_model="runs/x: y", programming_languages=("no", "c++"))
    meta = front_matter(render_card(tiny_model(), "masked_lm", card))
    assert meta["base_model"] == "runs/x: y"
    assert "no" in meta["tags"] and "c++" in meta["tags"]  # not the boolean False
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"


def test_table_refuses_rows_of_the_wrong_width():
    assert Table(("a", "b"), (("1", "2"),)).markdown() == "| a | b |\n| --- | --- |\n| 1 | 2 |"
    with pytest.raises(ValueError, match="2 columns"):
        Table(("a", "b"), (("1",),))


def test_base_model_follows_init_from_back_to_a_named_export(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "README.md").write_text("---\nbase_model: jinaai/jina-bert-v2\n---\n")
    mlm_run = tmp_path / "mlm"
    (mlm_run / "checkpoints").mkdir(parents=True)
    (mlm_run / "config.json").write_text(json.dumps({"init_from": str(export)}))
    assert base_model(str(mlm_run)) == "jinaai/jina-bert-v2"
    assert base_model(str(export)) == "jinaai/jina-bert-v2"
    hub_id = "jinaai/jina-embeddings-v2-base-code"
    assert base_model(hub_id) == hub_id
    (mlm_run / "config.json").write_text(json.dumps({"init_from": None}))
    assert base_model(str(mlm_run)) is None  # a fresh MLM run: no base to name
    assert base_model(None) is None


CONTRASTIVE_CONFIG = '''
from jbert.model.config import preset
from jbert.training.config import (CheckpointConfig, ContrastiveConfig, DataConfig,
                                   TrainConfig)
from jbert.training.optim import OptimConfig


def get_config(arg=None):
    return TrainConfig(
        model=preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                     intermediate_size=64, num_hidden_layers=1, hidden_dropout_prob=0.0),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=1),
        data=DataConfig(dir={data!r}, batch_size=16),
        contrastive=ContrastiveConfig(
            temperature=0.1, max_query_length=16, max_doc_length=24,
            sources={sources!r}, query_prompt="query: ", matryoshka_dims=(16, 8)),
        checkpoint=CheckpointConfig(every_steps=2, keep=2, async_save=False),
        workdir={workdir!r}, steps=4, log_every=2, eval_every=2, progress=False)
'''


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    """A 4-step contrastive run through `python -m train.contrastive` (which exports it), with
    two sources and held-out pairs in two languages; ~30 s on 2 cores."""
    from train.contrastive import main

    root = tmp_path_factory.mktemp("card")
    data = make_data_dir(root / "data")
    test = [json.loads(line) for line in (data / "pairs" / "test.jsonl").read_text().splitlines()]
    (data / "pairs" / "test.jsonl").write_text("".join(
        json.dumps({**p, "language": ("python", "go")[i % 2]}) + "\n" for i, p in enumerate(test)))
    (root / "extra-go").mkdir()
    (root / "extra-go" / "train.jsonl").write_text("".join(
        json.dumps({"query": f"Return twice {i}.",
                    "positive": f"func twice{i}() int {{ return {i} }}"}) + "\n"
        for i in range(32)))
    config = root / "card_config.py"
    config.write_text(CONTRASTIVE_CONFIG.format(
        data=str(data), sources=f"{data / 'pairs'},{root / 'extra-go'}",
        workdir=str(root / "run")))
    summary = main(["--config", str(config)])
    assert summary["status"] == "done"
    return root / "run"


@pytest.mark.slow
def test_contrastive_export_card_tells_recipe_data_hardware_and_evaluation(contrastive_run):
    run = contrastive_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["train_pairs"] == {"pairs": 64, "extra-go": 32}
    assert summary["device_count"] == jax.device_count() and summary["process_count"] == 1
    assert summary["wall_time_s"] > 0
    text = (run / "export" / "README.md").read_text()

    meta = front_matter(text)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert {"go", "python", "matryoshka", "sentence-transformers"} <= set(meta["tags"])
    assert "base_model" not in meta  # a fresh initialisation

    assert table_row(text, "steps") == ["steps", "4"]
    assert table_row(text, "batch") == ["batch", "16 pairs"]
    assert table_row(text, "temperature") == ["temperature", "0.1"]
    assert table_row(text, "`pairs`") == ["`pairs`", "64"]
    assert table_row(text, "`extra-go`") == ["`extra-go`", "32"]
    assert table_row(text, "total") == ["total", "96"]
    kind = jax.devices()[0].device_kind
    assert table_row(text, "hardware") == ["hardware", f"{jax.device_count()} x {kind}"]
    assert f"({summary['wall_time_s']:.0f} s, to step 4)" in table_row(text, "wall time")[1]
    assert table_row(text, "Matryoshka sizes")[1] == "16 (weight 1), 8 (weight 1)"
    assert '"learning_rate": 0.003' in text  # the whole config, folded away

    final = summary["final_eval"]
    header = table_row(text, "set")
    for name in ("go", "python"):
        row = dict(zip(header, table_row(text, name), strict=True))
        assert row["queries"] == str(summary["data"]["eval_sets"][name]["queries"])
        assert row["BM25 nDCG@10"] == f"{final[f'{name}/bm25_ndcg@10']:.3f}"
        assert row["BM25 MRR@10"] == f"{final[f'{name}/bm25_mrr@10']:.3f}"
        assert row["nDCG@10"] == f"{final[f'{name}/retrieval_ndcg@10']:.3f}"
        assert row["RRF nDCG@10"] == f"{final[f'{name}/rrf_ndcg@10']:.3f}"
    macro = dict(zip(header, table_row(text, "**macro**"), strict=True))
    assert macro["nDCG@10"] == f"{final['retrieval_ndcg@10']:.3f}"
    assert macro["BM25 nDCG@10"] == f"{final['bm25_ndcg@10']:.3f}"

    assert 'prompt_name="query"' in text and "truncate_dim=16" in text
    assert 'prompt_name="document"' not in text  # no document prompt was configured
    assert "jbert.load_pretrained(" in text and "AutoModel.from_pretrained(" in text


@pytest.mark.slow
def test_card_of_an_earlier_step_shows_that_steps_evaluation(contrastive_run, tmp_path):
    out = export_run(contrastive_run, tmp_path / "step2", step=2, head="base")
    text = (out / "README.md").read_text()
    assert table_row(text, "steps") == ["steps", "2 (of 4 planned)"]
    logged = [json.loads(line) for line in
              (contrastive_run / "metrics.jsonl").read_text().splitlines()]
    at_2 = [r for r in logged if r["step"] == 2 and "retrieval_ndcg@10" in r][-1]
    macro = table_row(text, "**macro**")
    assert f"{at_2['retrieval_ndcg@10']:.3f}" in macro
    assert "at step 2" in text


@pytest.mark.slow
def test_mlm_export_card_shows_its_eval_loss(tmp_path):
    run = tmp_path / "mlm"
    cfg = tiny_config(run, steps=3)
    train(cfg, synthetic_task(cfg))
    summary = json.loads((run / "summary.json").read_text())
    text = (export_run(run, tmp_path / "export") / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert table_row(text, "masked-token loss")[1] == f"{summary['final_eval']['eval_loss']:.3f}"
    assert re.search(r"\| stage \| masked_lm pretraining", text)
    assert "AutoModelForMaskedLM.from_pretrained(" in text
    assert "retrieval" not in text.lower().split("## evaluation")[1]


def usage_snippets(text: str, path) -> dict[str, str]:
    """The card's Python blocks under Usage, by library, with the placeholder path replaced."""
    usage = text.split("## Usage")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", usage, re.DOTALL)
    assert len(blocks) == 3, usage
    return dict(zip(("sentence-transformers", "transformers", "jbert"),
                    (b.replace("path/or/repo", str(path)) for b in blocks), strict=True))


@pytest.fixture(scope="module")
def self_contained_export(contrastive_run, tmp_path_factory):
    """The run exported with jbert's own modeling code: its snippets run offline."""
    out = tmp_path_factory.mktemp("sc") / "export"
    return export_run(contrastive_run, out, head="base", self_contained=True)


@pytest.mark.slow
@pytest.mark.parametrize("library", ["transformers", "jbert"])
def test_usage_snippets_of_the_card_run(self_contained_export, library, capsys):
    if library == "transformers":
        pytest.importorskip("torch")
        pytest.importorskip("transformers")
    text = (self_contained_export / "README.md").read_text()
    exec(usage_snippets(text, self_contained_export)[library], {})
    similarity = float(capsys.readouterr().out.strip().strip("[]"))
    assert -1.0 <= similarity <= 1.0 + 1e-5


@pytest.mark.slow
def test_sentence_transformers_snippet_of_the_card_runs(self_contained_export, capsys):
    pytest.importorskip("sentence_transformers")
    st_config = json.loads(
        (self_contained_export / "config_sentence_transformers.json").read_text())
    if "query" not in st_config.get("prompts", {}):
        pytest.skip("save_pretrained does not write the run's prompts into "
                    "config_sentence_transformers.json yet: prompt_name='query' has nothing to "
                    "name")
    text = (self_contained_export / "README.md").read_text()
    exec(usage_snippets(text, self_contained_export)["sentence-transformers"], {})
    similarity = float(capsys.readouterr().out.strip().strip("[]tensor()"))
    assert -1.0 <= similarity <= 1.0 + 1e-5
