"""The sparse head (`contrastive.sparse_weight`): vocabulary max-pooling against numpy, packed
texts equal texts alone, its InfoNCE term against numpy, the 2x4 mesh and GradCache equal the
plain step, the export and the embedder score as trained, a head carried into a new run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.contrastive import (
    assert_gradcache_equals_plain,
    assert_trees_close,
    loss_and_grads,
    make_data_dir,
    numpy_info_nce,
    one_layer_config,
    random_batch,
    tiny_run_config,
)

from jbert.errors import ConfigError, InputError
from jbert.hf.keys import CheckpointError
from jbert.hf.sparse_head import SPARSE_HEAD_FILE, load_sparse_head
from jbert.model import functional
from jbert.model.heads import vocab_max_pool
from jbert.ops.sharding import make_mesh
from jbert.tasks.contrastive import contrastive_head, contrastive_loss_fn, temperature
from jbert.training.config import ContrastiveConfig

HEAD = "contrastive_sparse"


def sparse_params(seed=0):
    """A one-layer model with the sparse head, its weights moved off their init (bias 1,
    kernel N(0, 0.02), scaled 5x) so the tokens' weights differ."""
    params = functional.init_params(one_layer_config(), jax.random.key(seed), HEAD)
    kernel = params["sparse"]["dense"]["kernel"]
    params["sparse"]["dense"]["kernel"] = kernel * 5.0
    return params


def numpy_max_pool(weights, ids, vocab):
    out = np.zeros((len(ids), vocab), np.float32)
    for r in range(len(ids)):
        for w, t in zip(weights[r], ids[r], strict=True):
            out[r, t] = max(out[r, t], w)
    return out


def test_vocab_max_pool_matches_numpy_for_rows_and_packed_texts():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (3, 7)).astype(np.int32)  # small vocab: tokens repeat
    weights = rng.uniform(0, 2, (3, 7)).astype(np.float32)
    np.testing.assert_array_equal(vocab_max_pool(jnp.asarray(weights), jnp.asarray(ids), None, 6),
                                  numpy_max_pool(weights, ids, 6))
    # Row 0 holds texts 1 and 2, row 1 text 1 then padding, row 2 one text.
    segments = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 0, 0, 0, 0, 0], [1] * 7], np.int32)
    got = np.asarray(vocab_max_pool(jnp.asarray(weights * (segments > 0)), jnp.asarray(ids),
                                    jnp.asarray(segments), 6, num_segments=2))
    assert got.shape == (3, 2, 6)
    for r in range(3):
        for s in (1, 2):
            at = segments[r] == s
            want = numpy_max_pool(weights[r:r + 1, at], ids[r:r + 1, at], 6)[0]
            np.testing.assert_array_equal(got[r, s - 1], want, err_msg=f"row {r} text {s}")
    # Compact: the texts in row order (row 0's two, row 1's, row 2's), past `max_texts` dropped.
    for max_texts in (6, 3):
        compact = np.asarray(vocab_max_pool(jnp.asarray(weights * (segments > 0)),
                                            jnp.asarray(ids), jnp.asarray(segments), 6,
                                            num_segments=2, max_texts=max_texts))
        in_order = [got[0, 0], got[0, 1], got[1, 0], got[2, 0]][:max_texts]
        assert compact.shape == (max_texts, 6)
        np.testing.assert_array_equal(compact[:len(in_order)], np.stack(in_order))
        assert not compact[len(in_order):].any()


def test_sparse_head_starts_counting_every_token_once_and_packed_texts_equal_alone():
    config = one_layer_config()
    fresh = functional.init_params(config, jax.random.key(0), HEAD)
    np.testing.assert_array_equal(fresh["sparse"]["dense"]["bias"], [1.0])
    assert functional.logical_axes(config, HEAD)["sparse"]["dense"]["kernel"] == ("embed",
                                                                                   "labels")
    params = sparse_params()
    texts = [[2, 17, 40, 17, 3], [2, 99, 3], [2, 5, 6, 7, 8, 9, 3]]
    alone = [functional.encode(config, params, jnp.asarray([t]), jnp.ones((1, len(t)), jnp.int32))
             for t in texts]
    for out, t in zip(alone, texts, strict=True):
        vec = np.asarray(out["sparse"][0])
        assert set(np.flatnonzero(vec)) <= set(t) and vec.min() >= 0
        assert len(np.flatnonzero(vec)) >= 2  # the weights are not all cut to 0
    row = [tok for t in texts for tok in t]
    seg = [s for s, t in enumerate(texts, start=1) for _ in t]
    packed = functional.encode(config, params, jnp.asarray([row]),
                               jnp.ones((1, len(row)), jnp.int32), None, jnp.asarray([seg]),
                               num_segments=3)
    for s, out in enumerate(alone):
        for key in ("dense", "sparse"):
            np.testing.assert_allclose(packed[key][0, s], out[key][0], atol=1e-5)
    # Without the head's weights, only the dense embedding.
    assert set(functional.encode(config, params["bert"], jnp.asarray([texts[0]]),
                                 jnp.ones((1, 5), jnp.int32))) == {"dense"}


