"""python -m train.compare (jbert.analysis.compare): several runs' curves on one figure and
their final evals as a markdown table, from metrics.jsonl files shaped as the trainers write
them (keys and record kinds of a tiny contrastive run and a tiny MLM run)."""

import json
from pathlib import Path

import numpy as np
import pytest

from jbert.analysis.compare import compare_runs, eval_table, final_eval, load_runs
from jbert.errors import InputError
from train.compare import main

SYSTEMS = ("retrieval", "bm25", "rrf")
METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")


def contrastive_records(scale: float, evals=(2, 4), steps=4) -> list[dict]:
    """A contrastive run's records: the step means every step, an eval every 2 steps (macro
    figures and two languages'), the last eval at the end, as `train()` logs them."""
    records = []
    for step in range(1, steps + 1):
        records.append({"step": step, "time": 1.0e9 + step, "loss": 3.0 - scale * step,
                        "accuracy": 0.1 * step, "pos_sim": 0.5, "neg_sim": 0.1,
                        "hardest_neg_sim": 0.3, "temperature": 0.05, "grad_norm": 1.2,
                        "learning_rate": 1e-3, "tokens_per_s": 900.0,
                        "steps_remaining": steps - step, "eta_s": 2.0 * (steps - step)})
        if step in evals:
            record = {"step": step, "time": 1.0e9 + step}
            for system in SYSTEMS:
                for metric in METRICS:
                    value = min(1.0, scale * step / 4) if system != "bm25" else 0.5
                    record[f"{system}_{metric}"] = value
                    for language in ("python", "go"):
                        record[f"{language}/{system}_{metric}"] = value / 2
            records.append(record)
    return records


def write_run(path: Path, records: list[dict], torn: str = "") -> Path:
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + torn)
    return path


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    mlm = [{"step": s, "time": 1.0e9, "loss": 5.0 - s, "accuracy": 0.1 * s,
            "learning_rate": 1e-3} for s in (1, 2, 3)]
    mlm.append({"step": 3, "time": 1.0e9, "eval_loss": 2.5, "eval_accuracy": 0.4})
    return [write_run(tmp_path / "runs" / "base", contrastive_records(0.2)),
            write_run(tmp_path / "runs" / "hardneg", contrastive_records(0.25),
                      torn='{"step": 5, "loss": 1.'),  # a run still writing its log
            write_run(tmp_path / "runs" / "mlm", mlm)]


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()}


def test_one_panel_per_metric_one_line_per_run(runs):
    figure, _ = compare_runs(runs)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss", "eval_loss", "retrieval_ndcg@10"]
    loss, eval_loss, ndcg = map(_lines, axes)
    assert loss.keys() == {"base", "hardneg", "mlm"}
    np.testing.assert_allclose(loss["hardneg"][1], [2.75, 2.5, 2.25, 2.0])  # no torn step 5
    assert eval_loss == {"mlm": ([3], [2.5])}
    assert ndcg["base"] == ([2, 4], [0.1, 0.2]) and "mlm" not in ndcg
    assert all(ax.get_legend() and ax.get_xlabel() == "training step" for ax in axes)

    figure, _ = compare_runs(runs[:2], ["accuracy", "go/rrf_mrr@10"])
    assert [ax.get_title() for ax in figure.axes if ax.get_visible()] == [
        "accuracy", "go/rrf_mrr@10"]


def test_the_table_has_each_runs_last_eval(runs):
    table = eval_table(load_runs(runs), extra=["python/retrieval_ndcg@10"]).splitlines()
    assert table[0] == ("| run | step | eval_loss | eval_accuracy | retrieval_ndcg@10 | "
                        "retrieval_mrr@10 | retrieval_recall@1 | retrieval_recall@10 | "
                        "rrf_ndcg@10 | bm25_ndcg@10 | python/retrieval_ndcg@10 |")
    assert table[1] == "| --- | ---: |" + " ---: |" * 9
    assert table[2] == "| base | 4 | n/a | n/a" + " | 0.2000" * 5 + " | 0.5000 | 0.1000 |"
    assert table[3] == "| hardneg | 4 | n/a | n/a" + " | 0.2500" * 5 + " | 0.5000 | 0.1250 |"
    assert table[4] == "| mlm | 3 | 2.5000 | 0.4000" + " | n/a" * 7 + " |"
    assert len(table) == 5
    # The last eval record, not the last record nor an earlier eval.
    assert final_eval(contrastive_records(0.2, evals=(2, 3)))["step"] == 3
    assert final_eval([{"step": 1, "loss": 2.0}]) == {}


def test_command_writes_the_figure_and_table(runs, tmp_path, capsys):
    out, table = tmp_path / "out" / "runs.png", tmp_path / "out" / "runs.md"
    printed = main([*map(str, runs), "--out", str(out), "--table", str(table),
                    "--metrics", "loss,python/retrieval_ndcg@10"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.read_text() == printed == capsys.readouterr().out
    assert "| python/retrieval_ndcg@10 |" in printed.splitlines()[0]


@pytest.mark.parametrize("case,culprit", [
    ("missing", "error: {runs}/gone: no such run directory"),
    ("empty dir", "error: {runs}/empty: no metrics.jsonl (not a training run's workdir"),
    ("bad metric", "error: --metrics: no run logged 'retreival_ndcg@10' (did you mean "
                   "'retrieval_ndcg@10'?)"),
    ("bad line", "error: {runs}/broken/metrics.jsonl:2: not a JSON record"),
    ("twice", "error: {runs}/base: given twice"),
])
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, monkeypatch, case,
                                                  culprit):
    monkeypatch.delenv("JBERT_DEBUG", raising=False)
    root = tmp_path / "runs"
    argv = [str(root / "base")]
    if case == "missing":
        argv.append(str(root / "gone"))
    elif case == "empty dir":
        (root / "empty").mkdir()
        argv.append(str(root / "empty"))
    elif case == "bad metric":
        argv += ["--metrics", "loss,retreival_ndcg@10"]
    elif case == "bad line":
        argv.append(str(write_run(root / "broken", [], torn='{"step": 1}\nnot json\n{}\n')))
    else:
        argv.append(str(root / "base"))
    out = tmp_path / "out" / "fig.png"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(out), "--table", str(tmp_path / "out" / "t.md")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(culprit.format(runs=root)) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_runs_with_the_same_name_are_told_apart(tmp_path):
    a = write_run(tmp_path / "a" / "run", contrastive_records(0.2))
    b = write_run(tmp_path / "b" / "run", contrastive_records(0.3))
    assert list(load_runs([a, b])) == [str(a), str(b)]
    with pytest.raises(InputError, match="none of the runs logged loss, eval_loss"):
        compare_runs([write_run(tmp_path / "other", [{"step": 1, "x": 1.0}])])
