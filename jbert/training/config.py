"""Training recipes: nested frozen dataclasses, Python config files, command-line overrides.

A recipe is a Python file under `configs/` with `get_config(variant, *, arguments) -> TrainConfig`:
`--config configs/pretrain_tiny.py:smoke,vocab=512` calls `get_config("smoke", vocab=512)`, the
variant checked against the `Literal` its first parameter lists and each argument against the
keyword-only parameters, parsed by their annotations. A recipe writes its variants as
`replace_paths(config, {"data.batch_size": 64})`. Any field can then be overridden with
`--config.optim.learning_rate=3e-4`; the value is parsed as the field's declared type, and an
unknown key or a value that does not parse is a `ConfigError` that names the key. The command
line around it (`--config`, multi-host flags, one-line errors) is `jbert.training.cli`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from jbert.errors import ConfigError, check_ranges
from jbert.model.config import JinaBertConfig
from jbert.model.lora import LoRAConfig
from jbert.training.optim import OptimConfig

C = TypeVar("C")  # a config dataclass

@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor); data=-1 takes all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        if self.data != -1:
            check_ranges("mesh", self, {"data": ">= 1"})
        check_ranges("mesh", self, {"fsdp": ">= 1", "tensor": ">= 1"})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training text comes from and how it is cut into batches.

    `dir` holds what `python -m train.prepare_corpus` writes (corpus/, tokenizer/, pairs/). With
    `prepare_if_missing`, a missing `dir` is built from the running Python's own sources (the
    embedded default), capped at `prepare_max_bytes` (None: the whole installation), with a
    `prepare_vocab_size` tokenizer that cuts identifiers into words when
    `prepare_split_identifiers` (what retrieval wants: docs/results.md) and folds case when
    `prepare_lowercase` (jbert.data.tokenizer.lowercase_normalizer). A `dir` built with
    another tokenizer than these settings ask for is refused, naming the difference.
    """

    dir: str = "artifacts/data"
    prepare_if_missing: bool = False
    prepare_max_bytes: int | None = 8 << 20
    prepare_vocab_size: int = 4096
    prepare_split_identifiers: bool = False
    prepare_lowercase: bool = False
    seq_len: int = 512
    batch_size: int = 256  # global rows per step, over all processes and devices
    docs_per_chunk: int = 256
    mask_rate: float = 0.3
    whole_word: bool = True
    # Vocabulary logits only at the first K labelled positions of a row (None: everywhere).
    max_predictions: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges("data", self, {
            "prepare_max_bytes": ">= 1", "prepare_vocab_size": ">= 1", "seq_len": ">= 3",
            "batch_size": ">= 1", "docs_per_chunk": ">= 1", "mask_rate": "(0, 1]",
            "max_predictions": ">= 1"})


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """The contrastive stage (`python -m train.contrastive`); unused by MLM pretraining.

    InfoNCE over the global batch (`data.batch_size` pairs) with temperature `temperature`
    (learned from there when `learn_temperature`), plus the code -> query term when `symmetric`,
    and `hard_negatives` extra documents per pair (from the pairs' `negatives`, else mined with
    BM25). `chunk_size` > 0 embeds the batch in chunks of that many rows (GradCache).

    `query_prompt` / `doc_prompt` prefix every query / document in training, evaluation and the
    export (sentence-transformers prompt names "query" and "document"). `matryoshka_dims` sums
    the loss over the leading `d` dimensions of each embedding for each listed `d` (weights
    `matryoshka_weights`, default 1 each). `pack` lays several texts end to end in each row
    (segment ids keep them apart), so one compiled step serves all lengths. `repo_batches`
    fills each batch from neighbouring files of one repository instead of the whole source
    (`jbert.data.pair_batches.repo_order`: harder in-batch negatives). `eval_sets` adds
    named evaluation sets, `name=path` comma-separated: a BEIR-layout directory or a pairs
    file/directory (its test split).

    `teacher` distils a teacher's in-batch scores into the student: a directory of
    `python -m train.teacher_embeddings` holding the teacher's embedding of every training
    text. The loss adds `distill_weight` times KL(p_teacher || p_student) over the candidates
    InfoNCE ranks, p_teacher = softmax(teacher cosines / `distill_temperature`), p_student the
    softmax of InfoNCE's logits (`jbert.tasks.contrastive.distill`); `distill_weight=0` logs
    the KL without training on it.

    `sparse_weight` > 0 adds the sparse head (`jbert.model.heads.SparseTermWeights`: a weight
    per token from its last hidden state, max-pooled into a vocabulary-sized vector per text,
    scored by dot product, so a rare identifier the query shares counts however little the
    dense embedding makes of it) and its own InfoNCE term, at that weight, beside the dense
    one. Evaluation then reports `sparse` and `dense+sparse` (the model's two scores summed,
    the dense one as its logit: cosine / temperature) beside the dense figures, and the export
    carries the head (`sparse_head.safetensors`).
    """

    temperature: float = 0.05
    learn_temperature: bool = False
    symmetric: bool = False
    hard_negatives: int = 0
    chunk_size: int = 0  # rows per GradCache chunk over the global batch; 0: the plain step
    max_query_length: int = 64
    max_doc_length: int = 256
    sources: str = ""  # comma-separated pair dirs/files/hub names; "": <data.dir>/pairs
    eval_pairs: str = ""  # held-out pairs (test split); "": <data.dir>/pairs
    eval_max_pairs: int = 2000  # cap on held-out queries (and so on the corpus) for speed
    export: bool = True  # the final weights as an HF / sentence-transformers dir, workdir/export
    query_prompt: str = ""  # e.g. "Represent this query for searching relevant code: "
    doc_prompt: str = ""
    matryoshka_dims: tuple[int, ...] = ()  # e.g. (256, 128, 64); (): the full size only
    matryoshka_weights: tuple[float, ...] = ()  # one per size; (): 1.0 each
    pack: bool = False
    # Each batch from neighbouring files of one repository: in-batch negatives that share the
    # positive's vocabulary, as the held-out corpus's functions share their repository's
    # (measured worse at the demo's scale: docs/results.md).
    repo_batches: bool = False
    eval_sets: str = ""  # "name=path,name=path": BEIR dirs or pairs, each logged as name/...
    teacher: str = ""  # a teacher-embeddings dir (train.teacher_embeddings); "": no distillation
    # The KL and InfoNCE are both nats per query over the same candidates: equal weight.
    distill_weight: float = 1.0
    # InfoNCE's default temperature: the teacher's cosines on the scale of the student's
    # logits, so the target is about as sharp as what InfoNCE pulls the student toward; at 1.0,
    # cosines in [-1, 1] would give a near-uniform target.
    distill_temperature: float = 0.05
    sparse_weight: float = 0.0  # 0: no sparse head

    @property
    def prompts(self) -> dict[str, str]:
        """The non-empty prompts under their sentence-transformers names ("query", "document")."""
        return {name: text for name, text in (("query", self.query_prompt),
                                              ("document", self.doc_prompt)) if text}

    def __post_init__(self) -> None:
        check_ranges("contrastive", self, {
            "temperature": "> 0", "hard_negatives": ">= 0", "chunk_size": ">= 0",
            "max_query_length": ">= 3", "max_doc_length": ">= 3", "eval_max_pairs": ">= 1",
            "distill_weight": ">= 0", "distill_temperature": "> 0", "sparse_weight": ">= 0"})
        if any(d < 1 for d in self.matryoshka_dims):
            raise ValueError(f"contrastive.matryoshka_dims={self.matryoshka_dims}: sizes must "
                             "be positive")
        if len(set(self.matryoshka_dims)) != len(self.matryoshka_dims):
            raise ValueError(f"contrastive.matryoshka_dims={self.matryoshka_dims}: a size is "
                             "listed twice")
        if self.matryoshka_weights and len(self.matryoshka_weights) != len(
                self.matryoshka_dims):
            raise ValueError(f"contrastive.matryoshka_weights={self.matryoshka_weights}: one "
                             f"weight per size of matryoshka_dims={self.matryoshka_dims}")
        if any(w < 0 for w in self.matryoshka_weights):
            raise ValueError(f"contrastive.matryoshka_weights={self.matryoshka_weights}: "
                             "weights must be >= 0")
        for entry in filter(None, (e.strip() for e in self.eval_sets.split(","))):
            name, _, path = entry.partition("=")
            if not name.strip() or not path.strip() or "/" in name:
                raise ValueError(f"contrastive.eval_sets: {entry!r} is not name=path")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True

    def __post_init__(self) -> None:
        check_ranges("checkpoint", self, {"every_steps": ">= 1", "keep": ">= 1"})


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging beside TensorBoard (`pip install 'jbert[wandb]'`); process 0 only.

    `project` "" keeps it off (wandb is then never imported). The run gets the whole config and
    every scalar record at its step; `name` "" names it after the workdir. Its id is kept in
    `<workdir>/wandb_run_id`, so a run resumed from its checkpoint goes on in the same W&B run.
    `WANDB_MODE` in the environment, when set, wins over `mode`, as W&B users expect.
    """

    project: str = ""
    entity: str = ""  # "": the account's default entity
    name: str = ""  # "": the workdir's name
    mode: str = "online"  # online | offline (synced later with `wandb sync`) | disabled
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb.mode={self.mode!r}: must be online, offline or disabled")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the workdir gets logs and checkpoints."""

    model: JinaBertConfig = JinaBertConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    # rank > 0: train low-rank adapters on the `init_from` weights, which stay frozen
    lora: LoRAConfig = LoRAConfig()
    wandb: WandbConfig = WandbConfig()  # off unless wandb.project is set
    workdir: str = "runs/pretrain"
    steps: int = 1000
    grad_accum: int = 1  # micro-batches per step (scan inside the jitted step)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 4
    init_from: str | None = None  # weights only: an HF export dir or an orbax checkpoint dir
    on_nonfinite: str = "stop"  # stop | skip
    peak_flops_per_device: float | None = None  # for MFU; None: look up by device kind
    progress: bool = True

    def __post_init__(self) -> None:
        check_ranges("config", self, {
            "steps": ">= 1", "grad_accum": ">= 1", "log_every": ">= 1", "eval_every": ">= 1",
            "eval_batches": ">= 0", "peak_flops_per_device": "> 0"})
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"config.on_nonfinite={self.on_nonfinite!r}: must be stop or skip")


