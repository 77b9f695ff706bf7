"""Contrastive features: Matryoshka sizes in the loss (against numpy, sharded, under GradCache),
packed batches (layout, loss and gradients equal to the padded step's), prompts in training."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.contrastive import (
    assert_trees_close,
    loss_and_grads,
    numpy_info_nce,
    one_layer_config,
    random_batch,
    unit_rows,
)
from helpers.synthetic import tiny_lora_cli

from jbert.data.packing import pack_fixed, texts_per_row
from jbert.data.pair_batches import PairBatcher
from jbert.data.pair_rows import (
    DOC,
    EMPTY,
    NEG,
    QUERY,
    WAITING_BATCHES,
    TokenizedPairs,
    plan_pack_rows,
)
from jbert.data.tokenizer import train_tokenizer
from jbert.model import functional
from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.tasks.contrastive import (
    cached_grad_fn,
    contrastive_loss_fn,
    info_nce,
    loss_sizes,
    pair_format,
    paired_slots,
    sparse_slot_bound,
    summarize,
)
from jbert.training.config import ContrastiveConfig

B = 16


def _truncated(x, size):
    x = np.asarray(x, np.float64)[:, :size]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("symmetric", [False, True])
def test_matryoshka_loss_is_the_weighted_sum_over_truncated_renormalised_sizes(symmetric):
    rng = np.random.default_rng(5)
    q, d, n = unit_rows(rng, (B, 16)), unit_rows(rng, (B, 16)), unit_rows(rng, (2 * B, 16))
    sizes = ((16, 1.0), (8, 0.5), (4, 0.25))
    want = sum(w * numpy_info_nce(_truncated(q, s), _truncated(d, s), _truncated(n, s), 0.1,
                                   symmetric) for s, w in sizes)
    mesh = make_mesh(data=2, fsdp=4)
    put = lambda x: jax.device_put(x, batch_sharding(mesh))  # noqa: E731
    single = info_nce(*paired_slots(q, d, n), jnp.float32(0.1), symmetric=symmetric, sizes=sizes)
    sharded = jax.jit(lambda q, d, n: info_nce(*paired_slots(q, d, n), jnp.float32(0.1),
                                               symmetric=symmetric, mesh=mesh, sizes=sizes))(
        put(q), put(d), put(n))
    for sums in (single, sharded):
        np.testing.assert_allclose(float(sums["loss_sum"]), want, rtol=1e-5)
        np.testing.assert_allclose(
            float(sums["loss_dim8_sum"]),
            numpy_info_nce(_truncated(q, 8), _truncated(d, 8), _truncated(n, 8), 0.1, symmetric),
            rtol=1e-5)
    logged = summarize({k: float(v) for k, v in single.items()})
    assert set(logged) >= {"loss", "loss_dim16", "loss_dim8", "loss_dim4"}
    np.testing.assert_allclose(logged["loss"], want / B, rtol=1e-5)


def test_matryoshka_sizes_are_checked_against_the_model():
    cfg = ContrastiveConfig(matryoshka_dims=(32, 16), matryoshka_weights=(1.0, 0.5))
    assert loss_sizes(cfg, 32) == ((32, 1.0), (16, 0.5))
    assert loss_sizes(ContrastiveConfig(), 32) == ((32, 1.0),)
    with pytest.raises(ValueError, match=r"\[64\] wider than the model's hidden_size=32"):
        loss_sizes(ContrastiveConfig(matryoshka_dims=(64, 16)), 32)
    with pytest.raises(ValueError, match="one weight per size"):
        ContrastiveConfig(matryoshka_dims=(32, 16), matryoshka_weights=(1.0,))
    with pytest.raises(ValueError, match="listed twice"):
        ContrastiveConfig(matryoshka_dims=(16, 16))


@pytest.mark.slow  # about 17 s; the plain GradCache test stays in the quick suite
@pytest.mark.parametrize("mesh_shape", [None, dict(data=2, fsdp=4)], ids=["1dev", "2x4"])
def test_gradcache_with_matryoshka_equals_the_plain_gradient(mesh_shape):
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2, chunk_size=4,
                            learn_temperature=True, matryoshka_dims=(32, 16, 8),
                            matryoshka_weights=(1.0, 1.0, 0.5))
    params = functional.init_params(one_layer_config(), jax.random.key(0), "contrastive")
    batch = random_batch(2, seed=7)
    loss_ref, grads_ref = loss_and_grads(cfg, params, batch, None)
    plain = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                              learn_temperature=True)
    plain_loss, _ = loss_and_grads(plain, params, batch, None)
    assert loss_ref > plain_loss  # three sizes' losses, not one
    mesh = None if mesh_shape is None else make_mesh(**mesh_shape)
    loss, grads = loss_and_grads(cfg, params, batch, mesh,
                                 grad_fn=cached_grad_fn(one_layer_config(), cfg, mesh))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    assert_trees_close(grads, grads_ref, atol=1e-5)


# -- packing ---------------------------------------------------------------------------------


def test_pack_fixed_lays_texts_end_to_end():
    texts = [[2, *range(10, 10 + n), 3] for n in (6, 14, 2, 9, 4, 1)]  # CLS ... SEP
    packed = pack_fixed(texts, num_rows=4, length=16, pad_id=0)
    S = texts_per_row(16)
    for i, text in enumerate(texts):
        r, s = divmod(int(packed.text_slot[i]), S)
        assert packed.ids_RL[r][packed.segment_ids_RL[r] == s + 1].tolist() == text
    assert len(set(packed.text_slot.tolist())) == len(texts)
    assert (packed.ids_RL[packed.segment_ids_RL == 0] == 0).all()
    with pytest.raises(ValueError, match=r"6 texts need 4 rows of 16 tokens \(2 texts a row\)"):
        pack_fixed(texts, num_rows=2, length=16, pad_id=0)


WORDS = ["add", "sum", "read", "file", "parse", "json", "sort", "list", "open", "close"]


def _pairs(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        query = " ".join(rng.choice(WORDS, rng.integers(1, 4)))
        code = " ".join(rng.choice(WORDS, rng.integers(2, 30)))
        negs = [" ".join(rng.choice(WORDS, rng.integers(2, 30))) + f" n{j}" for j in range(2)]
        out.append({"query": f"{query} {i}", "positive": f"def f{i}(): {code}",
                    "negatives": negs})
    return out


@pytest.fixture(scope="module")
def tokenizer():
    texts = [t for p in _pairs(200) for t in (p["query"], p["positive"], *p["negatives"])]
    return train_tokenizer(texts, vocab_size=128)


def _padded_and_packed(tokenizer, cfg, pairs, processes=1, multiple=4):
    """One raw batch per process as packed rows (planned for the data, concatenated as the
    trainer assembles the global batch) and, as padded rows, the pairs the packed rows took."""
    rows = plan_pack_rows({"s": pairs}, tokenizer, pair_format(cfg), B // processes,
                          row_multiple=multiple)
    parts, taken = [], {"query": [], "positive": [], "negatives": []}
    for p in range(processes):
        raw = next(PairBatcher(pairs, B, source="s", seed=0, process_index=p,
                               process_count=processes))
        packed = TokenizedPairs(iter([raw]), tokenizer, pair_format(cfg), pack_rows=rows,
                                process_index=p, process_count=processes)
        parts.append(next(packed))
        k = int((parts[-1]["text_role"] == QUERY).sum())
        assert len(packed.waiting) == B // processes - k  # the rest waits for the next batch
        for key in taken:
            taken[key] += raw[key][:k]
    padded = next(TokenizedPairs(iter([taken]), tokenizer, pair_format(cfg)))
    return padded, {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}, rows


def _size(batch, what):
    return sum(batch[k].size if what == "positions" else int(batch[k].sum())
               for k in batch if k.endswith("_mask"))


# Slow: the quick suite keeps packed against padded in the packed sparse test below.
@pytest.mark.slow
@pytest.mark.parametrize("variant", [
    dict(), dict(symmetric=True, hard_negatives=2, matryoshka_dims=(32, 8)),
], ids=["plain", "symmetric+negatives+matryoshka"])
@pytest.mark.parametrize("processes", [1, 2])
def test_packed_batch_gives_the_padded_loss_and_gradients(tokenizer, variant, processes):
    config = one_layer_config()
    cfg = ContrastiveConfig(temperature=0.1, max_query_length=48, max_doc_length=256, **variant)
    padded, packed, rows = _padded_and_packed(tokenizer, cfg, _pairs(64), processes)
    assert _size(packed, "tokens") == _size(padded, "tokens")  # the same texts
    assert _size(packed, "positions") < 0.6 * _size(padded, "positions")  # far less padding
    params = functional.init_params(config, jax.random.key(0), "contrastive")
    loss_padded, grads_padded = loss_and_grads(cfg, params, padded, None)
    loss_packed, grads_packed = loss_and_grads(cfg, params, packed, None)
    np.testing.assert_allclose(loss_packed, loss_padded, rtol=1e-5)
    assert_trees_close(grads_packed, grads_padded, atol=2e-5)


@pytest.mark.slow
def test_packed_batch_on_a_mesh_with_gradcache_gives_the_padded_gradients(tokenizer):
    config = one_layer_config()
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2, chunk_size=8,
                            learn_temperature=True, max_query_length=16, max_doc_length=32,
                            matryoshka_dims=(32, 16))
    padded, packed, rows = _padded_and_packed(tokenizer, cfg, _pairs(64), multiple=2 * 8)
    assert rows % 16 == 0
    params = functional.init_params(config, jax.random.key(0), "contrastive")
    loss_ref, grads_ref = loss_and_grads(cfg, params, padded, None)
    mesh = make_mesh(data=2, fsdp=4)
    loss, grads = loss_and_grads(cfg, params, packed, mesh,
                         grad_fn=cached_grad_fn(config, cfg, mesh, chunks=B // 8))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    assert_trees_close(grads, grads_ref, atol=2e-5)


@pytest.mark.parametrize("gradcache", [True, False], ids=["gradcache", "plain"])
@pytest.mark.parametrize("mesh_shape", [
    None, pytest.param(dict(data=2, fsdp=4), marks=pytest.mark.slow)], ids=["1dev", "2x4"])
def test_packed_sparse_slots_compacted_give_the_padded_loss_and_gradients(tokenizer, mesh_shape,
                                                                         gradcache):
    """The sparse head's packed slots, compacted to the batch's texts before scoring (the
    plain step pools them compact, GradCache compacts its chunks' slots), give the padded loss
    and gradients, on one device and on a 2x4 mesh."""
    config = one_layer_config()
    cfg = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2, chunk_size=8,
                            learn_temperature=True, max_query_length=16, max_doc_length=32,
                            sparse_weight=0.5)
    padded, packed, _ = _padded_and_packed(tokenizer, cfg, _pairs(64), multiple=2 * 8)
    params = functional.init_params(config, jax.random.key(0), "contrastive_sparse")
    loss_ref, grads_ref = loss_and_grads(cfg, params, padded, None)
    mesh = None if mesh_shape is None else make_mesh(**mesh_shape)
    slots = sparse_slot_bound(B * (2 + cfg.hard_negatives), mesh)
    assert slots < packed["text_pair"].size  # the compaction drops empty slots
    grad_fn = (cached_grad_fn(config, cfg, mesh, chunks=B // 8, sparse_slots=slots)
               if gradcache else jax.grad(contrastive_loss_fn(config, cfg, mesh, slots),
                                          has_aux=True))
    loss, grads = loss_and_grads(cfg, params, packed, mesh, grad_fn=grad_fn)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    assert_trees_close(grads, grads_ref, atol=2e-5)


def test_packed_batches_lose_no_pair_and_resume_with_the_waiting_ones(tokenizer):
    """Rows planned for the average batch: a pair that does not fit waits for the next batch
    (first in line), none is lost or seen twice, padding stays low, and the data position
    (batcher state + waiting pairs) resumes the stream exactly."""
    import json

    from jbert.data.tokenizer import encode_with_specials

    cfg = ContrastiveConfig(max_query_length=24, max_doc_length=128, hard_negatives=2,
                            query_prompt="q: ")
    pairs = _pairs(400, seed=1)
    rows = plan_pack_rows({"s": pairs}, tokenizer, pair_format(cfg), B, row_multiple=1)
    assert rows < B * 4

    def stream():
        return TokenizedPairs(PairBatcher(pairs, B, source="s", seed=3), tokenizer,
                              pair_format(cfg), pack_rows=rows)

    def queries(batch):  # the packed query texts
        out = []
        for r in range(rows):
            seg, role = batch["text_segment_ids"][r], batch["text_role"][r]
            out += [tuple(batch["text_ids"][r][seg == s + 1]) for s in range(len(role))
                    if role[s] == QUERY]
        return out

    batches, raw_seen = stream(), PairBatcher(pairs, B, source="s", seed=3)
    seen, offered, tokens, positions = [], [], 0, 0
    for _ in range(20):
        batch = next(batches)
        offered += next(raw_seen)["query"]
        seen += queries(batch)
        assert batch["text_ids"].shape[0] == rows
        n = (batch["text_role"] == QUERY).sum()
        assert (batch["text_role"] == DOC).sum() == n and (batch["text_role"] == NEG).sum() == 2 * n
        assert len(np.unique(batch["text_pair"][batch["text_role"] != EMPTY])) == 3 * n
        tokens += batch["text_mask"].sum()
        positions += batch["text_mask"].size
    waiting = [p["query"] for p in batches.waiting]
    expect = {tuple(x) for x in encode_with_specials(
        tokenizer, [cfg.query_prompt + q for q in offered if q not in waiting], 24)}
    assert len(seen) == len(set(seen)) == len(expect) and set(seen) == expect
    assert len(waiting) < B
    padded_positions = 20 * B * (24 + 128 + 2 * 128)
    assert 1 - tokens / positions < 0.5 * (1 - tokens / padded_positions)
    state = json.loads(json.dumps(batches.get_state()))
    ahead = [next(batches) for _ in range(3)]
    resumed = stream()
    resumed.set_state(state)
    for want in ahead:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_a_waiting_line_that_only_grows_is_an_error(tokenizer):
    """Rows far too few for the batches (four here): the waiting pairs would pile up
    without bound, so the stream stops once more than WAITING_BATCHES batches wait."""
    from jbert.errors import InputError

    cfg = ContrastiveConfig(max_query_length=24, max_doc_length=128, hard_negatives=2)
    stream = TokenizedPairs(PairBatcher(_pairs(400, seed=1), B, source="s", seed=3), tokenizer,
                            pair_format(cfg), pack_rows=4)
    with pytest.raises(InputError, match=r"pairs wait for packed rows, more than 8 batches"):
        for _ in range(4 * WAITING_BATCHES):
            next(stream)
    assert WAITING_BATCHES * B < len(stream.waiting) <= (WAITING_BATCHES + 1) * B


def test_prompts_prefix_every_query_and_document_in_training(tokenizer):
    pairs = _pairs(40)
    cfg = ContrastiveConfig(max_query_length=24, max_doc_length=32, hard_negatives=2,
                            query_prompt="query: ", doc_prompt="passage: ")
    with_prompts = next(TokenizedPairs(PairBatcher(pairs, B, source="s", seed=0), tokenizer,
                                       pair_format(cfg)))
    prefixed = [{"query": "query: " + p["query"], "positive": "passage: " + p["positive"],
                 "negatives": ["passage: " + n for n in p["negatives"]]} for p in pairs]
    plain_cfg = ContrastiveConfig(max_query_length=24, max_doc_length=32, hard_negatives=2)
    by_hand = next(TokenizedPairs(PairBatcher(prefixed, B, source="s", seed=0), tokenizer,
                                  pair_format(plain_cfg)))
    assert with_prompts.keys() == by_hand.keys()
    for key in with_prompts:
        np.testing.assert_array_equal(with_prompts[key], by_hand[key])
    without = next(TokenizedPairs(PairBatcher(pairs, B, source="s", seed=0), tokenizer,
                                  pair_format(plain_cfg)))
    assert not np.array_equal(without["query_ids"], with_prompts["query_ids"])


@pytest.mark.slow
def test_prompts_matryoshka_packing_and_lora_together_end_to_end(tmp_path):
    """Issue 17's whole feature set in one tiny run through `train.contrastive`: prompts,
    Matryoshka sizes, packed batches, LoRA on a released-layout base, GradCache, a named eval
    set, the sparse head, on a (2, 2, 2) mesh; the export reloads and carries its prompts,
    sizes, sparse head and card."""
    import json

    from helpers.contrastive import make_data_dir

    import jbert
    from jbert.evaluation.embedder import Embedder
    from train.contrastive import main

    data = make_data_dir(tmp_path / "data")
    argv, config, base = tiny_lora_cli(data, tmp_path, **{
        "contrastive.max_query_length": 24, "contrastive.max_doc_length": 32,
        "contrastive.query_prompt": "query: ", "contrastive.doc_prompt": "code: ",
        "contrastive.matryoshka_dims": "32,16,8", "contrastive.pack": True,
        "contrastive.eval_sets": f"mine={data / 'pairs' / 'test.jsonl'}",
        "contrastive.sparse_weight": 1.0})
    summary = main(argv)
    assert summary["status"] == "done"
    assert summary["data"]["pack_rows"] <= 2 * 16  # rows of 32 tokens: 16 queries + 16 docs
    final = summary["final_eval"]
    for key in ("retrieval_ndcg@10", "dim16/retrieval_ndcg@10", "dim8/retrieval_ndcg@10",
                "mine/retrieval_ndcg@10", "mine/bm25_ndcg@10", "sparse_ndcg@10",
                "dense+sparse_ndcg@10", "mine/dense+sparse_ndcg@10"):
        assert 0.0 <= final[key] <= 1.0, key
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("loss_dim8" in r for r in logged)

    export = Path(summary["export"])
    st_config = json.loads((export / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": "query: ", "document": "code: "}
    assert st_config["matryoshka_dims"] == [32, 16, 8]
    card = (export / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: sentence-transformers" in card
    for needle in ("## Training", "## Evaluation", "BM25", 'prompt_name="query"',
                   "truncate_dim", "LoRA"):
        assert needle in card, needle

    loaded_config, loaded = jbert.load_pretrained(export, head="base")
    embedder = Embedder.from_pretrained(export)
    assert embedder.prompts == {"query": "query: ", "document": "code: "}
    assert embedder.has_sparse and (export / "sparse_head.safetensors").is_file()
    by_name = embedder.encode(["add two numbers"], prompt_name="query", dim=16)
    by_hand = embedder.encode(["query: add two numbers"])[:, :16]
    np.testing.assert_allclose(by_name, by_hand / np.linalg.norm(by_hand), atol=1e-6)
    _, base_params = jbert.load_pretrained(base, head="base")
    ids = np.array([[5, 9, 33, 7, 4, 100]], np.int32)
    assert not np.allclose(jbert.forward(config, base_params, ids),
                           jbert.forward(loaded_config, loaded, ids), atol=1e-4)


@pytest.mark.slow
def test_packed_matryoshka_run_with_prompts_resumes_exactly(tmp_path):
    """Stopped at step 2 and resumed, a packed Matryoshka run with prompts and GradCache on a
    (2, 4) mesh ends with the uninterrupted run's weights and losses."""
    import json

    from helpers.contrastive import make_data_dir, tiny_run_config

    from jbert.tasks.contrastive import contrastive_task
    from jbert.training.config import MeshConfig
    from jbert.training.trainer import train

    data = make_data_dir(tmp_path / "data")

    def config(workdir):
        return tiny_run_config(
            data, tmp_path / workdir, log_every=1, dropout=0.1, keep=2,
            mesh=MeshConfig(data=2, fsdp=4), temperature=0.1, learn_temperature=True,
            symmetric=True, chunk_size=8, max_query_length=24, max_doc_length=32, pack=True,
            matryoshka_dims=(32, 8), query_prompt="q: ", doc_prompt="d: ", export=False)

    def run(cfg, stop_at=None):
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        return train(cfg, contrastive_task(cfg, mesh)[0], stop_at=stop_at)

    whole = run(config("whole"))
    assert run(config("split"), stop_at=2)["status"] == "stopped"
    resumed = run(config("split"))
    assert resumed["start_step"] == 2
    for a, b in zip(jax.tree.leaves(whole["state"]["params"]),
                    jax.tree.leaves(resumed["state"]["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def losses(workdir):
        rows = [json.loads(x) for x in (tmp_path / workdir / "metrics.jsonl").open()]
        return {r["step"]: (r["loss"], r["loss_dim8"]) for r in rows if "loss" in r}

    assert losses("split") == losses("whole")
