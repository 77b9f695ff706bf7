"""Hugging Face checkpoints in and out: the released JinaBERT layouts, exactly.

`load_pretrained(path)` reads `config.json` and `model.safetensors` (or sharded safetensors with
`model.safetensors.index.json`) of jina-embeddings-v2-base-en / -small-en (`mlp.gated_layers`
layout) and -base-code (`mlp.up_gated_layer` layout, backbone jina-bert-v2-qk-post-norm) and
returns `(config, params)` for `jbert.functional`. `save_pretrained(path, config, params)` writes
a directory that `AutoModel.from_pretrained(path, trust_remote_code=True)` and
`SentenceTransformer(path, trust_remote_code=True)` load: the official tensor names and
orientation in fp32, the released `config.json` keys, tokenizer files, the sentence-transformers
files for mean pooling, and a model card.

The key map is a rename of jbert's parameter paths (they follow the HF module names, see
`jbert.model`): `self_attn` -> `self`, `kernel` -> `weight` (transposed: Flax kernels are
[in, out], torch weights [out, in]), `scale` -> `weight`, `embedding` -> `weight`; the heads keep
the encoder under `bert.`. Pickle (`.bin`) checkpoints are refused: loading one runs code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbert.atomic import replace_dir
from jbert.config import JinaBertConfig
from jbert.functional import Params, abstract_params, init_params

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")

# The jina remote-code class of each jbert head (`jbert.heads.HEADS`).
HEAD_CLASSES = {
    "base": "JinaBertModel",
    "pretraining": "JinaBertForPreTraining",
    "masked_lm": "JinaBertForMaskedLM",
    "lm_head": "JinaBertLMHeadModel",
    "next_sentence": "JinaBertForNextSentencePrediction",
    "sequence_classification": "JinaBertForSequenceClassification",
    "multiple_choice": "JinaBertForMultipleChoice",
    "token_classification": "JinaBertForTokenClassification",
    "question_answering": "JinaBertForQuestionAnswering",
}
_AUTO_CLASSES = {
    "pretraining": "AutoModelForPreTraining",
    "lm_head": "AutoModelForCausalLM",
    "next_sentence": "AutoModelForNextSentencePrediction",
    "multiple_choice": "AutoModelForMultipleChoice",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
}
# Encoder tensors; everything else in a checkpoint belongs to a head.
_ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")
# HF ties these to `bert.embeddings.word_embeddings.weight` and `cls.predictions.bias`; its
# safetensors writer drops them, older pickles and other writers keep them.
_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names every culprit."""


# -- the key map ----------------------------------------------------------------------------

_MODULE_RENAME = {"self_attn": "self"}
_LEAF_RENAME = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def hf_name(path: tuple[str | int, ...]) -> str:
    """jbert parameter path -> HF tensor name, e.g. (..., 'self_attn', 'query', 'kernel') ->
    '....attention.self.query.weight'."""
    *modules, leaf = path
    parts = [_MODULE_RENAME.get(p, p) if isinstance(p, str) else str(p) for p in modules]
    return ".".join([*parts, _LEAF_RENAME.get(leaf, leaf)])


def _transposed(path: tuple[str | int, ...]) -> bool:
    return path[-1] == "kernel"


