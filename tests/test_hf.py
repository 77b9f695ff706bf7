"""jbert.hf.load and jbert.hf.save: the released layouts in and out, checked against an independent
PyTorch twin."""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jbert
from jbert.hf.load import CheckpointError, load_pretrained
from jbert.hf.save import hf_config_dict, save_pretrained
from jbert.model import functional
from jbert.model.config import JinaBertConfig, preset

torch = pytest.importorskip("torch")  # the test extra; the twin needs it

import torch_twin  # noqa: E402  (tests/ is on sys.path under pytest)

# The released jinaai/jina-embeddings-v2-base-code config.json (huggingface.co, revision
# 77fcd9f), and the base-en/small-en one (as text-embeddings-inference's test copy of it, plus
# `attn_implementation`/`torch_dtype` of the later revisions).
RELEASED_CODE = {
    "_name_or_path": "jinaai/jina-bert-v2-qk-post-norm",
    "architectures": ["JinaBertForMaskedLM"],
    "attention_probs_dropout_prob": 0.0,
    "attn_implementation": "torch",
    "auto_map": {
        "AutoConfig": "jinaai/jina-bert-v2-qk-post-norm--configuration_bert.JinaBertConfig",
        "AutoModel": "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertModel",
        "AutoModelForMaskedLM":
            "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertForMaskedLM",
        "AutoModelForSequenceClassification":
            "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertForSequenceClassification",
    },
    "classifier_dropout": None, "emb_pooler": "mean", "feed_forward_type": "geglu",
    "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
    "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 8192, "model_max_length": 8192,
    "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
    "position_embedding_type": "alibi", "torch_dtype": "float16",
    "transformers_version": "4.35.2", "type_vocab_size": 2, "use_cache": True,
    "vocab_size": 61056,
}
RELEASED_BASE = {
    **RELEASED_CODE,
    "_name_or_path": "jinaai/jina-bert-implementation",
    "auto_map": {k: v.replace("jina-bert-v2-qk-post-norm", "jina-bert-implementation")
                 for k, v in RELEASED_CODE["auto_map"].items()},
    "hidden_dropout_prob": 0.1, "torch_dtype": "float32", "vocab_size": 30528,
}
# Tiny shapes, 6 heads (non-power-of-two ALiBi slopes), in the released key set.
TINY = dict(vocab_size=1024, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
            intermediate_size=192)
LAYOUTS = {"base": {**RELEASED_BASE, **TINY}, "code": {**RELEASED_CODE, **TINY}}
TOL = 1e-4


