import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbert.model import functional
from jbert.model.config import REMAT_POLICIES, JinaBertConfig, preset


@pytest.fixture(scope="module", params=["tiny", "tiny-code"])
def model(request):
    config = preset(request.param)
    return config, functional.init_params(config, jax.random.key(0))


def _ids(b, length, seed=1, vocab=1000):
    return jax.random.randint(jax.random.key(seed), (b, length), 5, vocab)


def test_output_shapes_and_finite(model):
    config, params = model
    out = functional.apply(config, params, _ids(2, 33))
    assert out["last_hidden_state"].shape == (2, 33, config.hidden_size)
    assert out["pooler_output"].shape == (2, config.hidden_size)
    assert np.isfinite(np.asarray(out["last_hidden_state"])).all()


def test_jit_and_eager_agree(model):
    config, params = model
    ids = _ids(2, 20)
    eager = functional.apply(config, params, ids)["last_hidden_state"]
    jitted = jax.jit(lambda p, x: functional.apply(config, p, x)["last_hidden_state"])(params, ids)
    np.testing.assert_allclose(jitted, eager, atol=1e-5)


def test_appending_padding_does_not_change_real_positions(model):
    config, params = model
    ids = _ids(2, 24)
    mask = jnp.ones_like(ids).at[1, 17:].set(0)
    short = functional.forward(config, params, ids, mask)
    padded_ids = jnp.concatenate([ids, jnp.full((2, 40), config.pad_token_id)], axis=1)
    padded_mask = jnp.concatenate([mask, jnp.zeros((2, 40), jnp.int32)], axis=1)
    long = functional.forward(config, params, padded_ids, padded_mask)
    np.testing.assert_allclose(long[0, :24], short[0, :24], atol=1e-5)
    np.testing.assert_allclose(long[1, :17], short[1, :17], atol=1e-5)


def test_each_output_depends_on_tokens_on_both_sides(model):
    config, params = model
    ids = _ids(1, 21)
    base = functional.forward(config, params, ids)
    left = functional.forward(config, params, ids.at[0, 0].set(3))
    right = functional.forward(config, params, ids.at[0, 20].set(3))
    middle = 10
    assert np.abs(left[0, middle] - base[0, middle]).max() > 1e-4
    assert np.abs(right[0, middle] - base[0, middle]).max() > 1e-4


def test_packed_documents_equal_separate_runs(model):
    config, params = model
    a, b = _ids(1, 13, seed=2), _ids(1, 9, seed=3)
    packed = jnp.concatenate([a, b, jnp.zeros((1, 6), jnp.int32)], axis=1)
    segments = jnp.array([[1] * 13 + [2] * 9 + [0] * 6])
    mask = (segments > 0).astype(jnp.int32)
    out = jax.jit(lambda p: functional.apply(config, p, packed, mask, None, segments))(params)
    out = out["last_hidden_state"]
    np.testing.assert_allclose(out[0, :13], functional.forward(config, params, a)[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 13:22], functional.forward(config, params, b)[0], atol=1e-5)


@pytest.mark.parametrize("impl", ["blockwise", "dpa"])
def test_attention_paths_agree_through_the_model(model, impl):
    config, params = model
    ids = _ids(2, 150)
    mask = jnp.ones_like(ids).at[0, 120:].set(0)
    ref = functional.forward(dataclasses.replace(config, attention_impl="reference"), params,
                             ids, mask)
    got = functional.forward(dataclasses.replace(config, attention_impl=impl), params, ids, mask)
    np.testing.assert_allclose(got[0, :120], ref[0, :120], atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)


def test_dropout_needs_rng_and_changes_outputs(model):
    config, params = model
    ids = _ids(2, 16)
    train = jax.jit(lambda p, rng: functional.apply(config, p, ids, dropout_rng=rng))
    a, b = train(params, jax.random.key(1)), train(params, jax.random.key(2))
    assert not np.allclose(a["last_hidden_state"], b["last_hidden_state"])
    with pytest.raises(ValueError, match="rngs"):
        functional.module_with_params(config, params)(ids, deterministic=False)


