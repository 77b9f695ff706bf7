"""Shared pieces of the contrastive tests: a one-layer model, random token batches, unit
vectors, the numpy InfoNCE reference, jitted gradients on one device or a mesh, and a tiny data
dir with its run config."""

import json
from pathlib import Path

import jax
import numpy as np

from jbert.data.tokenizer import save_tokenizer, train_tokenizer
from jbert.model.config import JinaBertConfig, preset
from jbert.ops.sharding import batch_sharding
from jbert.tasks.contrastive import contrastive_loss_fn
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


def one_layer_config(dropout=0.0) -> JinaBertConfig:
    return preset("tiny", vocab_size=128, hidden_size=32, num_attention_heads=2,
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


def unit_rows(rng, shape):
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def loss_and_grads(cfg, params, batch, mesh, grad_fn=None):
    """Loss sum and gradient under jit, on `mesh` (sharded rows and params) or one device."""
    config = one_layer_config()
    loss_fn = contrastive_loss_fn(config, cfg, mesh)
    fn = grad_fn or jax.grad(loss_fn, has_aux=True)
    if mesh is None:
        grads, sums = jax.jit(fn)(params, batch, None)
    else:
        p_sh = param_shardings(mesh, config, "contrastive")
        grads, sums = jax.jit(fn, in_shardings=(p_sh, batch_sharding(mesh), None))(
            jax.device_put(params, p_sh), jax.device_put(batch, batch_sharding(mesh)), None)
    return float(sums["loss_sum"]), jax.device_get(grads)


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
