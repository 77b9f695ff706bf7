"""Distillation from a teacher's embeddings: the KL term against numpy, on a 2x4 mesh equal to one
device, under GradCache equal to the plain gradient, packed equal to padded, weight 0 equal to no
teacher; teacher rows that follow their texts through the batcher; the teacher directory's
errors; a run that logs the term."""

import json

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
    numpy_distill,
    numpy_info_nce,
    one_layer_config,
    random_batch,
    tiny_run_config,
    unit_rows,
    write_teacher,
)

from jbert.data.pair_batches import PairBatcher
from jbert.data.pair_rows import QUERY, TokenizedPairs, plan_pack_rows
from jbert.data.teacher import load_teacher
from jbert.data.tokenizer import encode_with_specials, train_tokenizer
from jbert.errors import InputError
from jbert.model import functional
from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.tasks.contrastive import (
    contrastive_loss_fn,
    info_nce,
    pair_format,
    paired_slots,
    summarize,
)
from jbert.training.config import ContrastiveConfig

T = 12  # the teacher's width (the student's is 8 or 32)


def _truncated(x, size):
    x = np.asarray(x, np.float64)[:, :size]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_teacher(batch, seed=0):
    """`batch` with random float16 teacher rows for each group, as the batcher lays them out."""
    rng = np.random.default_rng(seed)
    return batch | {f"{g}_teacher": unit_rows(rng, (batch[f"{g}_ids"].shape[0], T)).astype(
        np.float16) for g in ("query", "doc", "neg") if f"{g}_ids" in batch}