def load_config(spec: str) -> TrainConfig:
    """Runs the `get_config` of a recipe given as `path.py`, `path.py:variant` or with recipe
    arguments, `path.py:hardneg,vocab=512` (`recipe_arguments` reads them)."""
    path, _, words = spec.partition(":")
    get_config = load_recipe(path)
    variant, kwargs = recipe_arguments(get_config, words, path)
    try:
        config = get_config(variant, **kwargs)
    except (ValueError, TypeError, KeyError) as e:
        # A bad argument, or a config class refusing a field or value the file gives it.
        # Syntax and name errors keep their traceback: it points at the line.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{path}: {message}") from e
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, "
                          "not TrainConfig")
    return config


def load_recipe(path: str) -> Callable[..., Any]:
    """The `get_config` function of the config file at `path`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such config file")
    module_spec = importlib.util.spec_from_file_location(f"jbert_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:  # one line naming the place; other errors keep their traceback
        raise ConfigError(f"{path}:{e.lineno}: {e.msg}: {(e.text or '').strip()!r}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg) function")
    return module.get_config


def recipe_arguments(get_config: Callable[..., Any], words: str,
                     path: str) -> tuple[str | None, dict[str, Any]]:
    """`"hardneg,vocab=512"` as `get_config`'s arguments: `("hardneg", {"vocab": 512})`.

    A bare word is the variant (one at most), one of those the recipe lists as the `Literal` of
    its first parameter when it lists them. A `key=value` is a recipe argument: one of
    get_config's keyword-only parameters, its value parsed as the parameter's annotation (a
    scalar: the comma separates arguments). Anything else is a `ConfigError` naming the file
    and the word, with a did-you-mean."""
    variant, kwargs = None, {}
    parameters = recipe_parameters(get_config)
    for word in filter(None, (w.strip() for w in words.split(","))):
        name, sep, text = word.partition("=")
        if not sep:
            if variant is not None:
                raise ConfigError(f"{path}: two variants, {variant!r} and {word!r} (one at "
                                  "most; recipe arguments are key=value)")
            variant = word
            continue
        if name not in parameters:
            raise ConfigError(f"{path}: unknown recipe argument {name!r} "
                              f"({did_you_mean(name, parameters)})")
        hint = parameters[name][0]
        try:
            kwargs[name] = parse_value(text, hint, name)
        except ConfigError:
            raise ConfigError(f"{path}: recipe argument {word!r}: cannot parse {text!r} as "
                              f"{type_name(hint)}") from None
    known = recipe_variants(get_config)
    if variant is not None and known is not None and variant not in known:
        raise ConfigError(f"{path}: unknown variant {variant!r} ({did_you_mean(variant, known)})")
    return variant, kwargs


def recipe_variants(get_config: Callable[..., Any]) -> tuple[str, ...] | None:
    """The variants a recipe lists in its first parameter's annotation,
    `variant: Literal["hardneg", "8k"] | None = None`; None when it lists none."""
    first = next(iter(inspect.signature(get_config).parameters.values()), None)
    if first is None or first.kind is first.KEYWORD_ONLY:
        return None
    hint = typing.get_type_hints(get_config).get(first.name)
    options = (typing.get_args(hint)
               if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,))
    names = tuple(name for option in options if typing.get_origin(option) is Literal
                  for name in typing.get_args(option))
    return names or None


def recipe_parameters(get_config: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """`{name: (type, default)}` of a recipe's arguments, get_config's keyword-only
    parameters (an unannotated one is a str)."""
    hints = typing.get_type_hints(get_config)
    return {p.name: (hints.get(p.name, str), p.default)
            for p in inspect.signature(get_config).parameters.values()
            if p.kind is p.KEYWORD_ONLY}


def did_you_mean(name: str, known: typing.Iterable[str], prefix: str = "") -> str:
    """`did you mean 'optim.learning_rate'?` for a misspelt name, else the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"did you mean {prefix + close[0]!r}?"
    return f"known: {', '.join(known)}" if known else "it takes none"


