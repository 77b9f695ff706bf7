"""Every notebook runs top to bottom (nbclient, the venv's kernel) on tiny artefacts built here,
and saves non-trivial PNGs; notebooks are stored without outputs."""

import json
from pathlib import Path

import numpy as np
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
PNGS = {
    "01_model_tour.ipynb": [],
    "02_retrieval_eval.ipynb": ["retrieval_bars", "retrieval_by_language",
                                "similarity_histogram"],
    "03_length_extrapolation.ipynb": ["length_extrapolation"],
    "04_training_curves.ipynb": ["training_curves"],
}
LANGUAGES = {"Python": ("def {f}(a, b):\n    \"\"\"{doc}\"\"\"\n    return a {op} b\n"),
             "Go": "// {doc}\nfunc {f}(a int, b int) int {{\n    return a {op} b\n}}\n",
             "Java": "/** {doc} */\nstatic int {f}(int a, int b) {{\n    return a {op} b;\n}}\n"}


def _snippets(rng, n):
    out = []
    for i in range(n):
        lang = list(LANGUAGES)[i % len(LANGUAGES)]
        f = "_".join(rng.choice(["get", "add", "sum", "read", "file", "value", "count", "node",
                                 "parse", "item"], 3)) + str(i)
        doc = f"Compute the {f.replace('_', ' ')} of two numbers."
        op = rng.choice(["+", "-", "*"])
        out.append({"language": lang, "query": doc, "name": f,
                    "positive": LANGUAGES[lang].format(f=f, doc=doc, op=op)})
    return out


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A data dir (corpus, tokenizer, pairs), a 6-step MLM run with checkpoints and an export."""
    import dataclasses

    import datasets
    from helpers.synthetic import synthetic_task, tiny_config

    from jbert.data.tokenizer import save_tokenizer, train_tokenizer
    from jbert.training.export import export_run
    from jbert.training.trainer import train

    root = tmp_path_factory.mktemp("nb")
    rng = np.random.default_rng(0)
    snippets = _snippets(rng, 240)
    docs = ["\n".join(s["positive"] for s in snippets[i::6]) for i in range(6)]
    data = root / "data"
    for split, texts in (("train", docs[:3]), ("test", docs[3:])):
        (data / "corpus").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"text": texts, "language": ["mixed"] * len(texts)}).to_parquet(
            str(data / "corpus" / f"{split}-00000.parquet"))
    tokenizer = train_tokenizer(docs, vocab_size=384)
    save_tokenizer(tokenizer, data / "tokenizer")
    (data / "pairs").mkdir()
    (data / "pairs" / "test.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in snippets[:36]))

    cfg = tiny_config(root / "run", steps=6)
    cfg = dataclasses.replace(
        cfg, model=cfg.model.replace(vocab_size=tokenizer.get_vocab_size()),
        data=dataclasses.replace(cfg.data, dir=str(data)))
    train(cfg, synthetic_task(cfg))
    export_run(root / "run", root / "export", head="base")
    return {"JBERT_RUN_DIR": root / "run", "JBERT_DATA_DIR": data,
            "JBERT_EXPORT_DIR": root / "export", "JBERT_PLOTS_DIR": root / "plots",
            "JBERT_LENGTHS": "32,64,128,256,512", "JBERT_TOKENS_PER_LENGTH": "1024",
            "JBERT_MAX_QUERIES": "30"}


def test_notebooks_are_stored_without_outputs():
    import nbformat

    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_saves_plots(path, artefacts, monkeypatch):
    import nbformat
    from matplotlib.image import imread
    from nbclient import NotebookClient

    for key, value in artefacts.items():
        monkeypatch.setenv(key, str(value))
    book = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, naming the cell, if any cell fails.
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for name in PNGS[path.name]:
        png = artefacts["JBERT_PLOTS_DIR"] / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 10_000, png
        pixels = imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels.std() > 0.05, png


def test_every_notebook_has_its_plots_listed():
    assert {p.name for p in NOTEBOOKS} == set(PNGS)
