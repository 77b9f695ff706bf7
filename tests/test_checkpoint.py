"""Orbax checkpoints of the per-layer layout (jbert before scan): weights load, resume refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.synthetic import tiny_config

from jbert.hf.keys import per_layer_leaves, unflatten
from jbert.model import functional
from jbert.training.checkpoint import Checkpointer, StructureMismatchError, restore_weights


def test_a_per_layer_checkpoint_loads_its_weights_and_refuses_to_resume(tmp_path):
    config = tiny_config(tmp_path).model
    params = functional.init_params(config, jax.random.key(3), "masked_lm")
    old_params = unflatten(dict(per_layer_leaves(params)))  # encoder.layer.0, .1, ... as before
    assert set(old_params["bert"]["encoder"]["layer"]) == {0, 1}
    state = {"step": jnp.ones((), jnp.int32), "params": old_params}
    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    checkpointer.save(1, state, {"position": 0}, {"head": "masked_lm"})
    checkpointer.close()

    loaded, head, step = restore_weights(tmp_path / "checkpoints", config)
    assert (head, step) == ("masked_lm", 1)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)

    wanted = {"step": jax.ShapeDtypeStruct((), jnp.int32),
              "params": functional.abstract_params(config, "masked_lm")}
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(StructureMismatchError, match="per-layer layout.*init_from=") as error:
        checkpointer.restore_latest(wanted)
    checkpointer.close()
    assert error.value.per_layer
