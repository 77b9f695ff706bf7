"""Training recipes: nested frozen dataclasses, Python config files, command-line overrides.

A recipe is a Python file under `configs/` with `get_config(arg: str | None) -> TrainConfig`
(`--config configs/pretrain_tiny.py:fast` passes "fast"). Any field can then be overridden with
`--config.optim.learning_rate=3e-4`; the value is parsed as the field's declared type, and an
unknown key or a value that does not parse is a `ConfigError` that names the key. Entry points
read their input inside `usage_errors()`, which shows such an error as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import os
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jbert.config import JinaBertConfig
from jbert.errors import ConfigError, CorruptCheckpointError, InputError
from jbert.optim import OptimConfig

USER_ERRORS = (InputError, CorruptCheckpointError, FileNotFoundError, FileExistsError)


@contextlib.contextmanager
def usage_errors(*kinds: type[BaseException]) -> Iterator[None]:
    """Ends the program with one `error: ...` line on stderr and exit status 2 (as argparse does)
    when the block raises one of `kinds` (default `USER_ERRORS`: bad input, a corrupt checkpoint,
    a missing/existing path); `JBERT_DEBUG=1` shows the traceback instead. Wrap only the reading
    of user input: a failure later (during training) keeps its traceback, so `train()` is
    wrapped with `InputError` and `CorruptCheckpointError` only (its checks at the start).
    """
    caught = kinds or USER_ERRORS
    try:
        yield
    except caught as e:
        if os.environ.get("JBERT_DEBUG", "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh (data, fsdp, tensor); data=-1 takes all remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the training text comes from and how it is cut into batches.

    `dir` holds what `python -m train.prepare_corpus` writes (corpus/, tokenizer/, pairs/). With
    `prepare_if_missing`, a missing `dir` is built from the running Python's own sources (the
    embedded default), capped at `prepare_max_bytes`.
    """

    dir: str = "artifacts/data"
    prepare_if_missing: bool = False
    prepare_max_bytes: int = 8 << 20
    prepare_vocab_size: int = 4096
    seq_len: int = 512
    batch_size: int = 256  # global rows per step, over all processes and devices
    docs_per_chunk: int = 256
    mask_rate: float = 0.3
    whole_word: bool = True
    # Vocabulary logits only at the first K labelled positions of a row (None: everywhere).
    max_predictions: int | None = None
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    """The contrastive stage (`python -m train.contrastive`); unused by MLM pretraining.

    InfoNCE over the global batch (`data.batch_size` pairs) with temperature `temperature`
    (learned from there when `learn_temperature`), plus the code -> query term when `symmetric`,
    and `hard_negatives` extra documents per pair (from the pairs' `negatives`, else mined with
    BM25). `chunk_size` > 0 embeds the batch in chunks of that many rows (GradCache).
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

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"contrastive.temperature={self.temperature}: must be > 0")
        for key in ("hard_negatives", "chunk_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"contrastive.{key}={getattr(self, key)}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the workdir gets logs and checkpoints."""

    model: JinaBertConfig = JinaBertConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
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
        for key in ("steps", "grad_accum", "log_every", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"config.{key}={getattr(self, key)}: must be >= 1")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"config.on_nonfinite={self.on_nonfinite!r}: must be stop or skip")


