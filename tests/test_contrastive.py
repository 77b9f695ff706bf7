"""Contrastive stage: InfoNCE against numpy, the global gather on a 2x4 mesh equals one device,
GradCache equals the plain gradient, temperature, single-source batches, a run of the Task."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.contrastive import (
    B,
    assert_gradcache_equals_plain,
    assert_trees_close,
    loss_and_grads,
    make_data_dir,
    numpy_info_nce,
    one_layer_config,
    random_batch,
    tiny_run_config,
    unit_rows,
)

from jbert.data.pair_batches import MultiSourceBatcher, PairBatcher
from jbert.model import functional
from jbert.model.config import preset
from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.tasks.contrastive import (
    GROUPS,
    cached_grad_fn,
    info_nce,
    paired_slots,
    summarize,
    temperature,
)
from jbert.training.config import ContrastiveConfig, DataConfig, TrainConfig
from jbert.training.step import strided_split

ROOT = Path(__file__).resolve().parent.parent
NEG = 2


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [0, 3])
def test_info_nce_matches_numpy_on_one_and_eight_devices(symmetric, negatives):
    rng = np.random.default_rng(1)
    q, d = unit_rows(rng, (B, 8)), unit_rows(rng, (B, 8))
    n = unit_rows(rng, (B * negatives, 8)) if negatives else None
    want = numpy_info_nce(q, d, n, 0.1, symmetric)
    single = info_nce(*paired_slots(q, d, n), jnp.float32(0.1), symmetric=symmetric)
    mesh = make_mesh(data=2, fsdp=4)
    put = lambda x: None if x is None else jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    sharded = jax.jit(lambda q, d, n: info_nce(*paired_slots(q, d, n), jnp.float32(0.1),
                                               symmetric=symmetric, mesh=mesh))(
        put(q), put(d), put(n))
    for sums in (single, sharded):
        np.testing.assert_allclose(float(sums["loss_sum"]), want, rtol=1e-5)
        assert float(sums["count"]) == B
        np.testing.assert_allclose(float(sums["pos_sim_sum"]), np.sum(q * d), rtol=1e-5)
    assert float(sharded["correct"]) == float(single["correct"])
    assert float(sharded["neg_count"]) == B * (B * (1 + negatives) - 1)


def test_info_nce_gradients_on_2x4_mesh_equal_single_device():
    """The gather's backward (a reduce-scatter) hands each device its documents' gradient."""
    rng = np.random.default_rng(2)
    q, d, n = unit_rows(rng, (B, 8)), unit_rows(rng, (B, 8)), unit_rows(rng, (B * NEG, 8))
    mesh = make_mesh(data=2, fsdp=4)

    def loss(q, d, n, tau, mesh):
        return info_nce(*paired_slots(q, d, n), tau, symmetric=True, mesh=mesh)["loss_sum"]

    grad = jax.grad(loss, argnums=(0, 1, 2, 3))
    want = grad(q, d, n, jnp.float32(0.07), None)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    got = jax.jit(lambda *a: grad(*a, mesh))(put(q), put(d), put(n), jnp.float32(0.07))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [
    pytest.param(dict(), marks=pytest.mark.slow),
    pytest.param(dict(symmetric=True, hard_negatives=NEG, learn_temperature=True),
                 marks=pytest.mark.slow),
], ids=["plain", "symmetric+negatives+learned"])
def test_loss_and_grads_on_2x4_mesh_equal_single_device(variant):
    cfg = ContrastiveConfig(temperature=0.1, **variant)
    params = functional.init_params(one_layer_config(), jax.random.key(0), "contrastive")
    batch = random_batch(cfg.hard_negatives)
    loss_1, grads_1 = loss_and_grads(cfg, params, batch, None)
    loss_8, grads_8 = loss_and_grads(cfg, params, batch, make_mesh(data=2, fsdp=4))
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    assert_trees_close(grads_8, grads_1, atol=1e-5)
    assert np.abs(grads_1["bert"]["embeddings"]["word_embeddings"]["embedding"]).max() > 0


# Slow: the quick suite keeps GradCache against the plain step in
# test_contrastive_features.py's packed sparse test (negatives, learned temperature).
@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [None, dict(data=2, fsdp=4)], ids=["1dev", "2x4"])
def test_gradcache_equals_plain_gradient(mesh_shape):
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=NEG,
                            learn_temperature=True, chunk_size=8)
    assert_gradcache_equals_plain(cfg, random_batch(NEG, seed=3), mesh_shape)


@pytest.mark.slow
def test_gradcache_with_dropout_reuses_the_masks():
    """With dropout and four chunks, the re-run of each chunk must see its first pass's masks:
    the gradient then equals that of a plain loss that embeds chunk c of group g (the strided
    rows c, c + 4, ...) with key fold_in(rng, g * 4 + c), and differs from the gradient with
    other masks (so the comparison can fail)."""
    config = one_layer_config(dropout=0.2)
    chunks = 4
    cfg = ContrastiveConfig(temperature=0.1, chunk_size=B // chunks, hard_negatives=NEG)
    params = functional.init_params(config, jax.random.key(0), "contrastive")
    batch, rng = random_batch(NEG), jax.random.key(7)

    def per_chunk_loss(params, rng):
        emb = {}
        for group, index in GROUPS:
            if f"{group}_ids" not in batch:  # `text`: packed rows, not in this batch
                continue
            ids, mask = (strided_split(batch[f"{group}_{x}"], chunks, "chunks")
                         for x in ("ids", "mask"))
            parts = [functional.embed(config, params, ids[c], mask[c],
                                      dropout_rng=jax.random.fold_in(rng, index * chunks + c))
                     for c in range(chunks)]
            emb[group] = jnp.swapaxes(jnp.stack(parts), 0, 1).reshape(-1, parts[0].shape[-1])
        return info_nce(*paired_slots(emb["query"], emb["doc"], emb["neg"]),
                        temperature(cfg, params))["loss_sum"]

    grads, _ = jax.jit(cached_grad_fn(config, cfg))(params, batch, rng)
    want = jax.jit(jax.grad(per_chunk_loss))(params, rng)
    assert_trees_close(grads, want, atol=1e-5)
    other = jax.jit(jax.grad(per_chunk_loss))(params, jax.random.key(8))
    kernel = ("bert", "encoder", "layer", "mlp", "wo", "kernel")
    g, o = grads, other
    for k in kernel:
        g, o = g[k], o[k]
    assert not np.allclose(g, o, atol=1e-5)


def test_learned_temperature_gets_a_gradient_fixed_does_not_move():
    rng = np.random.default_rng(4)
    q, d = unit_rows(rng, (B, 8)), unit_rows(rng, (B, 8))
    for learn in (True, False):
        cfg = ContrastiveConfig(temperature=0.1, learn_temperature=learn)

        def loss(params, cfg=cfg):
            return info_nce(*paired_slots(q, d), temperature(cfg, params))["loss_sum"]

        grad = jax.grad(loss)({"temperature_log_scale": jnp.zeros(())})
        moved = abs(float(grad["temperature_log_scale"])) > 1e-6
        assert moved == learn
    sums = {"loss_sum": 4.0, "count": 2.0, "correct": 1.0, "pos_sim_sum": 1.0,
            "neg_sim_sum": 0.5, "neg_count": 5.0, "hardest_neg_sim_sum": 0.8,
            "temperature_sum": 0.2, "calls": 2.0}
    assert summarize(sums) == pytest.approx({"loss": 2.0, "accuracy": 0.5, "pos_sim": 0.5,
                                             "neg_sim": 0.1, "hardest_neg_sim": 0.4,
                                             "temperature": 0.1})


def test_multi_source_batches_are_single_source_and_resume():
    def pairs(tag, n):
        return [{"query": f"{tag} q{i}", "positive": f"{tag} code {i}"} for i in range(n)]

    def make():
        return MultiSourceBatcher([PairBatcher(pairs("a", 40), 8, source="a", seed=1),
                                   PairBatcher(pairs("b", 120), 8, source="b", seed=1)], seed=2)

    batcher = make()
    seen = []
    for _ in range(40):
        batch = next(batcher)
        assert {t.split()[0] for t in batch["query"] + batch["positive"]} == {batch["source"]}
        assert len(set(batch["positive"])) == len(batch["positive"])
        seen.append(batch["source"])
    assert 0 < seen.count("a") < seen.count("b")  # proportional to the source sizes
    state = batcher.get_state()
    expected = [next(batcher)["query"] for _ in range(5)]
    resumed = make()
    resumed.set_state(json.loads(json.dumps(state)))
    assert [next(resumed)["query"] for _ in range(5)] == expected


def test_sources_with_the_same_folder_name_are_refused(tmp_path):
    """Sources are known by folder name (batcher state, logs): two `pairs` folders would have
    made one silently replace the other."""
    from jbert.tasks.contrastive import load_sources

    for parent in ("a", "b"):
        (tmp_path / parent / "pairs").mkdir(parents=True)
        (tmp_path / parent / "pairs" / "train.jsonl").write_text(
            json.dumps({"query": f"q {parent}", "positive": f"d {parent}"}) + "\n")
    specs = f"{tmp_path / 'a' / 'pairs'},{tmp_path / 'b' / 'pairs'}"
    cfg = TrainConfig(contrastive=ContrastiveConfig(sources=specs, hard_negatives=0))
    with pytest.raises(ValueError, match="two sources are named 'pairs'"):
        load_sources(cfg, tmp_path)
    cfg = TrainConfig(contrastive=ContrastiveConfig(sources=str(tmp_path / "a" / "pairs"),
                                                    hard_negatives=0))
    assert load_sources(cfg, tmp_path) == {"pairs": [{"query": "q a", "positive": "d a"}]}


@pytest.mark.slow
def test_contrastive_task_trains_through_the_shared_trainer(tmp_path):
    from jbert.tasks.contrastive import contrastive_task
    from jbert.training.trainer import train

    data = make_data_dir(tmp_path / "data")
    cfg = tiny_run_config(data, tmp_path / "run", temperature=0.1, learn_temperature=True,
                          chunk_size=8)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    task, facts = contrastive_task(cfg, mesh)
    assert sum(v["queries"] for v in facts["eval_sets"].values()) == 16
    assert 0 <= facts["bm25_ndcg@10"] <= 1
    summary = train(cfg, task)
    assert summary["status"] == "done"
    for key in ("loss", "accuracy", "pos_sim", "neg_sim", "temperature"):
        assert np.isfinite(summary["last"][key])
    assert summary["last"]["temperature"] != pytest.approx(0.1, abs=1e-7)  # it was learned
    for key in ("retrieval_mrr@10", "retrieval_ndcg@10", "retrieval_recall@1",
                "retrieval_recall@10", "retrieval_recall@100", "bm25_mrr@10", "rrf_ndcg@10"):
        assert 0.0 <= summary["final_eval"][key] <= 1.0


def _named_sets(root: Path) -> str:
    """`contrastive.eval_sets` of a BEIR dir and a pairs file of two languages under `root`."""
    from jbert.evaluation.beir import pairs_to_sets, write_beir

    pairs = [{"query": f"Parse the {w} list {i}.", "language": lang,
              "positive": f"def parse_{w}_{i}(x):\n    return {w}(x) + {i}"}
             for lang in ("Python", "Go") for i, w in enumerate(["json", "file", "sort"] * 2)]
    beir = write_beir(pairs_to_sets(pairs[:6])[0], root / "beir")
    (root / "mine.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return f"corpus={beir},mine={root / 'mine.jsonl'}"


@pytest.mark.slow
def test_named_eval_sets_and_sizes_are_logged_under_their_names(tmp_path):
    from jbert.tasks.contrastive import contrastive_task
    from jbert.training.trainer import train

    data = make_data_dir(tmp_path / "data")
    cfg = tiny_run_config(data, tmp_path / "run", batch_size=8, steps=2, log_every=1,
                          query_prompt="query: ", matryoshka_dims=(16,),
                          eval_sets=_named_sets(tmp_path))
    task, facts = contrastive_task(cfg, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor))
    assert facts["corpus/eval_sets"] == {"corpus": {"queries": 6, "docs": 6}}
    assert facts["mine/eval_sets"].keys() == {"go", "python"}
    assert 0 <= facts["corpus/bm25_ndcg@10"] <= 1 and "mine/go/bm25_ndcg@10" in facts
    summary = train(cfg, task)
    final = summary["final_eval"]
    for key in ("retrieval_ndcg@10", "dim16/retrieval_ndcg@10", "corpus/retrieval_ndcg@10",
                "corpus/bm25_ndcg@10", "corpus/rrf_ndcg@10", "corpus/dim16/retrieval_ndcg@10",
                "mine/retrieval_ndcg@10", "mine/python/retrieval_ndcg@10",
                "mine/go/retrieval_mrr@10", "mine/dim16/go/retrieval_ndcg@10"):
        assert 0.0 <= final[key] <= 1.0, key
    assert not any(k.startswith("corpus/corpus/") for k in final)  # one set: macro keys alone
    assert final["corpus/bm25_ndcg@10"] == facts["corpus/bm25_ndcg@10"]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("mine/python/retrieval_ndcg@10" in r for r in logged)


def test_a_bad_eval_set_stops_the_run_before_it_starts(tmp_path):
    from jbert.errors import InputError
    from jbert.tasks.contrastive import contrastive_task

    data = make_data_dir(tmp_path / "data", n_train=16, n_test=4)
    cfg = TrainConfig(model=preset("tiny", vocab_size=320), data=DataConfig(dir=str(data)),
                      contrastive=ContrastiveConfig(eval_sets=f"gone={tmp_path / 'gone'}"),
                      workdir=str(tmp_path / "run"))
    with pytest.raises(InputError, match=rf"^contrastive.eval_sets: 'gone={tmp_path}/gone': "
                                         rf"{tmp_path}/gone does not exist$"):
        contrastive_task(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_gradcache_fits_1024_pairs_of_256_tokens():
    """Compiled temp memory of the tiny recipe's step at 1024 x 256: GradCache against plain."""
    out = subprocess.run([sys.executable, "-m", "bench.contrastive_memory", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["gradcache_temp_bytes"] < 2 << 30
    assert result["plain_temp_bytes"] > 4 * result["gradcache_temp_bytes"]
