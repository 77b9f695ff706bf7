import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jbert.model import encoder, functional
from jbert.model.config import PRESETS, preset
from jbert.model.heads import HEADS
from jbert.ops.sharding import (
    LOGICAL_AXIS_RULES,
    batch_sharding,
    constrain,
    logical_to_spec,
    make_mesh,
    tree_shardings,
    with_mesh,
)


def test_every_weight_has_a_logical_name_per_dimension_and_a_rule():
    rules = dict(LOGICAL_AXIS_RULES)
    for name in ("tiny", "tiny-code"):
        config = PRESETS[name].replace(feed_forward_type="geglu")
        for head in HEADS:
            axes = functional.logical_axes(config, head)
            shapes = functional.abstract_params(config, head)
            for names, shape in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)),
                                    jax.tree.leaves(shapes), strict=True):
                assert len(names) == len(shape.shape), (head, names, shape)
                assert all(n in rules for n in names), (head, names)


def test_partition_specs_on_a_2x4_mesh():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    config = preset("tiny", num_attention_heads=4)
    shardings = tree_shardings(mesh, functional.logical_axes(config, "masked_lm"),
                               functional.abstract_params(config, "masked_lm"))
    layer = shardings["bert"]["encoder"]["layer"]  # stacked: the layer axis stays whole
    assert layer["attention"]["self_attn"]["query"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert layer["attention"]["self_attn"]["query"]["bias"].spec == P(None, "tensor")
    assert layer["attention"]["output"]["dense"]["kernel"].spec == P(None, "tensor", "fsdp")
    assert layer["mlp"]["gated_layers"]["kernel"].spec == P(None, "fsdp", "tensor")
    assert layer["mlp"]["layernorm"]["scale"].spec == P(None, None)
    embeddings = shardings["bert"]["embeddings"]
    assert embeddings["word_embeddings"]["embedding"].spec == P("tensor", "fsdp")
    assert embeddings["token_type_embeddings"]["embedding"].spec == P(None, "fsdp")
    assert shardings["cls"]["predictions"]["bias"].spec == P("tensor")


def test_indivisible_dimension_stays_replicated():
    mesh = make_mesh(data=1, fsdp=1, tensor=8)
    assert logical_to_spec(("embed", "labels"), (96, 3), mesh) == P("fsdp", None)
    assert logical_to_spec(("vocab", "embed"), (1002, 96), mesh) == P(None, "fsdp")


def test_mesh_errors_name_the_axis():
    assert make_mesh().shape == {"data": 8, "fsdp": 1, "tensor": 1}
    assert make_mesh(fsdp=2, tensor=2).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="tensor=3"):
        make_mesh(tensor=3)
    with pytest.raises(ValueError, match="data=3"):
        make_mesh(data=3, fsdp=2, tensor=1)
    with pytest.raises(ValueError, match="fsdp"):
        make_mesh(fsdp=0)
    with pytest.raises(KeyError, match="nonsense"):
        logical_to_spec(("nonsense",))


GOLDEN = Path(__file__).parent / "assets" / "partition_specs_base_code_mlm_2x4.json"


def _flat_specs():
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    config = preset("base-code")
    shardings = tree_shardings(mesh, functional.logical_axes(config, "masked_lm"),
                               functional.abstract_params(config, "masked_lm"))
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {".".join(str(getattr(k, "key", k)) for k in path): [
        list(a) if isinstance(a, tuple) else a for a in s.spec] for path, s in flat}


def test_partition_specs_match_the_golden_file():
    """Every parameter of the base-code MLM model on a (fsdp=2, tensor=4) mesh.

    Regenerate after an intended change with JBERT_UPDATE_GOLDEN=1 and review the diff.
    """
    specs = _flat_specs()
    if os.environ.get("JBERT_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(specs, indent=1, sort_keys=True) + "\n")
    assert specs == json.loads(GOLDEN.read_text())
    assert len(specs) == 4 + 21 + 5  # embeddings, the 12 code-layout layers stacked, MLM head


@pytest.mark.parametrize("name", ["tiny", "tiny-code"])
def test_2x2x2_forward_equals_one_device_and_activations_follow_the_rules(monkeypatch, name):
    """On (data=2, fsdp=2, tensor=2): the sharded forward equals the unsharded one, and after
    propagation the hidden states between layers are split by rows over data x fsdp and whole
    in the model dimension, q/k/v and the context by heads over tensor, as the table says.
    (The train step on this mesh: test_trainer.py::test_sharded_step_equals_single_device.)"""
    config = preset(name)
    params = functional.init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (8, 32), 5, 1000)
    mask = jnp.ones_like(ids).at[::2, 25:].set(0)

    def hidden(p, i, m):
        return functional.apply(config, p, i, m)["last_hidden_state"]

    reference = jax.jit(hidden)(params, ids, mask)

    seen = []

    def spy(x, axes):
        y = constrain(x, axes)
        jax.debug.inspect_array_sharding(y, callback=lambda s: seen.append((tuple(axes), s)))
        return y

    monkeypatch.setattr(encoder, "constrain", spy)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    p_sh = tree_shardings(mesh, functional.logical_axes(config), functional.abstract_params(config))
    rows = batch_sharding(mesh)
    sharded = with_mesh(jax.jit(hidden, in_shardings=(p_sh, rows, rows)), mesh)
    out = sharded(jax.device_put(params, p_sh), ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(reference), atol=2e-5)

    want = {encoder.HIDDEN: P(("data", "fsdp"), None, None),
            encoder.HEADS: P(("data", "fsdp"), None, "tensor", None),
            encoder.MLP: P(("data", "fsdp"), None, "tensor")}
    assert {axes for axes, _ in seen} == set(want)
    for axes, sharding in seen:
        assert sharding.is_equivalent_to(NamedSharding(mesh, want[axes]), len(want[axes])), (
            axes, sharding)


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 8, 96))
    assert constrain(x, encoder.HIDDEN) is x