def apply_overrides(config: Any, overrides: dict[str, str]) -> Any:
    """`{"optim.learning_rate": "3e-4"}` (command-line text, parsed as each field's declared type)
    applied to nested frozen dataclasses."""
    for key, text in overrides.items():
        config = _set(config, key.split("."), functools.partial(parse_value, text, key=key), key)
    return config


def replace_paths(config: C, values: dict[str, Any]) -> C:
    """`config` with `{"data.batch_size": 64, "optim.learning_rate": 2e-4}` set: big_vision's
    `config.data.batch_size = 64` for frozen dataclasses, in the order given. Each value is a
    Python value of its field's declared type (`check_value`); an unknown key (with a did-you-mean)
    or a value of the wrong type is a `ConfigError` naming the key."""
    for key, value in values.items():
        config = _set(config, key.split("."), functools.partial(check_value, value, key=key), key)
    return config


def _set(node: Any, parts: list[str], leaf: Callable[[Any], Any], key: str) -> Any:
    """`node` with the field at `parts` set to `leaf(its declared type)`."""
    fields = {f.name: f for f in dataclasses.fields(node)}
    if parts[0] not in fields:
        section = key[: len(key) - len(".".join(parts))]  # "optim." for "optim.lr"
        raise ConfigError(f"unknown config key {key!r}: {type(node).__name__} has no field "
                          f"{parts[0]!r} ({did_you_mean(parts[0], fields, section)})")
    hint = typing.get_type_hints(type(node))[parts[0]]
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {key!r}: {parts[0]!r} is a value, not a "
                              "section")
        value = _set(current, parts[1:], leaf, key)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"config key {key!r} is a section; set one of its fields")
    else:
        value = leaf(hint)
    try:
        return dataclasses.replace(node, **{parts[0]: value})
    except ValueError as e:  # the dataclass's own validation
        raise ConfigError(f"config key {key!r}: {e}") from None


