"""Hugging Face checkpoints out: a directory that transformers and sentence-transformers load.

`save_pretrained(path, config, params)` writes what `AutoModel.from_pretrained(path,
trust_remote_code=True)` and `SentenceTransformer(path, trust_remote_code=True)` load: the
official tensor names and orientation in fp32 (the key map of `jbert.hf.keys`), the released
`config.json` keys with `auto_map` for the head, tokenizer files, the sentence-transformers files
for mean pooling, and a model card (`jbert.hf.model_card`). `jbert.training.export` builds on it
to export a training run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jbert.data.atomic import atomic_dir
from jbert.hf.keys import (
    AUTO_CLASSES,
    HEAD_CLASSES,
    SAFETENSORS,
    TOKENIZER_FILES,
    CheckpointError,
    hf_name,
    is_transposed,
    iter_leaves,
    local_dir,
    per_layer_leaves,
)
from jbert.hf.model_card import ModelCard, render_card
from jbert.hf.sparse_head import SPARSE_HEAD_FILE, sparse_head_tensors
from jbert.model.config import JinaBertConfig
from jbert.model.functional import Params, abstract_params
from jbert.model.heads import HEADS

# jbert's own modeling code (package data, never imported by jbert) for self-contained exports.
SELF_CONTAINED_FILES = ("configuration_jbert.py", "modeling_jbert.py")
SELF_CONTAINED_MODEL_TYPE = "jbert"


def to_hf_state_dict(config: JinaBertConfig, params: Params, head: str = "base",
                     dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """jbert params -> {HF name: array} in torch orientation (what `model.safetensors` holds)."""
    expected = dict(iter_leaves(abstract_params(config, head)))
    given = dict(iter_leaves(params))
    if set(given) != set(expected):
        missing = sorted(hf_name(p) for p in set(expected) - set(given))
        extra = sorted(hf_name(p) for p in set(given) - set(expected))
        raise CheckpointError(f"params do not match head {head!r} of this config: missing "
                              f"{missing or 'none'}, unexpected {extra or 'none'}")
    for path, value in given.items():
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            raise ValueError(f"{hf_name(path)} is spread over several hosts; gather it first "
                             "(e.g. with jax.experimental.multihost_utils.process_allgather)")
        if tuple(np.shape(value)) != tuple(expected[path].shape):
            raise CheckpointError(f"{hf_name(path)}: shape {tuple(np.shape(value))}, the config "
                                  f"wants {tuple(expected[path].shape)}")
    out = {}
    for path, array in per_layer_leaves(jax.device_get(params)):
        array = np.asarray(array)
        array = array.T if is_transposed(path) else array
        out[hf_name(path)] = np.ascontiguousarray(array.astype(dtype, copy=False))
    if "cls.predictions.bias" in out:
        # The released checkpoints carry the decoder's bias as its own tensor, equal to
        # `cls.predictions.bias`: jina's remote code reads it and does not re-tie the two.
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].copy()
    return out


def infer_head(config: JinaBertConfig, params: Params) -> str:
    """The head (of `jbert.model.heads.HEADS`) whose parameter tree matches `params`.

    Some heads have the same tensors (masked_lm and lm_head always; sequence_classification
    with num_labels=1 and multiple_choice): params that fit several are refused, naming them.
    """
    given = {path: tuple(np.shape(v)) for path, v in iter_leaves(params)}
    fits = []
    for head in HEADS:
        try:
            tree = abstract_params(config, head)
        except ValueError:  # a head this config cannot build (question answering, num_labels!=2)
            continue
        if {path: tuple(v.shape) for path, v in iter_leaves(tree)} == given:
            fits.append(head)
    if not fits:
        raise CheckpointError("params match no head of this config (compare with "
                              "jbert.model.functional.abstract_params(config, head))")
    if len(fits) > 1:
        raise CheckpointError(f"params fit the heads {fits} alike (the same tensors); pass "
                              f"head= to say which, e.g. head={fits[0]!r}")
    return fits[0]


def hf_config_dict(config: JinaBertConfig, head: str = "base", *,
                   self_contained: bool = False) -> dict[str, Any]:
    """`config.json` for a head: the released keys, `architectures` and `auto_map` for it.

    The released embedding repositories carry the bare encoder's weights under
    `architectures: ["JinaBertForMaskedLM"]`; `AutoModel` goes through `auto_map` and loads the
    encoder either way, so the base model keeps that name and task heads get their own. With
    `self_contained`, `auto_map` names jbert's modeling files in the export directory for every
    Auto class, `model_type` is `jbert` (so that nothing mistakes it for a plain BERT) and
    `qk_norm` names the layout.
    """
    hf = config.to_hf_dict()
    if head not in ("base", "masked_lm"):
        hf["architectures"] = [HEAD_CLASSES[head]]
        module = hf["auto_map"]["AutoModel"].rsplit(".", 1)[0]
        hf["auto_map"].setdefault(AUTO_CLASSES[head], f"{module}.{HEAD_CLASSES[head]}")
    if head == "lm_head":
        hf["is_decoder"] = True  # jbert's LM head is causal; the remote code reads this flag
    if self_contained:
        config_module, model_module = (f.removesuffix(".py") for f in SELF_CONTAINED_FILES)
        hf["auto_map"] = {"AutoConfig": f"{config_module}.JinaBertConfig"} | {
            auto: f"{model_module}.{HEAD_CLASSES[h]}" for h, auto in AUTO_CLASSES.items()}
        hf["architectures"] = [HEAD_CLASSES[head]]
        hf["model_type"] = SELF_CONTAINED_MODEL_TYPE
        hf["qk_norm"] = config.qk_norm
        del hf["attn_implementation"]  # jina's code reads it; transformers 5 refuses "torch"
    return dict(sorted(hf.items()))


def _sentence_transformers_files(config: JinaBertConfig, prompts: Mapping[str, str],
                                 matryoshka_dims: Sequence[int]) -> dict[str, Any]:
    # sentence-transformers reads `prompts` (for `encode(..., prompt_name=)`) and ignores the
    # unknown `matryoshka_dims`, which records the sizes for readers and for jbert's loader.
    # `truncate_dim` is not set: it would make every `encode` truncate by default.
    settings = {"prompts": {k: v for k, v in prompts.items() if v}, "default_prompt_name": None,
                "similarity_fn_name": "cosine"}
    if matryoshka_dims:
        settings["matryoshka_dims"] = sorted({int(d) for d in matryoshka_dims}, reverse=True)
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
        "config_sentence_transformers.json": settings,
    }


def save_pretrained(path: str | os.PathLike, config: JinaBertConfig, params: Params,
                    tokenizer: Any = None, *, head: str | None = None, overwrite: bool = False,
                    base_model: str | None = None, self_contained: bool = False,
                    prompts: Mapping[str, str] | None = None,
                    matryoshka_dims: Sequence[int] = (), card: ModelCard | None = None,
                    sparse_head: tuple[Params, float] | None = None) -> Path:
    """Writes a HF/sentence-transformers checkpoint directory atomically; returns its path.

    `tokenizer` is a `tokenizers.Tokenizer`, a directory holding tokenizer files or a hub id
    (e.g. the repo the weights came from, whose tokenizer files are copied). `head` is
    inferred from the parameter tree when not given. The files are written to a temporary
    sibling and renamed into place; a non-empty `path` is refused unless `overwrite=True`, and
    then replaced only once the new directory is complete.

    By default `auto_map` points at jina's released remote code, as the released checkpoints
    do (it imports under transformers 4.x only). `self_contained=True` writes jbert's own
    modeling code into the directory instead (`modeling_jbert.py`, `configuration_jbert.py`),
    which loads offline with transformers 4.x and 5.x; docs/export.md has the details.

    `prompts` ({"query": ..., "document": ...}: the prefixes the model was trained with; empty
    ones are left out) and `matryoshka_dims` (the smaller sizes it was trained to embed in) go
    into `config_sentence_transformers.json` of a base-model export, where
    `SentenceTransformer.encode(x, prompt_name="query")` and `jbert.Embedder.from_pretrained`
    find them.

    `README.md` is the model card (`jbert.hf.model_card`): with `card`, its facts (recipe,
    evaluation, prompts, Matryoshka sizes); without, what the weights are and how to load them.
    `base_model` is the card's `base_model` when the card names none.

    `sparse_head` (the params of a contrastive run's sparse head and its dense scale, 1 / the
    temperature) is written beside the weights as `sparse_head.safetensors`
    (`jbert.hf.sparse_head`), where `jbert.Embedder.from_pretrained` finds it.
    """
    bad = [d for d in matryoshka_dims if not 1 <= d <= config.hidden_size]
    if bad:
        raise ValueError(f"matryoshka_dims {bad} must be in [1, {config.hidden_size}]")
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
    head = head or infer_head(config, params)
    tensors = to_hf_state_dict(config, params, head)
    # The checks above already refused a directory the caller did not ask to replace.
    with atomic_dir(out, owned=lambda _: True) as tmp:
        from safetensors.numpy import save_file

        # {"format": "pt"}: transformers refuses safetensors files without it.
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        if sparse_head is not None:
            save_file(sparse_head_tensors(*sparse_head), str(tmp / SPARSE_HEAD_FILE),
                      metadata={"format": "pt"})
        hf_config = hf_config_dict(config, head, self_contained=self_contained)
        if tokenizer is None and hf_config["emb_pooler"] is not None and not self_contained:
            # With emb_pooler set, jina's remote model loads the tokenizer from the model
            # directory in its constructor: without tokenizer files AutoModel would fail.
            warnings.warn("save_pretrained without a tokenizer: config.json gets emb_pooler="
                          "null so that AutoModel loads it (no `encode`); pass tokenizer= (a "
                          "tokenizers.Tokenizer, a directory or a hub id) to keep it",
                          stacklevel=2)
            hf_config["emb_pooler"] = None
        files: dict[str, Any] = {"config.json": hf_config}
        if head == "base":
            files.update(_sentence_transformers_files(config, prompts or {}, matryoshka_dims))
        for name, content in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp, config)
        if self_contained:
            code = resources.files("jbert.hf") / "hf_code"
            for name in SELF_CONTAINED_FILES:
                (tmp / name).write_text((code / name).read_text())
        card = card or ModelCard()
        if base_model and not card.base_model:
            card = dataclasses.replace(card, base_model=base_model)
        # The card's usage snippets name the prompts and sizes this export carries.
        if not card.prompts:
            card = dataclasses.replace(card, prompts={k: v for k, v in (prompts or {}).items()
                                                      if v})
        if sparse_head is not None:
            card = dataclasses.replace(card, sparse_head=True)
        if not card.matryoshka_dims:
            card = dataclasses.replace(card, matryoshka_dims=tuple(
                d for d in matryoshka_dims if d < config.hidden_size))
        (tmp / "README.md").write_text(render_card(config, head, card,
                                                   self_contained=self_contained))
    return out


def _write_tokenizer(tokenizer: Any, directory: Path, config: JinaBertConfig) -> None:
    if isinstance(tokenizer, (str, os.PathLike)):
        source = local_dir(tokenizer, None)  # a directory, or the hub repo the model came from
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