@pytest.mark.parametrize("symmetric", [pytest.param(False, marks=pytest.mark.slow), True])
def test_the_loss_adds_the_sparse_info_nce_at_its_weight(symmetric):
    config = one_layer_config()
    cfg = ContrastiveConfig(temperature=0.1, symmetric=symmetric, sparse_weight=0.5)
    assert contrastive_head(cfg) == HEAD
    params, batch = sparse_params(), random_batch(seed=4)

    def reps(prefix):
        return functional.encode(config, params, jnp.asarray(batch[f"{prefix}_ids"]),
                                 jnp.asarray(batch[f"{prefix}_mask"]))

    q, d = reps("query"), reps("doc")
    dense = numpy_info_nce(q["dense"], d["dense"], None, 0.1, symmetric)
    sparse = numpy_info_nce(q["sparse"], d["sparse"], None, 1.0, symmetric)
    _, sums = jax.jit(contrastive_loss_fn(config, cfg))(params, batch, None)
    np.testing.assert_allclose(float(sums["sparse_loss_sum"]), sparse, rtol=1e-5)
    np.testing.assert_allclose(float(sums["loss_sum"]), dense + 0.5 * sparse, rtol=1e-5)
    assert 0 <= float(sums["sparse_correct"]) <= len(batch["query_ids"])


@pytest.mark.slow  # about 20 s; the packed GradCache test on one device stays quick
def test_sparse_loss_and_grads_on_2x4_mesh_equal_single_device():
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                            learn_temperature=True, sparse_weight=1.0)
    params, batch = sparse_params(), random_batch(2, seed=5)
    loss_1, grads_1 = loss_and_grads(cfg, params, batch, None)
    loss_8, grads_8 = loss_and_grads(cfg, params, batch, make_mesh(data=2, fsdp=4))
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    assert_trees_close(grads_8, grads_1, atol=1e-5)
    assert np.abs(grads_1["sparse"]["dense"]["kernel"]).max() > 0


@pytest.mark.slow
def test_gradcache_with_the_sparse_head_equals_the_plain_gradient():
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                            learn_temperature=True, chunk_size=8, sparse_weight=0.5)
    assert_gradcache_equals_plain(cfg, random_batch(2, seed=6))


def test_bad_sparse_settings_and_files_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="contrastive.sparse_weight"):
        ContrastiveConfig(sparse_weight=-1.0)
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((1, 16), np.float32), "bias": np.zeros(1, np.float32),
               "dense_scale": np.ones(1, np.float32)}, str(tmp_path / SPARSE_HEAD_FILE))
    with pytest.raises(CheckpointError, match=f"{SPARSE_HEAD_FILE}.*hidden_size=32"):
        load_sparse_head(tmp_path, 32)
    assert load_sparse_head(tmp_path / "elsewhere", 32) is None