def test_bf16_compute_keeps_fp32_params(model):
    config, params = model
    config16 = dataclasses.replace(config, dtype="bfloat16")
    ids = _ids(2, 16)
    out16 = functional.forward(config16, params, ids)
    out32 = functional.forward(config, params, ids)
    assert out16.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert np.abs(np.asarray(out16, np.float32) - out32).max() < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_remat_policies_give_the_same_gradients(model, policy):
    config, params = model
    ids = _ids(2, 16)

    def loss(p, cfg):
        return jnp.sum(functional.forward(cfg, p, ids) ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g = grad(params, config)
    g_remat = grad(params, dataclasses.replace(config, remat=policy))
    for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_param_tree_has_hf_layout_names_with_the_layers_stacked():
    base = functional.abstract_params(preset("tiny"))
    code = functional.abstract_params(preset("tiny-code", num_hidden_layers=3))
    assert set(base["encoder"]["layer"]["mlp"]) == {"gated_layers", "wo", "layernorm"}
    assert set(code["encoder"]["layer"]["mlp"]) == {"up_gated_layer", "down_layer"}
    assert {"layer_norm_q", "layer_norm_k"} <= set(code["encoder"]["layer"]["attention"]
                                                   ["self_attn"])
    assert "layer_norm_1" in code["encoder"]["layer"]
    original = functional.abstract_params(preset("tiny", feed_forward_type="original"))
    assert set(original["encoder"]["layer"]) == {"attention", "intermediate", "output"}
    # every layer weight carries the layer axis first, named `layers` for the sharding table
    assert code["encoder"]["layer"]["mlp"]["down_layer"]["kernel"].shape == (3, 192, 96)
    axes = functional.logical_axes(preset("tiny-code"))
    assert axes["encoder"]["layer"]["mlp"]["down_layer"]["kernel"] == ("layers", "mlp", "embed")
    assert all(a[0] == "layers" for a in jax.tree.leaves(
        axes["encoder"]["layer"], is_leaf=lambda x: isinstance(x, tuple)))


@pytest.mark.parametrize("policy,kept", [
    ("full", 1), ("save_qkv", 4), ("save_mlp_in", 2), ("save_qkv_context", 5),
    ("save_qkv_context_mlp_in", 6)])
def test_remat_by_name_keeps_the_named_activations(policy, kept):
    """What the backward pass keeps per layer, as [layers, B, L, D] residuals: the layer's input
    (the scan carry) and the activations the policy names (q, k, v, the attention context, the
    MLP input), nothing more: a name on the wrong tensor, or none, changes the count."""
    config = preset("tiny", num_hidden_layers=2, remat=policy, attention_impl="reference")
    params = functional.init_params(config, jax.random.key(0), "base")
    ids = _ids(2, 16)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(
            lambda p: jnp.sum(functional.forward(config, p, ids) ** 2), params)
    shape = f"f32[2,2,16,{config.hidden_size}]"
    assert out.getvalue().count(shape) == kept, out.getvalue()


def test_remat_is_a_named_policy_and_reads_the_old_bool():
    assert preset("tiny").remat == "none"
    assert preset("tiny", remat=True).remat == "full"
    assert preset("tiny", remat=False).remat == "none"
    assert preset("tiny", remat="dots_saveable").remat == "dots_saveable"
    with pytest.raises(ValueError, match="remat"):
        preset("tiny", remat="everything")


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="hidden_size"):
        JinaBertConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="feed_forward_type"):
        JinaBertConfig(feed_forward_type="swiglu")
    with pytest.raises(ValueError, match="attention_impl"):
        JinaBertConfig(attention_impl="flash")
    with pytest.raises(KeyError, match="tiniest"):
        preset("tiniest")
    with pytest.raises(ValueError, match="input_ids"):
        functional.apply(preset("tiny"), functional.init_params(preset("tiny"),
                                                                jax.random.key(0)),
                         jnp.zeros((2, 3, 4), jnp.int32))


def test_presets_match_the_released_shapes():
    assert functional.abstract_params(preset("base-code"))["embeddings"]["word_embeddings"][
        "embedding"].shape == (61056, 768)
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(
        functional.abstract_params(preset("base-code"))))
    assert 160e6 < n_params < 162e6  # jina-embeddings-v2-base-code: 161 M
    small = preset("small-en")
    assert (small.num_hidden_layers, small.hidden_size, small.num_attention_heads) == (4, 512, 8)
