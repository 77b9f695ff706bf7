"""Every head: output shapes, finite values, and a loss that falls when overfitting one batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jbert.model import functional
from jbert.model.config import preset
from jbert.model.heads import add_vocab_bias

B, L, V = 4, 12, 64
CONFIG = preset("tiny", vocab_size=V, hidden_size=32, num_attention_heads=2,
                intermediate_size=64, num_hidden_layers=1, num_labels=3)
CODE = preset("tiny-code", vocab_size=V, hidden_size=32, num_attention_heads=2,
              intermediate_size=64, num_hidden_layers=1, num_labels=3)


def _batch(head, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    ids = jax.random.randint(keys[0], (B, L), 5, V)
    mask = jnp.ones((B, L), jnp.int32).at[0, 9:].set(0)
    if head == "multiple_choice":
        ids = jax.random.randint(keys[0], (B, 3, L), 5, V)
        return (ids, jnp.ones_like(ids)), {"labels_B": jnp.array([0, 1, 2, 1])}
    labels = {
        "pretraining": {"labels_BL": jnp.where(jax.random.bernoulli(keys[1], 0.3, (B, L)), ids,
                                               -100),
                        "next_sentence_label_B": jnp.array([0, 1, 1, 0])},
        "masked_lm": {"labels_BL": jnp.where(jax.random.bernoulli(keys[1], 0.3, (B, L)), ids,
                                             -100)},
        "lm_head": {"labels_BL": ids},
        "next_sentence": {"labels_B": jnp.array([0, 1, 1, 0])},
        "sequence_classification": {"labels_B": jnp.array([0, 2, 1, 2])},
        "token_classification": {"labels_BL": jax.random.randint(keys[2], (B, L), 0, 3)},
        "question_answering": {"start_positions_B": jnp.array([1, 3, 0, 20]),
                               "end_positions_B": jnp.array([2, 5, 4, 20])},
        "base": {},
    }[head]
    return (ids, mask), labels


EXPECTED = {
    "base": {"last_hidden_state": (B, L, 32), "pooler_output": (B, 32)},
    "pretraining": {"prediction_logits": (B, L, V), "seq_relationship_logits": (B, 2)},
    "masked_lm": {"logits": (B, L, V), "last_hidden_state": (B, L, 32)},
    "lm_head": {"logits": (B, L, V)},
    "next_sentence": {"logits": (B, 2)},
    "sequence_classification": {"logits": (B, 3)},
    "multiple_choice": {"logits": (B, 3)},
    "token_classification": {"logits": (B, L, 3)},
    "question_answering": {"start_logits": (B, L), "end_logits": (B, L)},
}


@pytest.mark.parametrize("config", [CONFIG, pytest.param(CODE, marks=pytest.mark.slow)],
                         ids=["base", "code"])
# The two slowest heads (about 11 s together) run with the slow tests.
@pytest.mark.parametrize("head", [
    pytest.param(h, marks=pytest.mark.slow) if h in ("pretraining", "multiple_choice") else h
    for h in EXPECTED if h != "base"])
def test_head_shapes_and_overfitting(head, config):
    if head == "question_answering":
        config = config.replace(num_labels=2)  # start and end: any other num_labels is refused
    params = functional.init_params(config, jax.random.key(0), head)
    inputs, labels = _batch(head)
    out = functional.apply(config, params, *inputs, head=head)
    assert {k: v.shape for k, v in out.items()} == EXPECTED[head]
    assert all(np.isfinite(np.asarray(v)).all() for v in out.values())

    tx = optax.adam(3e-3)

    def loss_fn(p, rng):
        return functional.apply(config, p, *inputs, head=head, dropout_rng=rng, **labels)["loss"]

    @jax.jit
    def step(p, opt, rng):
        loss, grads = jax.value_and_grad(loss_fn)(p, rng)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    opt = tx.init(params)
    losses = []
    for i in range(40):
        params, opt, loss = step(params, opt, jax.random.key(i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    final = float(functional.apply(config, params, *inputs, head=head, **labels)["loss"])
    assert final < 0.5 * losses[0], (head, losses[0], final)


def test_base_model_outputs():
    params = functional.init_params(CONFIG, jax.random.key(0))
    out = functional.apply(CONFIG, params, *_batch("base")[0])
    assert {k: v.shape for k, v in out.items()} == EXPECTED["base"]
    assert np.abs(np.asarray(out["pooler_output"])).max() <= 1.0  # tanh


def test_decoder_is_tied_to_word_embeddings():
    params = functional.init_params(CONFIG, jax.random.key(0), "masked_lm")
    assert "decoder" not in params["cls"]["predictions"]
    ids, mask = _batch("masked_lm")[0]  # ids >= 5: row 2 of the table is never an input
    table = params["bert"]["embeddings"]["word_embeddings"]["embedding"]
    moved = jax.tree.map(lambda x: x, params)
    moved["bert"]["embeddings"]["word_embeddings"]["embedding"] = table.at[2].add(1.0)
    before = functional.apply(CONFIG, params, ids, mask, head="masked_lm")["logits"]
    after = functional.apply(CONFIG, moved, ids, mask, head="masked_lm")["logits"]
    changed = np.abs(np.asarray(after - before)).max(axis=(0, 1)) > 1e-6
    assert changed[2] and changed.sum() == 1


def test_ignored_labels_do_not_count():
    params = functional.init_params(CONFIG, jax.random.key(0), "masked_lm")
    (ids, mask), labels = _batch("masked_lm")
    out = functional.apply(CONFIG, params, ids, mask, head="masked_lm", **labels)
    logits = np.asarray(out["logits"], np.float64)
    label = np.asarray(labels["labels_BL"])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = [-logp[b, t, label[b, t]] for b in range(B) for t in range(L) if label[b, t] != -100]
    np.testing.assert_allclose(float(out["loss"]), np.mean(picked), rtol=1e-5)


@pytest.mark.parametrize("num_labels,labels,problem", [
    (1, jnp.array([0.5, -1.0, 2.0, 0.0]), "regression"),
    (3, jnp.array([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]), "multi_label"),
])
def test_sequence_classification_problem_types(num_labels, labels, problem):
    config = CONFIG.replace(num_labels=num_labels)
    params = functional.init_params(config, jax.random.key(0), "sequence_classification")
    ids, mask = _batch("sequence_classification")[0]
    out = functional.apply(config, params, ids, mask, head="sequence_classification",
                           labels_B=labels)
    logits = np.asarray(out["logits"])
    if problem == "regression":
        expected = np.mean((logits[:, 0] - np.asarray(labels)) ** 2)
    else:
        y = np.asarray(labels)
        expected = np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits))))
    np.testing.assert_allclose(float(out["loss"]), expected, rtol=1e-5)


def test_vocab_bias_gradient_is_the_plain_sum():
    """`add_vocab_bias` only changes how the bias gradient is computed, not its value."""
    logits_BLV = jax.random.normal(jax.random.key(0), (3, 5, 11))
    bias_V = jax.random.normal(jax.random.key(1), (11,))
    weights_BLV = jax.random.normal(jax.random.key(2), (3, 5, 11))

    def loss(add):
        return lambda x, b: jnp.sum(jnp.tanh(add(x, b)) * weights_BLV)

    ours = jax.grad(loss(add_vocab_bias), (0, 1))(logits_BLV, bias_V)
    plain = jax.grad(loss(jnp.add), (0, 1))(logits_BLV, bias_V)
    np.testing.assert_allclose(add_vocab_bias(logits_BLV, bias_V), logits_BLV + bias_V)
    for got, want in zip(ours, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