def parse_value(text: str, hint: Any, key: str) -> Any:
    """Parses `text` as `hint` (bool, int, float, str, an optional of one, or a tuple of one:
    comma-separated, `""` for the empty tuple)."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        return tuple(parse_value(p, item, key) for p in parts)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    for option in (o for o in options if o is not type(None)):
        try:
            if option is bool:
                if text.lower() in ("true", "1", "yes"):
                    return True
                if text.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            if option is int:
                return int(text)
            if option is float:
                return float(text)
            if option is str:
                return text
        except ValueError:
            continue
    raise ConfigError(f"config key {key!r}: cannot parse {text!r} as {type_name(hint)}")


def check_value(value: Any, hint: Any, key: str) -> Any:
    """`value` if it fits a field declared `hint`, as `parse_value` would have made it: an int or
    a float for a float field (kept as a float), an int (not a bool) for an int field, a tuple
    of fitting items for a tuple field, None for an optional one. Else a `ConfigError` naming
    `key`."""
    if typing.get_origin(hint) is tuple:
        if isinstance(value, tuple):
            return tuple(check_value(v, typing.get_args(hint)[0], key) for v in value)
    else:
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in options:
            return None
        if type(value) in options:  # exactly: a bool is no int here
            return value
        if type(value) is int and float in options:
            return float(value)
    raise ConfigError(f"config key {key!r}: expects {type_name(hint)}, got "
                      f"{type(value).__name__} {value!r}")


def type_name(hint: Any) -> str:
    """`int`, `float | None`, `tuple[int, ...]`: a field's type as its declaration reads."""
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """The inverse of `dataclasses.asdict` for nested config dataclasses (a run's config.json).

    Keys the dataclass no longer has are an error that names them.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown} in saved config")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)  # JSON gives lists
        kwargs[name] = value
    return cls(**kwargs)
