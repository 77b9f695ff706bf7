"""Shared pieces of the contrastive tests: a one-layer model, random token batches, unit
vectors, the numpy InfoNCE and distillation references, jitted gradients on one device or a
mesh, a tiny data dir with its run config, and a teacher directory written with numpy."""

import hashlib
import json
from pathlib import Path

import jax
import numpy as np

from jbert.data.tokenizer import save_tokenizer, train_tokenizer
from jbert.model import functional
from jbert.model.config import JinaBertConfig, preset
from jbert.ops.sharding import batch_sharding
from jbert.tasks.contrastive import contrastive_head, contrastive_loss_fn
from jbert.training.config import (
    CheckpointConfig,
    ContrastiveConfig,
    DataConfig,
    MeshConfig,
    TrainConfig,
)
from jbert.training.optim import OptimConfig
from jbert.training.state import param_shardings

B, LQ, LD = 16, 12, 20  # pairs, query and document lengths of `random_batch`


def one_layer_config(dropout=0.0, vocab_size=128) -> JinaBertConfig:
    return preset("tiny", vocab_size=vocab_size, hidden_size=32, num_attention_heads=2,
                  intermediate_size=64, num_hidden_layers=1, hidden_dropout_prob=dropout)


def random_batch(negatives=0, seed=0) -> dict[str, np.ndarray]:
    """B padded pairs of random tokens, `negatives` hard negatives each."""
    rng = np.random.default_rng(seed)

    def rows(n, length):
        ids = rng.integers(5, 128, (n, length)).astype(np.int32)
        mask = (np.arange(length)[None] < rng.integers(3, length + 1, (n, 1))).astype(np.int32)
        return np.where(mask == 1, ids, 1).astype(np.int32), mask

    out = {}
    out["query_ids"], out["query_mask"] = rows(B, LQ)
    out["doc_ids"], out["doc_mask"] = rows(B, LD)
    if negatives:
        out["neg_ids"], out["neg_mask"] = rows(B * negatives, LD)
    return out


def numpy_info_nce(q, d, n, tau, symmetric):
    """The loss sum in float64: row i of `q` and `d` is pair i, `n` (or None) extra documents."""
    q, d = np.asarray(q, np.float64), np.asarray(d, np.float64)
    cand = d if n is None else np.concatenate([d, np.asarray(n, np.float64)])
    logits = q @ cand.T / tau
    fwd = np.log(np.exp(logits).sum(1)) - np.diag(logits[:, :len(q)])
    if not symmetric:
        return fwd.sum()
    rev = d @ q.T / tau
    bwd = np.log(np.exp(rev).sum(1)) - np.diag(rev)
    return (0.5 * (fwd + bwd)).sum()


def numpy_distill(student, teacher, tau, teacher_tau, symmetric):
    """The KL sum to the teacher in float64: `student` and `teacher` are (q, d, n) of the same
    pairs as `numpy_info_nce` takes (n None without negatives), each model's own width."""
    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    def kl(t_logits, s_logits):
        log_t = log_softmax(t_logits)
        return np.sum(np.exp(log_t) * (log_t - log_softmax(s_logits)))

    (q, d, n), (tq, td, tn) = ([np.asarray(x, np.float64) if x is not None else None
                                 for x in xs] for xs in (student, teacher))
    tq, td = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (tq, td))
    cand, t_cand = (d, td) if n is None else (np.concatenate([d, n]), np.concatenate(
        [td, tn / np.linalg.norm(tn, axis=1, keepdims=True)]))
    fwd = kl(tq @ t_cand.T / teacher_tau, q @ cand.T / tau)
    if not symmetric:
        return fwd
    return 0.5 * (fwd + kl(td @ tq.T / teacher_tau, d @ q.T / tau))


