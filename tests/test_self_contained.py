"""Self-contained exports (`save_pretrained(..., self_contained=True)`): jbert's own modeling
code loaded by the installed transformers and sentence-transformers, offline, against jbert."""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jbert.data.tokenizer import train_tokenizer
from jbert.evaluation.embedder import Embedder
from jbert.hf.load import load_pretrained
from jbert.hf.save import AUTO_CLASSES, SELF_CONTAINED_FILES, hf_config_dict, save_pretrained
from jbert.model import functional
from jbert.model.config import preset

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
LAYOUTS = {"base": "tiny", "code": "tiny-code"}
# jbert's output names of each head, as transformers names them too.
OUTPUTS = {
    "base": ("last_hidden_state", "pooler_output"),
    "pretraining": ("prediction_logits", "seq_relationship_logits"),
    "question_answering": ("start_logits", "end_logits"),
}
TEXTS = ["def add(a, b):\n    return a + b\n", "sum two numbers",
         "for i, item in enumerate(items):\n    print(i, item)\n" * 3, "x"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([inspect.getsource(json), inspect.getsource(inspect)], vocab_size=1024)


def _export(tmp_path, layout, head, tokenizer=None, seed=0, **overrides):
    """A self-contained export of params moved off their init (biases are zero there)."""
    vocab = tokenizer.get_vocab_size() if tokenizer is not None else 1024
    config = preset(LAYOUTS[layout], vocab_size=vocab, **overrides)
    params = functional.init_params(config, jax.random.key(seed), head)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
                          params)
    out = save_pretrained(tmp_path / f"{layout}-{head}", config, params, tokenizer, head=head,
                          self_contained=True)
    return config, params, out


def _batch(choices=None, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (3, 11)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = mask[2, 2:] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    if choices:
        ids, mask, types = (np.stack([np.roll(x, c, axis=1) for c in range(choices)], 1)
                            for x in (ids, mask, types))
    return ids, mask, types


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@contextlib.contextmanager
def _no_collection():
    """transformers `ast.parse`s the remote code; on CPython 3.11 a garbage collection inside it
    can run a finalizer that raises (an event loop a checkpointer left behind), whose unraisable
    hook formats a traceback with `ast.parse` again, and the re-entered parser fails the outer one
    with "AST constructor recursion depth mismatch" (python/cpython#106905). Collect first, then
    hold the collector off while the remote code is read."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(out, head):
    auto = getattr(transformers, AUTO_CLASSES[head])
    with _no_collection():
        return auto.from_pretrained(out, trust_remote_code=True).eval()


def _compare(config, params, model, head, choices=None):
    ids, mask, types = _batch(choices)
    want = functional.apply(config, params, ids, mask, types, head=head)
    with torch.no_grad():
        got = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    token_type_ids=torch.from_numpy(types))
    names = OUTPUTS.get(head, ("logits",))
    return max(_max_diff(want[n], got[n].numpy()) for n in names)


@pytest.mark.parametrize("layout", ["base", "code"])
def test_auto_model_and_sentence_transformers_match_jbert(layout, tmp_path, tokenizer):
    from sentence_transformers import SentenceTransformer

    config, params, out = _export(tmp_path, layout, "base", tokenizer)
    assert {p.name for p in out.iterdir()} >= {*SELF_CONTAINED_FILES, "tokenizer.json",
                                               "modules.json", "model.safetensors"}
    model = _load(out, "base")
    assert type(model).__name__ == "JinaBertModel" and model.config.qk_norm == (layout == "code")
    hidden_diff = _compare(config, params, model, "base")
    want = Embedder(config, params, tokenizer, max_length=512).encode(TEXTS)
    encode_diff = _max_diff(model.encode(TEXTS), want)
    with _no_collection():
        st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    st_diff = _max_diff(st.encode(TEXTS, normalize_embeddings=True), want)
    print(f"{layout}: hidden+pooler {hidden_diff:.1e}, encode {encode_diff:.1e}, "
          f"sentence-transformers {st_diff:.1e}")
    assert max(hidden_diff, encode_diff, st_diff) < TOL
    assert model.encode(TEXTS[0]).shape == (config.hidden_size,)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["base", "code"])
@pytest.mark.parametrize("head", [h for h in AUTO_CLASSES if h != "base"])
def test_every_head_loads_with_its_auto_class(layout, head, tmp_path):
    labels = {"num_labels": 3} if head.endswith("_classification") else {}
    config, params, out = _export(tmp_path, layout, head, seed=2, **labels)
    model = _load(out, head)
    diff = _compare(config, params, model, head, choices=2 if head == "multiple_choice" else None)
    print(f"{layout} {head}: {diff:.1e}")
    assert diff < TOL
    # The encoder of any head's export loads as the base model (a fresh pooler where it has none).
    encoder = _load(out, "base")
    ids, mask, types = _batch()
    want = functional.forward(config, params, ids, mask, types)
    with torch.no_grad():
        got = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.from_numpy(types)).last_hidden_state
    if head != "lm_head":  # an LM-head export's config says is_decoder: attention is causal
        assert _max_diff(want, got.numpy()) < TOL


def test_lm_head_is_causal_and_masked_lm_is_not(tmp_path):
    config, params, out = _export(tmp_path, "code", "lm_head", seed=3)
    model = _load(out, "lm_head")
    ids = torch.from_numpy(_batch()[0])
    changed = ids.clone()
    changed[:, -1] = 7
    with torch.no_grad():
        before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    np.testing.assert_array_equal(before[:, :-1].numpy(), after[:, :-1].numpy())
    assert _compare(config, params, model, "lm_head") < TOL


def test_encode_without_tokenizer_files_says_so(tmp_path):
    _, _, out = _export(tmp_path, "base", "base", seed=6)
    model = _load(out, "base")  # loads: nothing reads the tokenizer before `encode`
    with pytest.raises(ValueError, match="encode needs the tokenizer files"):
        model.encode(["def f(): pass"])


def test_config_json_and_round_trip(tmp_path):
    config, params, out = _export(tmp_path, "code", "masked_lm", seed=4)
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "jbert" and hf["qk_norm"] is True
    assert hf["architectures"] == ["JinaBertForMaskedLM"]
    assert hf["auto_map"]["AutoModelForMaskedLM"] == "modeling_jbert.JinaBertForMaskedLM"
    assert not any("jinaai" in v for v in hf["auto_map"].values())
    # The default export keeps jina's released code.
    default = hf_config_dict(config, "masked_lm")
    assert all(v.startswith("jinaai/") for v in default["auto_map"].values())
    assert "model_type" in default and default["model_type"] == "bert"
    loaded_config, loaded = load_pretrained(out, head="masked_lm", attention_block_size=64)
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_what_transformers_saves_again_loads_back_into_jbert(tmp_path):
    """transformers drops `_name_or_path` on save; the layout comes from `qk_norm`."""
    import warnings

    config, params, out = _export(tmp_path, "code", "base", seed=5)
    again = tmp_path / "again"
    _load(out, "base").save_pretrained(again)
    assert json.loads((again / "config.json").read_text())["qk_norm"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded_config, loaded = load_pretrained(again, attention_block_size=64)
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


@pytest.mark.slow  # a fresh interpreter importing JAX
def test_a_self_contained_export_never_imports_torch_in_jbert(tmp_path):
    code = f"""
import sys, jax
from jbert.model import functional
from jbert.model.config import preset
from jbert.hf.save import save_pretrained
config = preset("tiny", num_hidden_layers=1)
save_pretrained({str(tmp_path / "m")!r}, config, functional.init_params(config, jax.random.key(0)),
                self_contained=True)
assert "torch" not in sys.modules and "transformers" not in sys.modules, "jbert imported torch"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "m" / "modeling_jbert.py").read_text().startswith('"""JinaBERT in PyTorch')


