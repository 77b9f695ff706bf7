"""LoRA: the merge is the per-layer low-rank update, training moves only the adapters (no
optimiser state for the base), checkpoints hold the adapters and a pointer to the base, the
merged export equals the adapted model, GradCache and a sharded mesh give the plain step's
numbers, and resume is exact."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.contrastive import make_data_dir, one_layer_config, random_batch
from helpers.synthetic import global_batch, synthetic_task, tiny_config, tiny_lora_cli
from jax.sharding import PartitionSpec

from jbert.errors import ConfigError
from jbert.hf.load import load_pretrained
from jbert.hf.save import save_pretrained
from jbert.model import functional, lora
from jbert.model.config import preset
from jbert.model.lora import TARGETS, LoRAConfig
from jbert.ops.sharding import batch_sharding, make_mesh, with_mesh
from jbert.training.checkpoint import Checkpointer, restore_meta
from jbert.training.config import MeshConfig, TrainConfig, apply_overrides
from jbert.training.export import export_run
from jbert.training.optim import make_optimizer
from jbert.training.run_dir import init_params_from, load_run_params
from jbert.training.state import init_state, param_shardings
from jbert.training.trainer import jit_train_step, train

MESH = MeshConfig(data=2, fsdp=2, tensor=2)  # the trainer's LoRA runs below run sharded
LORA = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value", "attention_output", "mlp_out"))


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _random_adapters(params, cfg, seed=1):
    """Adapters with B non-zero, so the merged model differs from the base."""
    adapters = lora.init_adapters(params, cfg, jax.random.key(seed))
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(adapters)))
    return {t: {"a": ab["a"], "b": 0.1 * jax.random.normal(next(keys), ab["b"].shape)}
            for t, ab in adapters.items()}


@pytest.mark.parametrize("name", ["tiny", pytest.param("tiny-code", marks=pytest.mark.slow)])
def test_merge_adds_scale_times_a_b_to_each_layer_of_each_target(name):
    config = preset(name, num_hidden_layers=2, vocab_size=64, hidden_size=16,
                    num_attention_heads=2, intermediate_size=24)
    cfg = LoRAConfig(rank=3, alpha=6.0)  # every target
    base = functional.init_params(config, jax.random.key(0), "masked_lm")
    trained = lora.trainable(base, _random_adapters(base, cfg))
    assert set(trained) == {"lora", "cls"}  # the head's own weights train too
    merged = lora.merge(base, trained, cfg)
    encoder_layer = ("bert", "encoder", "layer")
    changed = set()
    for target in TARGETS:
        path = encoder_layer + lora.kernel_path(base["bert"], target) + ("kernel",)
        changed.add(path)
        w, a, b = (np.asarray(x, np.float64) for x in (
            _get(base, path), trained["lora"][target]["a"], trained["lora"][target]["b"]))
        for n in range(config.num_hidden_layers):
            np.testing.assert_allclose(_get(merged, path)[n], w[n] + 2.0 * a[n] @ b[n],
                                       atol=1e-5)
        assert not np.allclose(_get(merged, path), w, atol=1e-4)
    for path, leaf in jax.tree_util.tree_leaves_with_path(base):
        keys = tuple(k.key for k in path)
        if keys not in changed:
            np.testing.assert_array_equal(_get(merged, keys), leaf, err_msg=str(keys))


@pytest.mark.slow
def test_fresh_adapters_start_at_the_base_and_shard_like_their_kernel():
    config = tiny_config("unused").model
    base = functional.init_params(config, jax.random.key(0), "masked_lm")
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    tx = make_optimizer(tiny_config("unused").optim, 10)
    state = init_state(mesh, config, "masked_lm", tx, 0, params=base, lora_cfg=LORA)
    merged = lora.merge(base, jax.device_get(state["params"]), LORA)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base), strict=True):
        np.testing.assert_array_equal(a, b)
    query = state["params"]["lora"]["query"]  # kernel (layers, embed, heads)
    assert query["a"].sharding.spec == PartitionSpec(None, "fsdp", None)
    assert query["b"].sharding.spec == PartitionSpec(None, None, "tensor")
    assert np.abs(np.asarray(query["a"])).max() > 0


def test_bad_lora_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"lora\.targets.*unknown mlp.*known: query, key"):
        apply_overrides(TrainConfig(), {"lora.targets": "query,mlp"})
    with pytest.raises(ConfigError, match=r"lora\.rank"):
        apply_overrides(TrainConfig(), {"lora.rank": "-2"})
    with pytest.raises(ConfigError, match=r"lora\.alpha"):
        apply_overrides(TrainConfig(), {"lora.alpha": "0"})
    cfg = apply_overrides(TrainConfig(), {"lora.rank": "8", "lora.targets": "query,value"})
    assert cfg.lora == LoRAConfig(rank=8, targets=("query", "value"))
    cfg = tiny_config(tmp_path / "run", lora=LoRAConfig(rank=4))
    with pytest.raises(ConfigError, match=r"lora\.rank=4.*init_from"):
        train(cfg, synthetic_task(cfg))
    assert not (tmp_path / "run").exists()


def _sum_sizes(tree):
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A base model as released: an HF export of (random) MLM weights."""
    config = tiny_config("unused").model
    params = functional.init_params(config, jax.random.key(42), "masked_lm")
    return save_pretrained(tmp_path_factory.mktemp("base") / "export", config, params,
                           head="masked_lm")