@pytest.mark.parametrize("sizes", [(), ((8, 1.0), (4, 0.5))], ids=["full", "matryoshka"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [0, 2])
def test_distill_matches_numpy_on_one_and_eight_devices(symmetric, negatives, sizes):
    rng = np.random.default_rng(1)
    student = (unit_rows(rng, (B, 8)), unit_rows(rng, (B, 8)),
               unit_rows(rng, (B * negatives, 8)) if negatives else None)
    teacher = (*(unit_rows(rng, (n, T)).astype(np.float16) for n in (B, B)),
               unit_rows(rng, (B * negatives, T)).astype(np.float16) if negatives else None)
    weights = sizes or ((8, 1.0),)
    kl = {s: numpy_distill([None if x is None else _truncated(x, s) for x in student], teacher,
                           0.1, 0.03, symmetric) for s, _ in weights}
    nce = {s: numpy_info_nce(*[None if x is None else _truncated(x, s) for x in student], 0.1,
                             symmetric) for s, _ in weights}
    want_kl = sum(w * kl[s] for s, w in weights)
    want_nce = sum(w * nce[s] for s, w in weights)

    def run(q, d, n, tq, td, tn, mesh=None):
        groups = {"doc": td} if tn is None else {"doc": td, "neg": tn}
        return info_nce(*paired_slots(q, d, n), jnp.float32(0.1), symmetric=symmetric,
                        mesh=mesh, sizes=sizes, teacher=(tq, groups), distill_weight=0.5,
                        distill_temperature=0.03)

    mesh = make_mesh(data=2, fsdp=4)
    put = lambda x: None if x is None else jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    single = run(*student, *teacher)
    sharded = jax.jit(lambda *a: run(*a, mesh=mesh))(*map(put, (*student, *teacher)))
    for sums in (single, sharded):
        np.testing.assert_allclose(float(sums["distill_loss_sum"]), want_kl, rtol=1e-5)
        np.testing.assert_allclose(float(sums["info_nce_loss_sum"]), want_nce, rtol=1e-5)
        np.testing.assert_allclose(float(sums["loss_sum"]), want_nce + 0.5 * want_kl, rtol=1e-5)
        if sizes:  # each size's loss is its InfoNCE plus its weighted KL
            np.testing.assert_allclose(float(sums["loss_dim4_sum"]), nce[4] + 0.5 * kl[4],
                                       rtol=1e-5)
    logged = summarize({k: float(v) for k, v in single.items()})
    np.testing.assert_allclose(logged["distill_loss"], want_kl / B, rtol=1e-5)
    np.testing.assert_allclose(logged["info_nce_loss"], want_nce / B, rtol=1e-5)
    assert want_kl > 1.0  # random teacher and student disagree: the comparison can fail


def test_kl_vanishes_when_the_student_scores_like_the_teacher():
    """The teacher's own embeddings as the student's, at the teacher's temperature: the two
    distributions are one, KL and its gradient 0; at another temperature they are not."""
    rng = np.random.default_rng(2)
    q, d, n = (unit_rows(rng, (rows, T)) for rows in (B, B, 2 * B))

    def kl(q, tau):
        return info_nce(*paired_slots(q, d, n), jnp.float32(tau), symmetric=True,
                        teacher=(q, {"doc": d, "neg": n}), distill_temperature=0.05
                        )["distill_loss_sum"]

    assert abs(float(kl(q, 0.05))) < 1e-4
    assert np.abs(jax.grad(kl)(q, 0.05)).max() < 1e-4
    assert float(kl(q, 0.2)) > 1.0


def test_distill_gradients_on_2x4_mesh_equal_single_device():
    """The teacher's candidates are gathered beside the student's: each device's gradient of
    the KL is the single-device one."""
    rng = np.random.default_rng(3)
    q, d, n = unit_rows(rng, (B, 8)), unit_rows(rng, (B, 8)), unit_rows(rng, (2 * B, 8))
    tq, td, tn = (unit_rows(rng, (rows, T)).astype(np.float16) for rows in (B, B, 2 * B))
    mesh = make_mesh(data=2, fsdp=4)

    def loss(q, d, n, tq, td, tn, mesh):
        return info_nce(*paired_slots(q, d, n), jnp.float32(0.07), symmetric=True, mesh=mesh,
                        teacher=(tq, {"doc": td, "neg": tn}))["distill_loss_sum"]

    grad = jax.grad(loss, argnums=(0, 1, 2))
    want = grad(q, d, n, tq, td, tn, None)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    got = jax.jit(lambda *a: grad(*a, mesh))(*map(put, (q, d, n, tq, td, tn)))
    for g, w in zip(got, want, strict=True):
        assert np.abs(w).max() > 1e-3
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # two short training runs: about 10 s on 2 cores
def test_distill_weight_zero_is_identical_to_no_teacher():
    """Weight 0 logs the KL but trains on InfoNCE alone, bit for bit; weight 1 adds it."""
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                            distill_weight=0.0)
    params = functional.init_params(one_layer_config(), jax.random.key(0), "contrastive")
    batch = random_batch(2, seed=4)
    loss, grads = loss_and_grads(cfg, params, batch, None)
    loss_0, grads_0 = loss_and_grads(cfg, params, _with_teacher(batch), None)
    assert loss_0 == loss
    for a, b in zip(jax.tree.leaves(grads_0), jax.tree.leaves(grads), strict=True):
        np.testing.assert_array_equal(a, b)
    weighted = contrastive_loss_fn(one_layer_config(), ContrastiveConfig(
        temperature=0.1, symmetric=True, hard_negatives=2))
    loss_1, sums = jax.jit(weighted)(params, _with_teacher(batch), None)
    np.testing.assert_allclose(float(loss_1), loss + float(sums["distill_loss_sum"]), rtol=1e-6)
    assert float(sums["distill_loss_sum"]) > 1.0


@pytest.mark.slow  # the KL's float64 reference tests stay in the quick suite
@pytest.mark.parametrize("mesh_shape", [None, dict(data=2, fsdp=4)], ids=["1dev", "2x4"])
def test_gradcache_with_a_teacher_equals_the_plain_gradient(mesh_shape):
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2, chunk_size=4,
                            learn_temperature=True, matryoshka_dims=(32, 8),
                            distill_weight=2.0, distill_temperature=0.03)
    assert_gradcache_equals_plain(cfg, _with_teacher(random_batch(2, seed=5)), mesh_shape)


# -- the teacher's rows in the batches ------------------------------------------------------