def load_config(spec: str) -> TrainConfig:
    """Runs `get_config(arg)` of a config file given as `path.py` or `path.py:arg`."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: no such config file")
    module_spec = importlib.util.spec_from_file_location(f"jbert_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config(arg) function")
    try:
        config = module.get_config(arg or None)
    except (ValueError, TypeError, KeyError) as e:
        # A bad argument, or a config class refusing a field or value the file gives it.
        # Syntax and name errors keep their traceback: it points at the line.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"{path}: {message}") from e
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, "
                          "not TrainConfig")
    return config


def apply_overrides(config: Any, overrides: dict[str, str]) -> Any:
    """`{"optim.learning_rate": "3e-4"}` applied to nested frozen dataclasses."""
    for key, text in overrides.items():
        config = _set(config, key.split("."), text, key)
    return config


def _set(node: Any, parts: list[str], text: str, key: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(node)}
    if parts[0] not in fields:
        close = difflib.get_close_matches(parts[0], fields, n=1)
        section = key[: len(key) - len(".".join(parts))]  # "optim." for "optim.lr"
        suggestion = (f"did you mean {section + close[0]!r}?" if close
                      else f"known: {', '.join(sorted(fields))}")
        raise ConfigError(f"unknown config key {key!r}: {type(node).__name__} has no field "
                          f"{parts[0]!r} ({suggestion})")
    hint = typing.get_type_hints(type(node))[parts[0]]
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {key!r}: {parts[0]!r} is a value, not a "
                              "section")
        value = _set(current, parts[1:], text, key)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"config key {key!r} is a section; set one of its fields")
    else:
        value = parse_value(text, hint, key)
    try:
        return dataclasses.replace(node, **{parts[0]: value})
    except ValueError as e:  # the dataclass's own validation
        raise ConfigError(f"config key {key!r}: {e}") from None


def parse_value(text: str, hint: Any, key: str) -> Any:
    """Parses `text` as `hint` (bool, int, float, str, or an optional of one)."""
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
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key {key!r}: cannot parse {text!r} as {names}")


def parse_cli(argv: list[str]) -> tuple[TrainConfig, list[str]]:
    """`--config FILE[:arg]` plus `--config.a.b=value` overrides; returns the rest of argv."""
    spec, overrides, rest = None, {}, []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            spec = next(args, None)
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            if not sep:
                value = next(args, None)
                if value is None:
                    raise ConfigError(f"--config.{key} needs a value")
            overrides[key] = value
        else:
            rest.append(arg)
    if spec is None:
        raise ConfigError("--config FILE is required (e.g. --config configs/pretrain_tiny.py)")
    return apply_overrides(load_config(spec), overrides), rest


CONFIG_HELP = """\
config:
  --config FILE[:ARG]   the recipe: a Python file with get_config(arg) (see configs/)
  --config.KEY=VALUE    override any field of it, e.g. --config.steps=100
                        --config.optim.learning_rate=3e-4 --config.workdir=runs/try
  --config FILE --help  list every KEY with its type and current value (overrides applied)

Starting the same command again resumes the run in its workdir; JBERT_DEBUG=1 shows the
traceback of an error instead of its one line.
"""


def config_fields(config: Any, prefix: str = "") -> list[str]:
    """`key: type = value` for every field of a nested config, in declaration order."""
    hints = typing.get_type_hints(type(config))
    lines = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            lines += config_fields(value, f"{prefix}{field.name}.")
            continue
        hint = hints[field.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        lines.append(f"{prefix}{field.name}: {kind} = {value!r}")
    return lines


def check_distributed_flags(coordinator: str | None, num_processes: int | None,
                            process_id: int | None) -> None:
    """The multi-host flags fit together: none, `--coordinator auto` alone, or HOST:PORT with a
    process count and this process's index in it."""
    given = num_processes is not None or process_id is not None
    if coordinator is None:
        if given:
            raise ConfigError("--num_processes and --process_id need --coordinator HOST:PORT "
                              "(the address of process 0)")
        return
    if coordinator == "auto":
        if given:
            raise ConfigError("--coordinator auto finds the processes itself: drop "
                              "--num_processes and --process_id, or give --coordinator HOST:PORT")
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator {coordinator!r}: expected HOST:PORT of process 0 "
                          "(e.g. 10.0.0.1:1234) or 'auto'")
    if num_processes is None or process_id is None:
        raise ConfigError("--coordinator needs --num_processes and --process_id")
    if num_processes < 1:
        raise ConfigError(f"--num_processes {num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id {process_id}: must be in 0..{num_processes - 1} for "
                          f"--num_processes {num_processes}")


def parse_training_cli(argv: list[str], description: str | None = None,
                       prog: str | None = None) -> TrainConfig:
    """`parse_cli` plus the multi-host flags of the training entry points; starts
    `jax.distributed` when `--coordinator` is given, before anything touches a device.

    `-h`/`--help` prints the usage (and, with `--config`, the config's keys) and exits 0."""
    import argparse

    from jbert.sharding import initialize_distributed

    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=CONFIG_HELP,
        usage="%(prog)s --config FILE[:ARG] [--config.KEY=VALUE ...] [-h]\n"
              "       [--coordinator HOST:PORT --num_processes N --process_id I]",
        formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="multi-host: the address of process 0, or 'auto' (TPU pods, SLURM)")
    parser.add_argument("--num_processes", type=int, metavar="N", help="multi-host: processes")
    parser.add_argument("--process_id", type=int, metavar="I",
                        help="multi-host: this process, 0..N-1")
    if "-h" in argv or "--help" in argv:
        text = parser.format_help()
        rest = [a for a in argv if a not in ("-h", "--help")]
        if any(a == "--config" or a.startswith("--config=") for a in rest):
            config, _ = parse_cli(rest)
            text += ("\nconfig keys (type = current value), each settable with "
                     "--config.KEY=VALUE:\n  " + "\n  ".join(config_fields(config)) + "\n")
        print(text, end="")
        raise SystemExit(0)
    config, rest = parse_cli(argv)
    args = parser.parse_args(rest)
    check_distributed_flags(args.coordinator, args.num_processes, args.process_id)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    return config


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
        kwargs[name] = from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)