def _batch(seed=0, batch=3, length=13):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, TINY["vocab_size"], (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for row, n in enumerate([length, 7, 2][:batch]):
        mask[row, n:] = 0
        ids[row, n:] = 0
    types = np.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def _twin_out(model, ids, mask, types):
    with torch.no_grad():
        out = model(*(torch.from_numpy(x).long() for x in (ids, mask, types)))
    return tuple(x.numpy() for x in out) if isinstance(out, tuple) else out.numpy()


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("feed_forward", ["original", "glu", "reglu"])
def test_feed_forward_variants_match_the_twin(feed_forward, tmp_path):
    """The base layout with each other feed-forward type gives the twin's hidden states."""
    hf = {**LAYOUTS["base"], "feed_forward_type": feed_forward}
    twin = torch_twin.build(hf, seed=5)
    torch_twin.save_twin(twin, tmp_path, hf)
    config, params = load_pretrained(tmp_path)
    assert config.feed_forward_type == feed_forward
    ids, mask, types = _batch(seed=2)
    diff = _max_diff(jbert.forward(config, params, ids, mask, types),
                     _twin_out(twin, ids, mask, types))
    assert diff < TOL, f"{feed_forward}: {diff:.2e}"


@pytest.mark.parametrize("layout", ["base", "code"])
def test_twin_checkpoint_loads_into_jbert_with_the_same_outputs(layout, tmp_path):
    twin = torch_twin.build(LAYOUTS[layout], seed=1)
    torch_twin.save_twin(twin, tmp_path, LAYOUTS[layout])
    config, params = load_pretrained(tmp_path)
    assert config.qk_norm == (layout == "code")
    ids, mask, types = _batch()
    hidden = np.asarray(jbert.forward(config, params, ids, mask, types))
    want = _twin_out(twin, ids, mask, types)
    assert hidden.shape == want.shape == (3, 13, 96)
    hidden_diff = _max_diff(hidden, want)
    emb = functional.embed(config, params, ids, mask, types)
    emb_diff = _max_diff(emb, torch_twin.mean_pool(torch.from_numpy(want), torch.from_numpy(mask)))
    print(f"{layout}: twin -> jbert hidden {hidden_diff:.2e}, embedding {emb_diff:.2e}")
    assert hidden_diff < TOL and emb_diff < TOL


@pytest.mark.parametrize("layout", ["base", "code"])
def test_twin_masked_lm_loads_into_jbert_with_the_same_logits(layout, tmp_path):
    twin = torch_twin.build(LAYOUTS[layout], "masked_lm", seed=2)
    torch_twin.save_twin(twin, tmp_path, LAYOUTS[layout])
    names = load_file(str(tmp_path / "model.safetensors"))
    assert "cls.predictions.bias" in names and "cls.predictions.decoder.weight" not in names
    config, params = load_pretrained(tmp_path, head="masked_lm")
    ids, mask, types = _batch(seed=3)
    logits = functional.apply(config, params, ids, mask, types, head="masked_lm")["logits"]
    diff = _max_diff(logits, _twin_out(twin, ids, mask, types))
    print(f"{layout}: twin -> jbert MLM logits {diff:.2e}")
    assert diff < TOL
    # The same checkpoint as the base model: the encoder, head tensors skipped, pooler fresh.
    with pytest.warns(UserWarning) as record:
        _, base = load_pretrained(tmp_path)
    text = " ".join(str(w.message) for w in record)
    assert "skipped head tensors" in text and "freshly initialised" in text
    np.testing.assert_array_equal(base["embeddings"]["word_embeddings"]["embedding"],
                                  params["bert"]["embeddings"]["word_embeddings"]["embedding"])


def test_tied_decoder_copies_are_accepted_and_checked(tmp_path):
    twin = torch_twin.build(LAYOUTS["code"], "masked_lm", seed=4)
    torch_twin.save_twin(twin, tmp_path, LAYOUTS["code"], keep_tied=True)
    assert "cls.predictions.decoder.bias" in load_file(str(tmp_path / "model.safetensors"))
    _, params = load_pretrained(tmp_path, head="masked_lm")
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                  twin.cls.predictions.bias.detach().numpy())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.decoder.bias"] + 1
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="cls.predictions.decoder.bias differs"):
        load_pretrained(tmp_path, head="masked_lm")