WORDS = ["add", "sum", "read", "file", "parse", "json", "sort", "list", "open", "close"]


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"query": f"{' '.join(rng.choice(WORDS, rng.integers(1, 4)))} {i}",
             "positive": f"def f{i}(): {' '.join(rng.choice(WORDS, rng.integers(2, 30)))}",
             "negatives": [" ".join(rng.choice(WORDS, rng.integers(2, 30))) + f" n{i} {j}"
                           for j in range(2)]} for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([t for p in _pairs(200) for t in (p["query"], p["positive"],
                                                             *p["negatives"])], vocab_size=128)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A teacher directory of `_pairs(400, seed=1)`: (dir, pairs, its rows by text)."""
    pairs = _pairs(400, seed=1)
    root = tmp_path_factory.mktemp("teacher")
    rows = write_teacher(root, [p["query"] for p in pairs],
                         [t for p in pairs for t in (p["positive"], *p["negatives"])], dim=T)
    return root, pairs, rows


def test_teacher_rows_follow_their_texts_in_padded_and_packed_batches(tokenizer, teacher_dir):
    """Every row (padded) and every slot (packed, over batches where pairs wait for the next
    one) carries the teacher's embedding of the text it holds, looked up without the prompt."""
    root, pairs, rows = teacher_dir
    teacher = load_teacher(root)
    cfg = ContrastiveConfig(max_query_length=24, max_doc_length=128, hard_negatives=2,
                            query_prompt="q: ", doc_prompt="d: ")
    fmt = pair_format(cfg)
    padded = TokenizedPairs(PairBatcher(pairs, B, source="s", seed=3), tokenizer, fmt,
                            teacher=teacher)
    raw = next(PairBatcher(pairs, B, source="s", seed=3))
    batch = next(padded)
    np.testing.assert_array_equal(batch["query_teacher"],
                                  [rows["query"][q] for q in raw["query"]])
    np.testing.assert_array_equal(batch["neg_teacher"],
                                  [rows["document"][t] for n in raw["negatives"] for t in n])
    assert batch["doc_teacher"].dtype == np.float16 and batch["doc_teacher"].shape == (B, T)

    # Packed: the token ids at each slot name its text, whose teacher row must sit there.
    by_tokens = {}
    for side, prompt, limit in (("query", "q: ", 24), ("document", "d: ", 128)):
        texts = list(rows[side])
        for text, ids in zip(texts, encode_with_specials(
                tokenizer, [prompt + t for t in texts], limit), strict=True):
            by_tokens[(side, tuple(ids))] = rows[side][text]
    pack_rows = plan_pack_rows({"s": pairs}, tokenizer, fmt, B, row_multiple=1)
    packed = TokenizedPairs(PairBatcher(pairs, B, source="s", seed=3), tokenizer, fmt,
                            pack_rows=pack_rows, teacher=teacher)
    waited = 0
    for _ in range(6):
        batch = next(packed)
        waited += len(packed.waiting)
        seg, role = batch["text_segment_ids"], batch["text_role"]
        for r in range(pack_rows):
            for s in range(role.shape[1]):
                if role[r, s] == 0:
                    assert not batch["text_teacher"][r, s].any()
                    continue
                side = "query" if role[r, s] == QUERY else "document"
                ids = tuple(batch["text_ids"][r][seg[r] == s + 1])
                np.testing.assert_array_equal(batch["text_teacher"][r, s],
                                              by_tokens[(side, ids)])
    assert waited > 0  # pairs did wait, and came back with their teacher rows


def _packed_and_padded(tokenizer, cfg, pairs, teacher, processes):
    """One packed batch per process (concatenated as the trainer assembles them) and the same
    pairs as padded rows, both with the teacher's rows."""
    fmt = pair_format(cfg)
    pack_rows = plan_pack_rows({"s": pairs}, tokenizer, fmt, B // processes, row_multiple=4)
    parts, taken = [], {"query": [], "positive": [], "negatives": []}
    for p in range(processes):
        raw = next(PairBatcher(pairs, B, source="s", process_index=p, process_count=processes))
        parts.append(next(TokenizedPairs(iter([raw]), tokenizer, fmt, pack_rows=pack_rows,
                                         process_index=p, process_count=processes,
                                         teacher=teacher)))
        took = int((parts[-1]["text_role"] == QUERY).sum())  # a prefix of the process's pairs
        taken = {k: v + raw[k][:took] for k, v in taken.items()}
    packed = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    return packed, next(TokenizedPairs(iter([taken]), tokenizer, fmt, teacher=teacher))


@pytest.mark.slow  # the quick suite keeps the padded-equals-packed test without a teacher
@pytest.mark.parametrize("processes", [1, 2])
def test_packed_batch_with_a_teacher_gives_the_padded_loss_and_gradients(
        tokenizer, teacher_dir, processes):
    root, pairs, _ = teacher_dir
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                            max_query_length=24, max_doc_length=64, matryoshka_dims=(32, 8))
    packed, padded = _packed_and_padded(tokenizer, cfg, pairs[:64], load_teacher(root),
                                        processes)
    config = one_layer_config(vocab_size=tokenizer.get_vocab_size())
    params = functional.init_params(config, jax.random.key(0), "contrastive")
    grad = jax.jit(jax.grad(contrastive_loss_fn(config, cfg), has_aux=True))
    (grads_padded, sums_padded), (grads_packed, sums_packed) = (
        grad(params, batch, None) for batch in (padded, packed))
    for key in ("loss_sum", "distill_loss_sum", "info_nce_loss_sum", "count"):
        np.testing.assert_allclose(sums_packed[key], sums_padded[key], rtol=1e-5)
    assert float(sums_padded["distill_loss_sum"]) > 1.0
    # The KL at temperature 0.05 makes gradients of ~10: float32 sums in another order differ
    # by ~1e-5 of that.
    assert_trees_close(grads_packed, grads_padded, atol=2e-4)


