import jax
import jax.numpy as jnp
import numpy as np
from helpers.synthetic import global_batch, tiny_model

from jbert.model import functional
from jbert.tasks.mlm import labelled_positions, mlm_loss_fn


def test_labelled_positions_come_first_in_order():
    labels = jnp.array([[-100, 7, -100, 9, 3], [5, -100, -100, -100, -100]])
    np.testing.assert_array_equal(labelled_positions(labels, 3), [[1, 3, 4], [0, 1, 2]])


def test_masked_positions_only_loss_equals_the_full_loss():
    config = tiny_model()
    params = functional.init_params(config, jax.random.key(0), "masked_lm")
    batch = {k: jnp.asarray(v) for k, v in global_batch(0).items()}
    most = int((batch["labels"] >= 0).sum(1).max())
    full_sum, full = jax.jit(mlm_loss_fn(config))(params, batch, None)
    part_sum, part = jax.jit(mlm_loss_fn(config, max_predictions=most))(params, batch, None)
    np.testing.assert_allclose(part_sum, full_sum, rtol=1e-5)
    assert int(part["count"]) == int(full["count"]) and int(part["dropped"]) == 0
    assert int(part["correct"]) == int(full["correct"])
    # Too small a K drops labels, and says how many.
    _, short = jax.jit(mlm_loss_fn(config, max_predictions=2))(params, batch, None)
    assert int(short["dropped"]) == int(full["count"]) - int(short["count"]) > 0