@pytest.mark.slow
def test_a_sparse_run_exports_its_head_and_scores_as_it_was_trained(tmp_path):
    """Train with the head, export: the export and the run dir embed alike, the evaluation
    reports the head and the model's own score, and a new run starting from the export
    carries the head."""
    from jbert.data.pair_batches import load_pairs
    from jbert.evaluation.beir import pairs_to_sets
    from jbert.evaluation.embedder import Embedder
    from jbert.evaluation.retrieval import DENSE_SPARSE, SPARSE, evaluate_retrieval
    from jbert.tasks.contrastive import contrastive_task
    from jbert.training.export import export_run
    from jbert.training.run_dir import init_params_from, load_run_params
    from jbert.training.trainer import train

    data = make_data_dir(tmp_path / "data")
    cfg = tiny_run_config(data, tmp_path / "run", steps=6, temperature=0.1,
                          learn_temperature=True, sparse_weight=1.0, pack=True)
    task, _ = contrastive_task(cfg, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    assert task.head == HEAD
    summary = train(cfg, task)
    for key in ("sparse_loss", "sparse_accuracy"):
        assert np.isfinite(summary["last"][key])
    for key in ("sparse_ndcg@10", "dense+sparse_ndcg@10", "retrieval_ndcg@10"):
        assert 0.0 <= summary["final_eval"][key] <= 1.0

    out = export_run(cfg.workdir, tmp_path / "export", head="base")
    assert (out / SPARSE_HEAD_FILE).is_file()
    card = (out / "README.md").read_text()
    assert "embedder.encode_sparse(" in card and "dense+sparse nDCG@10" in card
    _, params, _, _ = load_run_params(cfg.workdir)
    scale = 1.0 / float(temperature(cfg.contrastive, params))
    exported, run = Embedder.from_pretrained(out), Embedder.from_pretrained(cfg.workdir)
    texts = ["Add the sum number 3.", "def add_sum_3(x):\n    return sum(x) + 3"]
    for e in (exported, run):
        assert e.has_sparse and e.dense_scale == pytest.approx(scale, rel=1e-6)
    np.testing.assert_allclose(exported.encode_sparse(texts), run.encode_sparse(texts),
                               atol=1e-6)
    np.testing.assert_allclose(exported.encode(texts), run.encode(texts), atol=1e-6)
    vec = exported.encode_sparse(texts[1])
    assert vec.shape == (cfg.model.vocab_size,) and 0 < np.count_nonzero(vec) <= 24

    sets = pairs_to_sets(load_pairs(data / "pairs", "test"))
    report = evaluate_retrieval(exported, sets, max_query_length=16, max_doc_length=24,
                                per_query=True)
    assert {SPARSE, DENSE_SPARSE} <= set(report["macro"])
    assert report["macro"][SPARSE]["ndcg@10"] == pytest.approx(
        summary["final_eval"]["sparse_ndcg@10"], abs=1e-6)
    # The model's own score: the scaled cosine plus the sparse dot product.
    rs = sets[0]
    q, d = (exported.encode(x, max_length=n) for x, n in ((rs.queries, 16), (rs.docs, 24)))
    qs, ds = (exported.encode_sparse(x, max_length=n) for x, n in ((rs.queries, 16),
                                                                    (rs.docs, 24)))
    from jbert.evaluation.retrieval import set_metrics

    want = set_metrics(scale * (q @ d.T) + qs @ ds.T, rs)["ndcg@10"]
    assert report["sets"][rs.name][DENSE_SPARSE]["ndcg@10"] == pytest.approx(want, abs=1e-6)

    carried = init_params_from(str(out), cfg.model, HEAD)
    assert_trees_close(carried["sparse"], params["sparse"], atol=0)
    plain = init_params_from(str(out), cfg.model, "contrastive")
    assert "sparse" not in plain


def test_a_model_without_the_head_says_so():
    from jbert.data.tokenizer import train_tokenizer
    from jbert.evaluation.embedder import Embedder

    config = one_layer_config(vocab_size=320)
    tokenizer = train_tokenizer(["def add(x): return x + 1", "Add one."] * 20, vocab_size=320)
    embedder = Embedder(config, functional.init_params(config, jax.random.key(0)), tokenizer,
                        max_length=32)
    assert not embedder.has_sparse
    with pytest.raises(ValueError, match="no sparse head.*contrastive.sparse_weight"):
        embedder.encode_sparse("Add one.")
    with_head = functional.init_params(config, jax.random.key(0), HEAD)
    embedder.set_params(with_head)
    assert embedder.has_sparse and embedder.encode_sparse(["Add one."]).shape == (1, 320)
    assert set(embedder.model_params) == {"bert", "sparse"}


def test_an_unknown_key_in_a_sparse_file_is_an_input_error_not_a_crash(tmp_path):
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((1, 32), np.float32)}, str(tmp_path / SPARSE_HEAD_FILE))
    with pytest.raises((CheckpointError, InputError, ConfigError), match="expected"):
        load_sparse_head(tmp_path, 32)


def test_the_notebooks_report_shows_the_head_and_the_models_own_score(tmp_path):
    from jbert.analysis.diagnostics import retrieval_report
    from jbert.data.pair_batches import load_pairs
    from jbert.data.tokenizer import load_tokenizer
    from jbert.evaluation.embedder import Embedder

    data = make_data_dir(tmp_path / "data")
    config = one_layer_config(vocab_size=320)
    params = functional.init_params(config, jax.random.key(0), HEAD)
    embedder = Embedder(config, params, load_tokenizer(data / "tokenizer"), max_length=32,
                        dense_scale=10.0)
    report = retrieval_report(embedder, load_pairs(data / "pairs", "test"),
                              max_query_length=16, max_doc_length=24, model_name="m")
    assert {"m", "m (sparse head)", "m (dense + sparse)", "BM25"} <= set(report.metrics)
    for per_system in report.per_language.values():
        assert "m (dense + sparse)" in per_system