def _perturbed(params, seed):
    """Params with every leaf moved off its init (biases are zero there, LayerNorms one)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), params)


# What the twin returns for each head, from jbert's outputs.
JBERT_OUTPUTS = {"masked_lm": ("logits",), "lm_head": ("logits",),
                 "pretraining": ("prediction_logits", "seq_relationship_logits"),
                 "question_answering": ("start_logits", "end_logits")}


@pytest.mark.parametrize("layout", ["base", "code"])
@pytest.mark.parametrize("head", ["base", "masked_lm", "pretraining", "lm_head",
                                  "question_answering"])
def test_jbert_export_loads_into_the_twin_with_the_same_outputs(layout, head, tmp_path):
    """The twin reads the released head layout: the decoder bias as its own tensor (zeros when
    missing), causal attention only with `is_decoder: true`."""
    config = preset("tiny-code" if layout == "code" else "tiny")
    ids, mask, types = _batch(seed=5)
    params = _perturbed(functional.init_params(config, jax.random.key(6), head), seed=6)
    out = save_pretrained(tmp_path / head, config, params, head=head)
    twin = torch_twin.load_twin(out, head)
    if head == "base":
        want = (jbert.forward(config, params, ids, mask, types),)
    else:
        result = functional.apply(config, params, ids, mask, types, head=head)
        want = tuple(result[name] for name in JBERT_OUTPUTS[head])
    got = _twin_out(twin, ids, mask, types)
    got = got if isinstance(got, tuple) else (got,)
    diff = max(_max_diff(w, g) for w, g in zip(want, got, strict=True))
    print(f"{layout}: jbert -> twin {head} {diff:.2e}")
    assert diff < TOL
    tensors = load_file(str(out / "model.safetensors"))
    if "cls.predictions.bias" in tensors:
        np.testing.assert_array_equal(tensors["cls.predictions.decoder.bias"],
                                      tensors["cls.predictions.bias"])
    hf = json.loads((out / "config.json").read_text())
    assert hf.get("is_decoder", False) == (head == "lm_head")


def test_heads_with_the_same_tensors_are_not_guessed_and_qa_has_two_outputs(tmp_path):
    config = preset("tiny")
    params = functional.init_params(config, jax.random.key(12), "lm_head")
    with pytest.raises(CheckpointError, match=r"\['masked_lm', 'lm_head'\].*head="):
        save_pretrained(tmp_path / "lm", config, params)
    assert not (tmp_path / "lm").exists()
    save_pretrained(tmp_path / "lm", config, params, head="lm_head")
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["architectures"] == [
        "JinaBertLMHeadModel"]
    # A QA config.json is read with num_labels outputs: jbert refuses any but two.
    with pytest.raises(ValueError, match="num_labels=3: question answering has 2 outputs"):
        functional.init_params(preset("tiny", num_labels=3), jax.random.key(0),
                               "question_answering")
    classifier = functional.init_params(preset("tiny", num_labels=3), jax.random.key(0),
                                        "token_classification")
    save_pretrained(tmp_path / "tok", preset("tiny", num_labels=3), classifier)  # still inferred


def test_an_export_without_tokenizer_still_loads(tmp_path):
    """The released remote model loads the tokenizer from its directory when `emb_pooler` is
    set (the twin too): without tokenizer files the export drops emb_pooler, and says so."""
    from tokenizers import Tokenizer, models

    config = preset("tiny")
    params = functional.init_params(config, jax.random.key(13))
    with pytest.warns(UserWarning, match="emb_pooler=null.*tokenizer="):
        bare = save_pretrained(tmp_path / "bare", config, params)
    assert json.loads((bare / "config.json").read_text())["emb_pooler"] is None
    torch_twin.load_twin(bare)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = save_pretrained(tmp_path / "full", config, params, tokenizer)
    assert json.loads((full / "config.json").read_text())["emb_pooler"] == "mean"
    assert torch_twin.load_twin(full).tokenizer is not None


@pytest.mark.parametrize("name,head", [("tiny", "base"), ("tiny-code", "masked_lm"),
                                       ("tiny", "sequence_classification")])
def test_export_then_import_is_bitwise_identical(name, head, tmp_path):
    config = preset(name, num_labels=3)
    params = functional.init_params(config, jax.random.key(7), head)
    save_pretrained(tmp_path, config, params, head=head)
    # attention_block_size is jbert-only (not in config.json): passed as an override. Without a
    # tokenizer the export has no emb_pooler (test_an_export_without_tokenizer_still_loads).
    loaded_config, loaded = load_pretrained(tmp_path, head=head, attention_block_size=64)
    assert loaded_config == config.replace(emb_pooler=None)
    flat, got = jax.tree.leaves_with_path(params), dict(jax.tree.leaves_with_path(loaded))
    assert len(flat) == len(got)
    for path, value in flat:
        assert got[path].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg=str(path))


def test_save_and_load_are_reachable_where_users_import_them():
    from jbert.evaluation.embedder import Embedder

    assert jbert.save_pretrained is save_pretrained
    assert jbert.load_pretrained is load_pretrained
    assert jbert.Embedder is Embedder
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        jbert.nonsense  # noqa: B018


def test_sharded_safetensors_with_an_index(tmp_path):
    twin = torch_twin.build(LAYOUTS["code"], seed=8)
    torch_twin.save_twin(twin, tmp_path / "single", LAYOUTS["code"])
    tensors = load_file(str(tmp_path / "single" / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (sharded / "config.json").write_text(json.dumps(LAYOUTS["code"]))
    _, single = load_pretrained(tmp_path / "single")
    _, split = load_pretrained(sharded)
    jax.tree.map(np.testing.assert_array_equal, single, split)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_pretrained(sharded)


def _edit_checkpoint(directory, edit):
    tensors = load_file(str(directory / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_errors_name_every_missing_unexpected_and_misshaped_tensor(tmp_path):
    torch_twin.save_twin(torch_twin.build(LAYOUTS["base"]), tmp_path, LAYOUTS["base"])

    def damage(t):
        del t["encoder.layer.1.mlp.wo.bias"], t["embeddings.LayerNorm.weight"]
        t["encoder.layer.0.mlp.extra.weight"] = np.zeros(3, np.float32)
        t["encoder.layer.0.attention.self.query.weight"] = np.zeros((96, 95), np.float32)

    _edit_checkpoint(tmp_path, damage)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tmp_path)
    message = str(err.value)
    for culprit in ("model.safetensors", "2 missing", "encoder.layer.1.mlp.wo.bias",
                    "embeddings.LayerNorm.weight", "1 unexpected",
                    "encoder.layer.0.mlp.extra.weight", "1 mis-shaped",
                    "encoder.layer.0.attention.self.query.weight: checkpoint (96, 95), "
                    "model (96, 96)"):
        assert culprit in message


def test_unknown_layout_pickles_and_bad_config_are_refused(tmp_path):
    torch_twin.save_twin(torch_twin.build(LAYOUTS["base"]), tmp_path, LAYOUTS["base"])
    _edit_checkpoint(tmp_path, lambda t: [t.pop(n) for n in list(t) if ".mlp." in n])
    with pytest.raises(CheckpointError, match="unknown layout"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*pickle"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**LAYOUTS["base"],
                                                      "position_embedding_type": "absolute"}))
    torch_twin.save_twin(torch_twin.build(LAYOUTS["base"]), tmp_path / "abs", LAYOUTS["base"])
    (tmp_path / "abs" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(ValueError, match="position_embedding_type"):
        load_pretrained(tmp_path / "abs")
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="hub"):  # HF_HUB_OFFLINE=1 in conftest
        load_pretrained("jbert-tests/not-a-model")


def test_layout_comes_from_the_tensors_and_a_missing_pooler_is_initialised(tmp_path):
    hf = {k: v for k, v in LAYOUTS["code"].items() if k not in ("auto_map", "_name_or_path")}
    torch_twin.save_twin(torch_twin.build(LAYOUTS["code"]), tmp_path, hf)
    _edit_checkpoint(tmp_path, lambda t: [t.pop(n) for n in list(t) if n.startswith("pooler.")])
    # Prefix the encoder with `bert.`, as task-head checkpoints do.
    _edit_checkpoint(tmp_path, lambda t: t.update({f"bert.{n}": t.pop(n) for n in list(t)}))
    with pytest.warns(UserWarning) as record:
        config, params = load_pretrained(tmp_path)
    text = " ".join(str(w.message) for w in record)
    assert "other JinaBERT layout" in text and "pooler.dense.weight" in text
    assert config.qk_norm and params["pooler"]["dense"]["kernel"].shape == (96, 96)


def test_an_embedding_checkpoint_starts_a_task_head_and_fp16_is_upcast(tmp_path):
    twin = torch_twin.build(LAYOUTS["code"], seed=11).half()  # released base-code is fp16
    torch_twin.save_twin(twin, tmp_path, LAYOUTS["code"])
    with pytest.warns(UserWarning, match="freshly initialised: .*classifier.weight"):
        config, params = load_pretrained(tmp_path, head="sequence_classification")
    kernel = params["bert"]["encoder"]["layer"]["mlp"]["up_gated_layer"]["kernel"][1]
    want = twin.encoder.layer[1].mlp.up_gated_layer.weight.detach().float().numpy().T
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel, want)
    np.testing.assert_array_equal(params["bert"]["pooler"]["dense"]["bias"],
                                  twin.pooler.dense.bias.detach().float().numpy())
    _, bf16 = load_pretrained(tmp_path, param_dtype="bfloat16")
    assert bf16["embeddings"]["word_embeddings"]["embedding"].dtype == jax.numpy.bfloat16


def test_config_json_has_the_released_keys_and_values():
    for name, released in (("base-code", RELEASED_CODE), ("base-en", RELEASED_BASE)):
        written = hf_config_dict(preset(name))
        assert set(written) == set(released), name
        differ = {k for k in released if written[k] != released[k]}
        # jbert writes fp32 weights; the version is the writer's stamp.
        assert differ <= {"torch_dtype", "transformers_version"}, (name, differ)
        assert written["torch_dtype"] == "float32"
        assert JinaBertConfig.from_hf_dict(released) == preset(name)
    classifier = hf_config_dict(preset("tiny", num_labels=5), "token_classification")
    assert classifier["architectures"] == ["JinaBertForTokenClassification"]
    assert classifier["num_labels"] == 5
    assert classifier["auto_map"]["AutoModelForTokenClassification"].endswith(
        "modeling_bert.JinaBertForTokenClassification")


def test_export_writes_the_sentence_transformers_and_tokenizer_files(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "a", "b"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    config = preset("tiny")
    params = functional.init_params(config, jax.random.key(9))
    out = save_pretrained(tmp_path / "m", config, params, tokenizer)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files >= {"config.json", "model.safetensors", "README.md", "modules.json",
                     "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"}
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == 96
    assert json.loads((out / "special_tokens_map.json").read_text())["pad_token"] == "<pad>"
    # A tokenizer directory is copied as it is.
    copy = save_pretrained(tmp_path / "copy", config, params, out)
    assert (copy / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_export_is_atomic_and_never_silently_overwrites(tmp_path):
    config = preset("tiny")
    params = functional.init_params(config, jax.random.key(10))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained(target, config, params)
    with pytest.raises(TypeError, match="tokenizer"):
        save_pretrained(target, config, params, tokenizer=42, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
    assert (target / "keep.txt").read_text() == "mine"
    save_pretrained(target, config, params, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    bad = {**params, "pooler": {}}
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="match no head"):
        save_pretrained(tmp_path / "bad", config, bad)
    assert not (tmp_path / "bad").exists()
