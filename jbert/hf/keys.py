"""The key map between jbert parameter paths and Hugging Face tensor names, and shared file names.

jbert's parameter paths follow the HF module names (see `jbert.model.encoder`), so the map is a
rename: `self_attn` -> `self`, `kernel` -> `weight` (transposed: Flax kernels are [in, out],
torch weights [out, in]), `scale` -> `weight`, `embedding` -> `weight`; the heads keep the encoder
under `bert.`. Both `jbert.hf.load` and `jbert.hf.save` build on this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jbert.data.hub import locate
from jbert.errors import InputError
from jbert.model.config import JinaBertConfig
from jbert.model.functional import abstract_params
from jbert.model.heads import HEADS

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")

# Encoder tensors; everything else in a checkpoint belongs to a head.
ENCODER_ROOTS = ("embeddings.", "encoder.", "pooler.")
# HF ties these to `bert.embeddings.word_embeddings.weight` and `cls.predictions.bias`; its
# safetensors writer drops them, older pickles and other writers keep them.
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


class CheckpointError(InputError):
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


def is_transposed(path: tuple[str | int, ...]) -> bool:
    """Whether the HF tensor is the transpose of the jbert leaf (kernels)."""
    return path[-1] == "kernel"


def iter_leaves(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of every leaf of a nested params dict."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from iter_leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def unflatten(leaves: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, value in leaves.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


# -- the scanned layers: one stacked tree inside jbert, HF's per-layer tensors outside ----------

# Where the stacked layer weights sit ([num_hidden_layers, ...]), under `bert.` in the heads.
STACKED = ("encoder", "layer")


def _stack_axis_at(path: tuple) -> int | None:
    """The position after `encoder.layer` in a parameter path, if it is a stacked weight."""
    for i in range(len(path) - 1):
        if path[i:i + 2] == STACKED:
            return i + 2
    return None


def _layer_slice(leaf: Any, i: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[i]


def per_layer_leaves(tree: Mapping) -> Iterator[tuple[tuple, Any]]:
    """(path, leaf) of every parameter, with the stacked layers split into HF's per-layer paths:
    a leaf [N, ...] at (..., 'encoder', 'layer', *rest) gives (..., 'encoder', 'layer', i, *rest)
    for each i. Works on arrays and on `jax.ShapeDtypeStruct`s."""
    for path, leaf in iter_leaves(tree):
        k = _stack_axis_at(path)
        if k is None:
            yield path, leaf
            continue
        for i in range(leaf.shape[0]):
            yield (*path[:k], i, *path[k:]), _layer_slice(leaf, i)


def stack_layers(leaves: Mapping[tuple, Any]) -> dict:
    """The inverse of `per_layer_leaves`: a nested params dict with the layers stacked again."""
    flat: dict[tuple, Any] = {}
    layers: dict[tuple, dict[int, Any]] = {}
    for path, leaf in leaves.items():
        k = _stack_axis_at(path)
        if k is None:
            flat[path] = leaf
        else:
            layers.setdefault((*path[:k], *path[k + 1:]), {})[path[k]] = leaf
    for path, by_index in layers.items():
        flat[path] = jnp.stack([by_index[i] for i in range(len(by_index))])
    return unflatten(flat)


def hf_shapes(config: JinaBertConfig, head: str = "base") -> dict[str, tuple[int, ...]]:
    """The HF tensor names and (torch-orientation) shapes of a head's parameters."""
    out = {}
    for path, leaf in per_layer_leaves(abstract_params(config, head)):
        shape = tuple(leaf.shape)
        out[hf_name(path)] = shape[::-1] if is_transposed(path) else shape
    return out


def local_dir(path: str | os.PathLike, revision: str | None) -> Path:
    """A local checkpoint directory, or the hub snapshot of an 'owner/name' id."""
    where = locate(path, repo_type="model")  # a missing local path: one line, no hub
    if isinstance(where, Path):
        if where.is_dir():
            return where
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


# The jina remote-code class of each jbert head: the registry's class names are the HF ones.
HEAD_CLASSES = {head: cls.__name__ for head, cls in HEADS.items()}
# The transformers Auto class that loads each head.
AUTO_CLASSES = {
    "base": "AutoModel",
    "pretraining": "AutoModelForPreTraining",
    "masked_lm": "AutoModelForMaskedLM",
    "lm_head": "AutoModelForCausalLM",
    "next_sentence": "AutoModelForNextSentencePrediction",
    "sequence_classification": "AutoModelForSequenceClassification",
    "multiple_choice": "AutoModelForMultipleChoice",
    "token_classification": "AutoModelForTokenClassification",
    "question_answering": "AutoModelForQuestionAnswering",
}