def unit_rows(rng, shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def loss_and_grads(cfg, params, batch, mesh, grad_fn=None, config=None):
    """Loss sum and gradient under jit, on `mesh` (sharded rows and params) or one device."""
    config = config or one_layer_config()
    loss_fn = contrastive_loss_fn(config, cfg, mesh)
    fn = grad_fn or jax.grad(loss_fn, has_aux=True)
    if mesh is None:
        grads, sums = jax.jit(fn)(params, batch, None)
    else:
        p_sh = param_shardings(mesh, config, contrastive_head(cfg))
        grads, sums = jax.jit(fn, in_shardings=(p_sh, batch_sharding(mesh), None))(
            jax.device_put(params, p_sh), jax.device_put(batch, batch_sharding(mesh)), None)
    return float(sums["loss_sum"]), jax.device_get(grads)


def assert_gradcache_equals_plain(cfg, batch, mesh_shape=None):
    """GradCache's loss and gradient for `cfg` on `batch`, on one device or a mesh of
    `mesh_shape`, equal the plain step's on one device."""
    from jbert.ops.sharding import make_mesh
    from jbert.tasks.contrastive import cached_grad_fn

    params = functional.init_params(one_layer_config(), jax.random.key(0),
                                    contrastive_head(cfg))
    loss_ref, grads_ref = loss_and_grads(cfg, params, batch, None)
    mesh = None if mesh_shape is None else make_mesh(**mesh_shape)
    loss, grads = loss_and_grads(cfg, params, batch, mesh,
                                 grad_fn=cached_grad_fn(one_layer_config(), cfg, mesh))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    assert_trees_close(grads, grads_ref, atol=1e-5)


def assert_trees_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def make_data_dir(root: Path, n_train=64, n_test=16) -> Path:
    """A data dir with a small BPE and docstring/code pairs, as `prepare_corpus` lays it out."""
    words = ["add", "sum", "read", "file", "parse", "json", "sort", "list", "open", "close"]

    def pair(i):
        a, b = words[i % 10], words[(i // 10) % 10]
        return {"query": f"{a.capitalize()} the {b} number {i}.",
                "positive": f"def {a}_{b}_{i}(x):\n    return {b}(x) + {i}"}

    (root / "pairs").mkdir(parents=True)
    for split, rows in (("train", range(n_train)), ("test", range(1000, 1000 + n_test))):
        with open(root / "pairs" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(pair(i)) + "\n" for i in rows)
    texts = [t for i in range(200) for t in pair(i).values()]
    save_tokenizer(train_tokenizer(texts, vocab_size=320), root / "tokenizer")
    return root


def tiny_run_config(data: Path, workdir: Path, *, batch_size=16, steps=4, log_every=2,
                    dropout=0.0, mesh=None, keep=1, **contrastive) -> TrainConfig:
    """A 1-layer contrastive run over `make_data_dir`'s data, checkpoints synchronous."""
    return TrainConfig(
        model=preset("tiny", vocab_size=320, hidden_size=32, num_attention_heads=2,
                     intermediate_size=64, num_hidden_layers=1, hidden_dropout_prob=dropout),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=1),
        data=DataConfig(dir=str(data), batch_size=batch_size), mesh=mesh or MeshConfig(),
        contrastive=ContrastiveConfig(**{"max_query_length": 16, "max_doc_length": 24,
                                         **contrastive}),
        checkpoint=CheckpointConfig(every_steps=100, keep=keep, async_save=False),
        workdir=str(workdir), steps=steps, log_every=log_every, eval_every=100, progress=False)


def write_teacher(root: Path, queries, docs, dim=12, seed=0) -> dict[str, dict[str, np.ndarray]]:
    """A teacher directory (`jbert.data.teacher`'s format, float16 unit rows) with a random
    embedding of each distinct query and document text; returns them,
    `{"query": {text: row}, "document": {text: row}}`."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out, arrays = {}, {}
    for side, texts, emb, keys in (("query", queries, "query_QD", "query_key_Q20"),
                                   ("document", docs, "doc_ND", "doc_key_N20")):
        texts = sorted({t.strip() for t in texts})
        rows = unit_rows(rng, (len(texts), dim)).astype(np.float16)
        arrays[emb] = rows
        arrays[keys] = np.asarray([list(hashlib.sha1(t.encode("utf-8")).digest())
                                   for t in texts], np.uint8).reshape(len(texts), 20)
        out[side] = dict(zip(texts, rows, strict=True))
    save_file(arrays, str(root / "teacher.safetensors"))
    meta = {"format": "jbert-teacher/1", "teacher": "random", "pairs": "tests", "split": "train",
            "queries": len(out["query"]), "documents": len(out["document"]), "dim": dim,
            "query_prompt": "", "doc_prompt": "", "max_query_length": None,
            "max_doc_length": None}
    (root / "teacher.json").write_text(json.dumps(meta))
    return out