@pytest.fixture(scope="module")
def lora_run(base_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lora")
    cfg = tiny_config(workdir / "full", steps=6, init_from=str(base_dir), lora=LORA, mesh=MESH)
    return cfg, train(cfg, synthetic_task(cfg))


@pytest.mark.slow
def test_optimizer_state_and_checkpoint_hold_the_adapters_only(lora_run, base_dir):
    cfg, summary = lora_run
    state = summary["state"]
    assert summary["status"] == "done" and "LoRA rank 4" in summary["origin"]
    base = init_params_from(str(base_dir), cfg.model, "masked_lm")
    adapter_sizes = _sum_sizes(state["params"]["lora"])
    head_sizes = _sum_sizes(base["cls"])
    assert _sum_sizes(state["params"]) == adapter_sizes + head_sizes
    assert adapter_sizes < _sum_sizes(base["bert"]) / 5
    # AdamW: two moments per trained weight, plus scalar counts.
    opt_sizes = _sum_sizes(state["opt_state"])
    assert 2 * (adapter_sizes + head_sizes) <= opt_sizes <= 2 * (adapter_sizes + head_sizes) + 8
    word_embedding = base["bert"]["embeddings"]["word_embeddings"]["embedding"].shape
    assert word_embedding not in {x.shape for x in jax.tree.leaves(state["opt_state"])}
    assert not np.allclose(state["params"]["lora"]["query"]["b"], 0)  # it trained
    ckpt_dir = cfg.workdir + "/checkpoints"
    checkpointer = Checkpointer(ckpt_dir)
    saved = checkpointer.saved_structure(6)
    checkpointer.close()
    assert not any("bert" in path for path in saved)
    meta, step = restore_meta(ckpt_dir)
    fingerprint = meta["lora"].pop("base_fingerprint")
    assert step == 6 and meta["lora"] == {"rank": 4, "alpha": 8.0, "targets": list(
        LORA.targets), "base": str(base_dir.absolute())}
    assert len(fingerprint) == len(jax.tree.leaves(base["bert"]))


@pytest.mark.slow
def test_merged_export_equals_the_adapted_model_and_the_base_is_untouched(lora_run, base_dir,
                                                                          tmp_path):
    cfg, summary = lora_run
    base = init_params_from(str(base_dir), cfg.model, "masked_lm")
    adapted = lora.merge(base, jax.device_get(summary["state"]["params"]), LORA)
    ids = np.array([[5, 9, 33, 7, 4, 100, 2, 3], [8, 8, 6, 5, 1, 1, 1, 1]], np.int32)
    mask = np.array([[1] * 8, [1] * 4 + [0] * 4], np.int32)
    want = functional.forward(cfg.model, adapted, ids, mask)
    out = export_run(cfg.workdir, tmp_path / "export", head="base")
    loaded_config, loaded = load_pretrained(out, head="base")
    np.testing.assert_allclose(functional.forward(loaded_config, loaded, ids, mask), want,
                               atol=1e-5)
    assert not np.allclose(functional.forward(cfg.model, base, ids, mask), want, atol=1e-4)
    # the run directory reads as the merged model too (evaluation, init_from)
    _, params, head, _ = load_run_params(cfg.workdir)
    assert head == "masked_lm"
    np.testing.assert_allclose(functional.forward(cfg.model, params, ids, mask), want, atol=1e-5)
    # Outside the targeted kernels every weight is the base's, and the base on disk is as saved.
    targeted = {lora.kernel_path(base["bert"], t) for t in LORA.targets}
    _, base_again = load_pretrained(base_dir, head="masked_lm")
    for path, leaf in jax.tree_util.tree_leaves_with_path(base_again["bert"]):
        keys = tuple(k.key for k in path)
        np.testing.assert_array_equal(_get(base["bert"], keys), leaf)
        if keys[:2] == ("encoder", "layer") and keys[2:-1] in targeted and keys[-1] == "kernel":
            assert not np.allclose(_get(params["bert"], keys), leaf, atol=1e-6), keys
        else:
            np.testing.assert_array_equal(_get(params["bert"], keys), leaf, err_msg=str(keys))


@pytest.mark.slow
def test_lora_stop_and_resume_is_bitwise_identical(lora_run, base_dir, tmp_path):
    full_cfg, full = lora_run
    moved_base = tmp_path / "base"
    shutil.copytree(base_dir, moved_base)
    split = tiny_config(tmp_path / "split", steps=6, init_from=str(moved_base), lora=LORA,
                        mesh=MESH)
    first = train(split, synthetic_task(split), stop_at=4)
    assert first["end_step"] == 4
    # A base that is gone: one line naming it, the checkpoints left as they were.
    shutil.move(moved_base, tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=f"adapters of the base {moved_base}.*put the base back"):
        train(split, synthetic_task(split))
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["3", "4"]
    # Another base of the same shapes in its place: refused, naming a weight that differs.
    other = functional.init_params(split.model, jax.random.key(7), "masked_lm")
    save_pretrained(moved_base, split.model, other, head="masked_lm")
    with pytest.raises(ConfigError, match=r"another base than .*differs in \['embeddings'\]"):
        train(split, synthetic_task(split))
    shutil.rmtree(moved_base)
    shutil.move(tmp_path / "elsewhere", moved_base)
    second = train(split, synthetic_task(split))
    assert second["origin"].startswith("resumed from step 4")
    for a, b in zip(jax.tree.leaves(jax.device_get(full["state"])),
                    jax.tree.leaves(jax.device_get(second["state"])), strict=True):
        np.testing.assert_array_equal(a, b)

    def losses(workdir):
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}

    assert losses(tmp_path / "split") == losses(Path(full_cfg.workdir))