# -- the teacher directory and the run ---------------------------------------------------------


def test_a_bad_teacher_stops_the_run_before_it_starts_naming_the_key_and_dir(tmp_path):
    """A teacher written for other pairs (a positive missing) or in another format: one error
    naming `contrastive.teacher`, the directory and the culprit, before the run writes a file."""
    from jbert.data.pair_batches import read_pair_file
    from jbert.tasks.contrastive import contrastive_task

    data = make_data_dir(tmp_path / "data", n_train=32, n_test=4)
    pairs = read_pair_file(data / "pairs" / "train.jsonl")
    teacher = tmp_path / "teacher"
    write_teacher(teacher, [p["query"] for p in pairs], [p["positive"] for p in pairs[1:]])
    cfg = tiny_run_config(data, tmp_path / "run", teacher=str(teacher))
    with pytest.raises(InputError, match=rf"^contrastive.teacher: .*{teacher}.*"
                                         r"'def add_add_0\(x\):"):
        contrastive_task(cfg)
    write_teacher(teacher, [p["query"] for p in pairs], [p["positive"] for p in pairs])
    assert contrastive_task(cfg)[1]["teacher"]["dim"] == 12  # now it holds every text
    meta = json.loads((teacher / "teacher.json").read_text())
    (teacher / "teacher.json").write_text(json.dumps(meta | {"format": "other/2"}))
    with pytest.raises(InputError, match=rf"^contrastive.teacher: .*{teacher}.*'other/2'"):
        contrastive_task(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"contrastive.distill_temperature=0.0: must be > 0"):
        ContrastiveConfig(distill_temperature=0.0)
    with pytest.raises(ValueError, match=r"contrastive.distill_weight=-1.0: must be >= 0"):
        ContrastiveConfig(distill_weight=-1.0)


@pytest.mark.slow
def test_a_distilled_run_logs_the_kl_with_lora_packing_and_gradcache_on_a_mesh(tmp_path):
    """`train.contrastive` with a teacher, LoRA on a released-layout base, packed batches,
    GradCache and Matryoshka sizes on a (2, 2, 2) mesh: the KL and InfoNCE alone are logged,
    and add up to the trained loss (with the sparse head's InfoNCE, which the tiny recipe
    trains at weight 1)."""
    from helpers.synthetic import tiny_lora_cli

    from jbert.data.pair_batches import read_pair_file
    from train.contrastive import main

    data = make_data_dir(tmp_path / "data")
    pairs = read_pair_file(data / "pairs" / "train.jsonl")
    write_teacher(tmp_path / "teacher", [p["query"] for p in pairs],
                  [p["positive"] for p in pairs], dim=T)
    argv, _, _ = tiny_lora_cli(data, tmp_path, **{
        "contrastive.teacher": tmp_path / "teacher", "contrastive.distill_weight": 0.5,
        "contrastive.pack": True, "contrastive.symmetric": True,
        "contrastive.matryoshka_dims": "32,8", "log_every": 1})
    summary = main(argv)
    assert summary["status"] == "done"
    assert summary["data"]["teacher"]["dim"] == T
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    steps = [r for r in logged if "distill_loss" in r]
    assert len(steps) == 4
    for r in steps:
        assert r["distill_loss"] > 0
        np.testing.assert_allclose(
            r["loss"], r["info_nce_loss"] + 0.5 * r["distill_loss"] + r["sparse_loss"],
            rtol=1e-4)