def _flatten(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _unflatten(leaves: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in leaves.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def hf_shapes(config: JinaBertConfig, head: str = "base") -> dict[str, tuple[int, ...]]:
    """The HF tensor names and (torch-orientation) shapes of a head's parameters."""
    out = {}
    for path, leaf in _flatten(abstract_params(config, head)):
        shape = tuple(leaf.shape)
        out[hf_name(path)] = shape[::-1] if _transposed(path) else shape
    return out


def to_hf_state_dict(config: JinaBertConfig, params: Params, head: str = "base",
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """jbert params -> {HF name: array} in torch orientation (what `model.safetensors` holds)."""
    expected = dict(_flatten(abstract_params(config, head)))
    given = dict(_flatten(params))
    if set(given) != set(expected):
        missing = sorted(hf_name(p) for p in set(expected) - set(given))
        extra = sorted(hf_name(p) for p in set(given) - set(expected))
        raise CheckpointError(f"params do not match head {head!r} of this config: missing "
                              f"{missing or 'none'}, unexpected {extra or 'none'}")
    out = {}
    for path, value in given.items():
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            raise ValueError(f"{hf_name(path)} is spread over several hosts; gather it first "
                             "(e.g. with jax.experimental.multihost_utils.process_allgather)")
        array = np.asarray(jax.device_get(value))
        if array.shape != tuple(expected[path].shape):
            raise CheckpointError(f"{hf_name(path)}: shape {array.shape}, the config wants "
                                  f"{tuple(expected[path].shape)}")
        array = array.T if _transposed(path) else array
        out[hf_name(path)] = np.ascontiguousarray(array.astype(dtype, copy=False))
    return out


# -- reading safetensors --------------------------------------------------------------------


class _Tensors:
    """The tensors of a checkpoint directory by name, read lazily (shapes come from headers)."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.directory = directory
        single, index = directory / SAFETENSORS, directory / SAFETENSORS_INDEX
        if index.exists():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index}: no 'weight_map' naming the shards")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (directory / f).exists()]
            if missing:
                raise CheckpointError(f"{index} names shards that are not in {directory}: "
                                      f"{missing}")
        elif single.exists():
            weight_map, files = None, [SAFETENSORS]
        else:
            pickles = sorted(p.name for p in directory.glob("*.bin"))
            hint = (f" It has {pickles}: pickle checkpoints are not loaded (they can run code); "
                    "convert them to safetensors first, e.g. with "
                    "safetensors.torch.save_file(torch.load(path, weights_only=True), ...).")
            raise CheckpointError(f"{directory} has neither {SAFETENSORS} nor "
                                  f"{SAFETENSORS_INDEX}.{hint if pickles else ''}")
        self.location: dict[str, str] = {}
        self.shape: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(directory / file, framework="np") as f:
                for name in f.keys():
                    if name in self.location:
                        raise CheckpointError(f"{name} is in both {self.location[name]} and {file}")
                    self.location[name] = file
                    self.shape[name] = tuple(f.get_slice(name).get_shape())
        if weight_map is not None:
            listed = {n for n, f in weight_map.items() if self.location.get(n) != f}
            if listed:
                raise CheckpointError(f"{index} maps tensors to shards that do not hold them: "
                                      f"{sorted(listed)[:20]}")

    def names(self) -> list[str]:
        return list(self.location)

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.location[name], []).append(name)
        out = {}
        for file, file_names in by_file.items():
            with safe_open(self.directory / file, framework="np") as f:
                for name in file_names:
                    out[name] = f.get_tensor(name)
        return out


# -- import ---------------------------------------------------------------------------------


def _resolve(path: str | os.PathLike, revision: str | None) -> Path:
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") != 1:
        raise FileNotFoundError(f"{path} is not a checkpoint directory (nor a hub id "
                                "'owner/name')")
    from huggingface_hub import snapshot_download  # a dependency of `datasets`

    allow = ["config.json", "*.safetensors", SAFETENSORS_INDEX, *TOKENIZER_FILES,
             "modules.json", "sentence_bert_config.json", "1_Pooling/*"]
    try:
        return Path(snapshot_download(str(path), revision=revision, allow_patterns=allow))
    except Exception as e:  # offline, unknown repo, no access: say both places were tried
        raise FileNotFoundError(f"{path} is not a local directory, and fetching it from the "
                                f"Hugging Face hub failed: {type(e).__name__}: {e}") from e


def _detect_layout(names: list[str]) -> dict[str, Any]:
    """Config fields fixed by the tensor names: which feed-forward the layers carry."""
    if any(".mlp.up_gated_layer." in n for n in names):
        return {"qk_norm": True}
    if any(".mlp.gated_layers." in n for n in names):
        return {"qk_norm": False}
    if any(".intermediate.dense." in n for n in names):
        return {"qk_norm": False, "feed_forward_type": "original"}
    raise CheckpointError(
        "unknown layout: no feed-forward tensors found (looked for encoder.layer.N."
        "mlp.up_gated_layer [jina-embeddings-v2-base-code], mlp.gated_layers [base-en/"
        "small-en] and intermediate.dense); is this a JinaBERT checkpoint?")


def load_pretrained(path: str | os.PathLike, head: str = "base", *, revision: str | None = None,
                    rng: jax.Array | None = None,
                    **config_overrides: Any) -> tuple[JinaBertConfig, Params]:
    """Reads a HF JinaBERT checkpoint (local directory or hub id) into `(config, params)`.

    Accepts tensor names with or without the `bert.` prefix. For `head="base"` the head tensors
    of a task checkpoint are skipped; for a task head, a bare-encoder checkpoint (the released
    embedding models) gets freshly initialised head weights, and a missing pooler is initialised
    too, each with a warning, as HF does. Any other missing, unexpected or mis-shaped tensor is an
    error naming all of them. `config_overrides` replace config fields (`param_dtype`,
    `attention_impl`...); tensors are cast to `param_dtype`.
    """
    from jbert.heads import HEADS

    if head not in HEADS:
        raise KeyError(f"unknown head {head!r}; known: {sorted(HEADS)}")
    directory = _resolve(path, revision)
    config_file = directory / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{directory} has no config.json")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e
    tensors = _Tensors(directory)
    source = tensors.names()
    layout = _detect_layout(source)
    config = JinaBertConfig.from_hf_dict(hf_config, **{**layout, **config_overrides})
    if "qk_norm" not in config_overrides and config.qk_norm != JinaBertConfig.from_hf_dict(
            hf_config).qk_norm:
        warnings.warn(f"{config_file} names the other JinaBERT layout than its tensors; "
                      f"following the tensors (qk_norm={config.qk_norm})", stacklevel=2)
    return config, _load_params(config, head, tensors, rng)


def _load_params(config: JinaBertConfig, head: str, tensors: _Tensors,
                 rng: jax.Array | None) -> Params:
    files = sorted(set(tensors.location.values()))
    where = f"{tensors.directory} ({', '.join(files)})"
    expected = hf_shapes(config, head)
    prefix = "" if head == "base" else "bert."
    # Canonical names: the encoder under `prefix`, the head tensors as they are.
    rename: dict[str, str] = {}
    skipped: list[str] = []
    for name in tensors.names():
        bare = name[len("bert."):] if name.startswith("bert.") else name
        if bare.startswith(_ENCODER_ROOTS):
            canonical = prefix + bare
        elif head == "base":
            skipped.append(name)  # a task head's tensors; the base model has no use for them
            continue
        else:
            canonical = name
        if canonical in rename.values():
            raise CheckpointError(f"{where}: {canonical} appears twice (with and without the "
                                  "'bert.' prefix)")
        rename[name] = canonical
    by_canonical = {c: n for n, c in rename.items()}
    tied = {c: t for c, t in _TIED.items() if c in by_canonical and t in expected}
    if skipped:
        warnings.warn(f"loading the encoder only; skipped head tensors {sorted(skipped)}",
                      stacklevel=3)
    pooler = {n for n in expected if n.startswith(prefix + "pooler.")}
    extra_pooler = {c for c in by_canonical if c.startswith(prefix + "pooler.")} - set(expected)
    if extra_pooler:
        warnings.warn(f"head {head!r} has no pooler; skipped {sorted(extra_pooler)}",
                      stacklevel=3)
    missing = sorted(set(expected) - set(by_canonical))
    unexpected = sorted(set(by_canonical) - set(expected) - set(tied) - extra_pooler)
    head_names = {n for n in expected if not n.startswith("bert.")} if prefix else set()
    fresh = set()
    if set(missing) & pooler == pooler and pooler:
        fresh |= pooler
    if head_names and head_names <= set(missing):
        fresh |= head_names  # a bare encoder checkpoint: the task head starts from scratch
    missing = [n for n in missing if n not in fresh]
    shapes = [f"{n}: checkpoint {tensors.shape[by_canonical[n]]}, model {expected[n]}"
              for n in sorted(set(by_canonical) & set(expected))
              if tensors.shape[by_canonical[n]] != expected[n]]
    shapes += [f"{c}: checkpoint {tensors.shape[by_canonical[c]]}, tied {t} "
               f"{expected[t]}" for c, t in tied.items()
               if tensors.shape[by_canonical[c]] != expected[t]]
    if missing or unexpected or shapes:
        layout = "code (qk_norm)" if config.qk_norm else "base-en/small-en"
        lines = [f"{where} does not fit head {head!r} of the {layout} layout:"]
        for label, names in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", shapes)):
            if names:
                lines.append(f"  {len(names)} {label}: " + ", ".join(names))
        raise CheckpointError("\n".join(lines))
    arrays = tensors.read([by_canonical[n] for n in (set(expected) - fresh) | set(tied)])
    arrays = {rename[n]: a for n, a in arrays.items()}
    for copy, original in tied.items():
        if not np.array_equal(arrays[copy], arrays[original]):
            raise CheckpointError(f"{where}: {copy} differs from {original}; JinaBERT ties them")
    if fresh:
        warnings.warn(f"not in the checkpoint, freshly initialised: {sorted(fresh)}",
                      stacklevel=3)
        init = dict(_flatten(init_params(config, jax.random.key(0) if rng is None else rng,
                                         head)))
    dtype = jnp.dtype(config.param_dtype)
    leaves = {}
    for path, _ in _flatten(abstract_params(config, head)):
        name = hf_name(path)
        if name in fresh:
            leaves[path] = init[path]
            continue
        array = arrays[name]
        array = array.T if _transposed(path) else array
        leaves[path] = jnp.asarray(np.ascontiguousarray(array), dtype=dtype)
    return _unflatten(leaves)


# -- export ---------------------------------------------------------------------------------


def infer_head(config: JinaBertConfig, params: Params) -> str:
    """The first head (in `jbert.heads.HEADS` order) whose parameter tree matches `params`."""
    from jbert.heads import HEADS

    given = {path: tuple(np.shape(v)) for path, v in _flatten(params)}
    for head in HEADS:
        wanted = {path: tuple(v.shape) for path, v in _flatten(abstract_params(config, head))}
        if wanted == given:
            return head
    raise CheckpointError("params match no head of this config (compare with "
                          "jbert.functional.abstract_params(config, head))")


def hf_config_dict(config: JinaBertConfig, head: str = "base") -> dict[str, Any]:
    """`config.json` for a head: the released keys, `architectures` and `auto_map` for it.

    The released embedding repositories carry the bare encoder's weights under
    `architectures: ["JinaBertForMaskedLM"]`; `AutoModel` goes through `auto_map` and loads the
    encoder either way, so the base model keeps that name and task heads get their own.
    """
    hf = config.to_hf_dict()
    if head not in ("base", "masked_lm"):
        hf["architectures"] = [HEAD_CLASSES[head]]
        if head in _AUTO_CLASSES:
            module = hf["auto_map"]["AutoModel"].rsplit(".", 1)[0]
            hf["auto_map"][_AUTO_CLASSES[head]] = f"{module}.{HEAD_CLASSES[head]}"
    return dict(sorted(hf.items()))


def _sentence_transformers_files(config: JinaBertConfig) -> dict[str, Any]:
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
        ],
        "sentence_bert_config.json": {"max_seq_length": config.max_position_embeddings,
                                      "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
        "config_sentence_transformers.json": {"prompts": {}, "default_prompt_name": None,
                                              "similarity_fn_name": "cosine"},
    }


def _model_card(config: JinaBertConfig, head: str, base_model: str | None) -> str:
    layout = ("jina-embeddings-v2-base-code layout (jinaai/jina-bert-v2-qk-post-norm)"
              if config.qk_norm else "jina-embeddings-v2-base-en layout "
              "(jinaai/jina-bert-implementation)")
    front = ["---", "license: apache-2.0", "library_name: sentence-transformers",
             "pipeline_tag: feature-extraction" if head == "base" else f"# head: {head}",
             "tags:", "- sentence-transformers", "- feature-extraction", "- sentence-similarity",
             "- custom_code", "- jbert"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    return "\n".join(front) + f"""

# JinaBERT ({HEAD_CLASSES[head]}), exported by jbert

A JinaBERT encoder ({config.num_hidden_layers} layers, hidden size {config.hidden_size},
{config.num_attention_heads} heads, symmetric ALiBi, {config.max_position_embeddings} positions)
in the {layout}. Weights are fp32 with the official tensor names; the modeling code is Jina AI's,
fetched through `auto_map`, hence `trust_remote_code=True`. Embeddings are the mean of the last
hidden states over real tokens.

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/or/repo", trust_remote_code=True)
embeddings = model.encode(["def add(a, b): return a + b"], normalize_embeddings=True)
```

or in JAX: `config, params = jbert.load_pretrained("path/or/repo")`.
"""


def save_pretrained(path: str | os.PathLike, config: JinaBertConfig, params: Params,
                    tokenizer: Any = None, *, head: str | None = None, overwrite: bool = False,
                    base_model: str | None = None) -> Path:
    """Writes a HF/sentence-transformers checkpoint directory atomically; returns its path.

    `tokenizer` is a `tokenizers.Tokenizer`, a directory holding tokenizer files or a hub id
    (e.g. the repo the weights came from, whose tokenizer files are copied). `head` is
    inferred from the parameter tree when not given. The files are written to a temporary
    sibling and renamed into place; a non-empty `path` is refused unless `overwrite=True`, and
    then replaced only once the new directory is complete.
    """
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
    head = head or infer_head(config, params)
    tensors = to_hf_state_dict(config, params, head)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from safetensors.numpy import save_file

        # {"format": "pt"}: transformers refuses safetensors files without it.
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        files: dict[str, Any] = {"config.json": hf_config_dict(config, head)}
        if head == "base":
            files.update(_sentence_transformers_files(config))
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp, config)
        (tmp / "README.md").write_text(_model_card(config, head, base_model))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_tokenizer(tokenizer: Any, directory: Path, config: JinaBertConfig) -> None:
    if isinstance(tokenizer, (str, os.PathLike)):
        source = _resolve(tokenizer, None)  # a directory, or the hub repo the model came from
        found = [source / f for f in TOKENIZER_FILES if (source / f).is_file()]
        if not found:
            raise FileNotFoundError(f"{source} holds none of the tokenizer files "
                                    f"{TOKENIZER_FILES}")
        for file in found:
            shutil.copy2(file, directory / file.name)
        return
    from tokenizers import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer or a directory, got "
                        f"{type(tokenizer).__name__}")
    from jbert.data.tokenizer import save_tokenizer

    save_tokenizer(tokenizer, directory, model_max_length=config.max_position_embeddings)
