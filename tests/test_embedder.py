import ast
import collections
import inspect
import json

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import train_tokenizer
from jbert.evaluation.embedder import Embedder, bucket_lengths, padding_fraction, plan_calls
from jbert.model import functional
from jbert.model.config import preset


@pytest.fixture(scope="module")
def embedder():
    # A real tokenizer trained on real code: this very module and the json package.
    texts = [inspect.getsource(json), inspect.getsource(inspect)]
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    config = preset("tiny", vocab_size=tokenizer.get_vocab_size(), attention_block_size=64)
    params = functional.init_params(config, jax.random.key(0))
    return Embedder(config, params, tokenizer, max_length=512)


TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "sum two numbers",
    "class Stack:\n    def __init__(self):\n        self.items = []\n" * 6,
    "x",
    "for i, item in enumerate(items):\n    print(i, item)\n",
    "import os\nprint(os.getcwd())",
    "",
]


def test_unit_norm_and_input_order(embedder):
    emb = embedder.encode(TEXTS, batch_size=4)
    assert emb.shape == (len(TEXTS), embedder.config.hidden_size)
    norms = np.linalg.norm(emb[:-1], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    for i, text in enumerate(TEXTS[:-1]):
        np.testing.assert_allclose(embedder.encode(text), emb[i], atol=1e-5)


def test_independent_of_batch_size(embedder):
    by_size = [embedder.encode(TEXTS, batch_size=b) for b in (1, 3, 8)]
    for emb in by_size[1:]:
        np.testing.assert_allclose(emb, by_size[0], atol=1e-5)


def test_matches_the_functional_forward(embedder):
    text = TEXTS[4]
    ids = embedder.tokenize([text], 512)[0]
    hidden = functional.forward(embedder.config, embedder.params, np.array([ids]))
    pooled = np.asarray(hidden[0]).mean(0)
    np.testing.assert_allclose(embedder.encode(text), pooled / np.linalg.norm(pooled),
                               atol=1e-5)


def test_truncates_to_max_length_and_buckets(embedder):
    long_text = "value = compute(value) + 1\n" * 400
    assert len(embedder.tokenize([long_text], 512)[0]) == 512
    emb = embedder.encode([long_text], max_length=512, batch_size=2)
    assert np.isfinite(emb).all()
    assert bucket_lengths(8192)[:3] == [16, 32, 64] and bucket_lengths(8192)[-1] == 8192
    assert bucket_lengths(100) == [16, 32, 64, 100]


def test_bad_arguments(embedder):
    with pytest.raises(ValueError, match="max_length"):
        embedder.encode(["a"], max_length=10_000)
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(["a"], batch_size=0)


def _functions(*modules) -> list[str]:
    """The source of every function and class of these modules: real code of real lengths."""
    out = []
    for m in modules:
        source = inspect.getsource(m)
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out.append("".join(lines[node.lineno - 1 : node.end_lineno]))
    return out


def test_packed_equals_one_text_per_row(embedder):
    rng = np.random.default_rng(0)
    texts = [*TEXTS, "value = compute(value) + 1\n" * 400, *_functions(json)[:40]]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    lengths = [len(x) for x in embedder.tokenize(texts, 512)]
    assert max(lengths) == 512
    calls = plan_calls(lengths, 512, batch_size=4)
    assert any(len(row) > 1 for c in calls for row in c.rows), "nothing was packed"
    packed = embedder.encode(texts, batch_size=4)
    assert embedder.last_padding_fraction == pytest.approx(padding_fraction(calls, lengths))
    alone = embedder.encode(texts, batch_size=4, pack=False)
    np.testing.assert_allclose(packed, alone, atol=1e-5)
    # input order: a permutation of the inputs permutes the embeddings
    back = rng.permutation(len(texts))
    np.testing.assert_allclose(embedder.encode([texts[i] for i in back]), packed[back], atol=1e-5)


def test_plan_places_every_text_once_within_its_row():
    lengths = [int(n) for n in np.random.default_rng(1).integers(2, 700, 300)]
    calls = plan_calls(lengths, 1024, batch_size=8)
    placed = [i for c in calls for row in c.rows for i in row]
    assert sorted(placed) == list(range(len(lengths)))
    for c in calls:
        assert len(c.rows) == c.num_rows and c.length in (512, 1024)
        assert c.num_rows * c.length <= 8 * 512  # about the same tokens in every call
        for row in c.rows:
            assert sum(lengths[i] for i in row) <= c.length and len(row) <= c.num_segments
    assert len({(c.num_rows, c.length) for c in calls}) <= 8  # few shapes to compile


@pytest.mark.parametrize("max_length", [512, 8192])
def test_packing_wastes_under_five_percent_on_real_code(embedder, max_length):
    texts = _functions(json, inspect, collections, ast)  # one-line helpers to 1,000-line classes
    lengths = [len(x) for x in embedder.tokenize(texts, max_length)]
    packed = padding_fraction(plan_calls(lengths, max_length, 32), lengths)
    unpacked = padding_fraction(plan_calls(lengths, max_length, 32, pack=False), lengths)
    assert packed < 0.05 < unpacked


def test_prompts_prefix_every_text(embedder):
    prompted = Embedder(embedder.config, embedder.params, embedder.tokenizer, max_length=512,
                        prompts={"query": "Represent this query: ", "document": ""})
    want = embedder.encode(["Represent this query: " + t for t in TEXTS])
    np.testing.assert_array_equal(prompted.encode(TEXTS, prompt_name="query"), want)
    np.testing.assert_array_equal(embedder.encode(TEXTS, prompt="Represent this query: "), want)
    np.testing.assert_array_equal(prompted.encode(TEXTS[0], prompt_name="query"), want[0])
    np.testing.assert_array_equal(prompted.encode(TEXTS, prompt_name="document"),
                                  embedder.encode(TEXTS))
    assert not np.allclose(want, embedder.encode(TEXTS))  # the prompt did change something
    with pytest.raises(ValueError, match=r"unknown prompt_name 'code'.*\['document', 'query'\]"):
        prompted.encode(TEXTS, prompt_name="code")
    with pytest.raises(ValueError, match="unknown prompt_name 'query'.*none"):
        embedder.encode(TEXTS, prompt_name="query")
    with pytest.raises(ValueError, match="not both"):
        prompted.encode(TEXTS, prompt_name="query", prompt="x")


def test_dim_keeps_the_leading_dimensions_renormalised(embedder):
    full = embedder.encode(TEXTS[:-1])
    for dim in (1, 16, embedder.config.hidden_size):
        got = embedder.encode(TEXTS[:-1], dim=dim)
        want = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
        assert got.shape == (len(TEXTS) - 1, dim)
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = embedder.encode(TEXTS[:-1], normalize=False)
    np.testing.assert_array_equal(embedder.encode(TEXTS[:-1], normalize=False, dim=16),
                                  raw[:, :16])
    assert embedder.encode(TEXTS[0], dim=8).shape == (8,)
    for bad in (0, embedder.config.hidden_size + 1):
        with pytest.raises(ValueError, match=rf"dim={bad} must be in \[1, "
                                             rf"{embedder.config.hidden_size}\]"):
            embedder.encode(TEXTS, dim=bad)