@pytest.mark.slow
def test_resume_with_other_adapters_names_the_change(lora_run, tmp_path):
    cfg, _ = lora_run
    other = tiny_config(tmp_path / "x", steps=6, init_from=cfg.init_from,
                        lora=LoRAConfig(rank=4, alpha=16.0, targets=LORA.targets))
    shutil.copytree(cfg.workdir, other.workdir)
    with pytest.raises(ConfigError, match=r"cannot resume.*alpha=8\.0.*alpha=16\.0"):
        train(other, synthetic_task(other))


def _run_lora_steps(mesh, cfg, base, steps=3):
    task = synthetic_task(cfg)
    tx = make_optimizer(cfg.optim, cfg.steps)
    state = init_state(mesh, cfg.model, task.head, tx, 0, params=base, lora_cfg=LORA)
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    base_sh = param_shardings(mesh, cfg.model, task.head)
    step_fn = with_mesh(jit_train_step(task.loss_fn, tx, state_sh, batch_sharding(mesh),
                                       lora_cfg=LORA, base_sh=base_sh), mesh)
    base = jax.device_put(base, base_sh)
    losses = []
    for i in range(steps):
        batch = {**global_batch(i), "scale": np.ones(16, np.float32)}
        state, metrics = step_fn(state, jax.device_put(batch, batch_sharding(mesh)), base)
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    return losses, jax.device_get(state["params"])