@pytest.mark.slow  # sentence-transformers loading remote code
def test_sentence_transformers_prompt_names_match_jbert(tmp_path, tokenizer):
    from sentence_transformers import SentenceTransformer

    config = preset("tiny-code", vocab_size=tokenizer.get_vocab_size())
    params = functional.init_params(config, jax.random.key(7), "base")
    prompts = {"query": "Represent this query for searching relevant code: ", "document": ""}
    out = save_pretrained(tmp_path / "prompted", config, params, tokenizer, head="base",
                          self_contained=True, prompts=prompts, matryoshka_dims=(16, 32))
    settings = json.loads((out / "config_sentence_transformers.json").read_text())
    assert settings["prompts"] == {"query": prompts["query"]}  # empty prompts are left out
    assert settings["default_prompt_name"] is None and settings["matryoshka_dims"] == [32, 16]
    assert "truncate_dim" not in settings  # ST would truncate every encode by default
    jbert_model = Embedder.from_pretrained(out, max_length=512)
    assert jbert_model.prompts == {"query": prompts["query"]}
    assert jbert_model.matryoshka_dims == (32, 16)
    with _no_collection():
        st = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert st.prompts["query"] == prompts["query"]
    want = jbert_model.encode(TEXTS, prompt_name="query")
    got = st.encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    assert _max_diff(got, want) < TOL
    assert _max_diff(want, jbert_model.encode(TEXTS)) > 100 * TOL  # the prompt mattered
    with _no_collection():
        truncated = SentenceTransformer(str(out), trust_remote_code=True, device="cpu",
                                        truncate_dim=16)
    got_16 = truncated.encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    assert _max_diff(got_16, jbert_model.encode(TEXTS, prompt_name="query", dim=16)) < TOL
