"""Hugging Face checkpoints in: the reader for the released JinaBERT layouts.

`load_pretrained(path)` reads `config.json` and `model.safetensors` (or sharded safetensors with
`model.safetensors.index.json`) of jina-embeddings-v2-base-en / -small-en (`mlp.gated_layers`
layout) and -base-code (`mlp.up_gated_layer` layout, backbone jina-bert-v2-qk-post-norm) and
returns `(config, params)` for `jbert.model.functional`; the tensor names go through the key
map of `jbert.hf.keys`. Pickle (`.bin`) checkpoints are refused: loading one runs code.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbert.data.hub import locate
from jbert.hf.keys import (
    ENCODER_ROOTS,
    SAFETENSORS,
    SAFETENSORS_INDEX,
    TIED,
    CheckpointError,
    hf_name,
    hf_shapes,
    is_transposed,
    local_dir,
    per_layer_leaves,
    stack_layers,
)
from jbert.model.config import JinaBertConfig
from jbert.model.functional import Params, abstract_params, init_params
from jbert.model.heads import HEADS

# -- reading safetensors --------------------------------------------------------------------


class _Tensors:
    """The tensors of a checkpoint directory by name, read lazily (shapes come from headers)."""

    def __init__(self, directory: Path):
        from safetensors import SafetensorError, safe_open

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
            try:
                f = safe_open(directory / file, framework="np")
            except (SafetensorError, OSError) as e:  # a header that does not cover the file
                raise CheckpointError(f"{directory / file}: not a readable safetensors file "
                                      f"({e}); truncated or damaged, write or fetch it "
                                      "again") from e
            with f:
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
    if head not in HEADS:
        raise KeyError(f"unknown head {head!r}; known: {sorted(HEADS)}")
    directory = local_dir(locate(path, repo_type="model"), revision)
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
        if bare.startswith(ENCODER_ROOTS):
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
    tied = {c: t for c, t in TIED.items() if c in by_canonical and t in expected}
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
        rng = jax.random.key(0) if rng is None else rng
        init = dict(per_layer_leaves(init_params(config, rng, head)))
    dtype = jnp.dtype(config.param_dtype)
    leaves = {}
    for path, _ in per_layer_leaves(abstract_params(config, head)):
        name = hf_name(path)
        if name in fresh:
            leaves[path] = init[path]
            continue
        array = arrays[name]
        array = array.T if is_transposed(path) else array
        leaves[path] = jnp.asarray(np.ascontiguousarray(array), dtype=dtype)
    return stack_layers(leaves)


def load_sentence_transformers_settings(path: str | os.PathLike
                                        ) -> tuple[dict[str, str], tuple[int, ...]]:
    """(prompts by name, Matryoshka sizes) of a local export's
    `config_sentence_transformers.json` (`prompts`, `matryoshka_dims`, as `save_pretrained`
    writes them); none of either without the file."""
    file = Path(path) / "config_sentence_transformers.json"
    if not file.is_file():
        return {}, ()
    try:
        settings = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not JSON ({e})") from e
    prompts = settings.get("prompts") or {}
    dims = settings.get("matryoshka_dims") or ()
    if not (isinstance(prompts, dict) and all(isinstance(v, str) for v in prompts.values())):
        raise CheckpointError(f"{file}: 'prompts' must map names to strings")
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise CheckpointError(f"{file}: 'matryoshka_dims' must list positive integers")
    return dict(prompts), tuple(dims)