@pytest.mark.slow
def test_sharded_lora_step_equals_single_device(tmp_path):
    cfg = tiny_config(tmp_path)
    base = functional.init_params(cfg.model, jax.random.key(3), "masked_lm")
    ref_losses, ref = _run_lora_steps(make_mesh(data=1, devices=jax.devices()[:1]), cfg, base)
    losses, got = _run_lora_steps(make_mesh(data=2, fsdp=2, tensor=2), cfg, base)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    assert not np.allclose(got["lora"]["value"]["b"], 0)


@pytest.mark.slow
def test_gradcache_lora_gradient_equals_the_plain_one():
    from jbert.tasks.contrastive import cached_grad_fn, contrastive_loss_fn
    from jbert.training.config import ContrastiveConfig

    config = one_layer_config()
    c = ContrastiveConfig(temperature=0.1, symmetric=True, hard_negatives=2,
                          learn_temperature=True, chunk_size=8)
    base = functional.init_params(config, jax.random.key(0), "contrastive")
    trained = lora.trainable(base, _random_adapters(base, LORA))
    assert set(trained) == {"lora", "temperature_log_scale"}
    batch = jax.tree.map(jnp.asarray, random_batch(2, seed=3))
    plain = jax.grad(lora.on_merged(contrastive_loss_fn(config, c), base, LORA), has_aux=True)
    cached = lora.grad_on_merged(cached_grad_fn(config, c), base, LORA)
    want, want_sums = jax.jit(plain)(trained, batch, None)
    got, sums = jax.jit(cached)(trained, batch, None)
    np.testing.assert_allclose(sums["loss_sum"], want_sums["loss_sum"], rtol=1e-6)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))
    assert np.abs(want["lora"]["query"]["a"]).max() > 0
    assert np.abs(want["temperature_log_scale"]) > 0


@pytest.mark.slow
def test_contrastive_lora_with_gradcache_trains_and_exports(base_dir, tmp_path):
    """The contrastive entry point with --config.lora.rank=4: GradCache chunks of 8 rows on a
    (2, 2, 2) mesh, eval and export of the merged weights."""
    from train.contrastive import main

    argv, config, base = tiny_lora_cli(make_data_dir(tmp_path / "data"), tmp_path,
                                       **{"lora.targets": "query,value,mlp_in,mlp_out"})
    summary = main(argv)
    assert summary["status"] == "done"
    assert "LoRA rank 4 on query, value, mlp_in, mlp_out" in summary["origin"]
    loaded_config, loaded = load_pretrained(summary["export"], head="base")
    _, run_params, head, _ = load_run_params(tmp_path / "run")
    assert head == "contrastive_sparse"  # the tiny recipe trains the sparse head too
    ids = np.array([[5, 9, 33, 7, 4, 100]], np.int32)
    np.testing.assert_allclose(functional.forward(loaded_config, loaded, ids),
                               functional.forward(config, run_params, ids), atol=1e-5)
    _, base_params = load_pretrained(base, head="base")
    assert not np.allclose(functional.forward(config, base_params, ids),
                           functional.forward(loaded_config, loaded, ids), atol=1e-4)
