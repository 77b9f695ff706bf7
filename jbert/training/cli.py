"""The training entry points' command line: `--config FILE[:arg]`, `--config.KEY=VALUE`
overrides, the multi-host flags and `jax.distributed` start-up, and one-line usage errors."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import typing
from collections.abc import Iterator
from typing import Any

import jax

from jbert.errors import ConfigError, CorruptCheckpointError, InputError
from jbert.training.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    load_recipe,
    recipe_parameters,
    recipe_variants,
    type_name,
)

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose long flags answer to both spellings: a flag registered as
    `--max-query-length` is also read as `--max_query_length` (and the reverse). Every `train/*`
    entry point parses through it, its flags registered with dashes. `--config.KEY` overrides
    are not flags of this parser and keep their underscores."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self.respelt(args), namespace)

    def respelt(self, args: list[str]) -> list[str]:
        """`args` with each long flag in the spelling it was registered with."""
        def key(flag: str) -> str:
            return flag.replace("_", "-")

        known = {key(flag): flag for flag in self._option_string_actions if flag[:2] == "--"}
        out = []
        for i, arg in enumerate(args):
            if arg == "--":  # what follows is positional
                return out + args[i:]
            flag, sep, value = arg.partition("=")
            if flag[:2] == "--" and not flag.startswith("--config"):
                arg = known.get(key(flag), flag) + sep + value
            out.append(arg)
        return out


def positive_int(text: str) -> int:
    """An argparse `type` for counts and lengths: an integer of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return n


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
  --config FILE[:ARG]   the recipe: a Python file with get_config (see configs/); ARG is its
                        variant and typed recipe arguments, e.g. FILE:hardneg,vocab=512
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
        lines.append(f"{prefix}{field.name}: {type_name(hints[field.name])} = {value!r}")
    return lines


def recipe_help(path: str) -> list[str]:
    """The variants and arguments the recipe at `path` declares (`FILE:VARIANT,KEY=VALUE`)."""
    get_config = load_recipe(path)
    variants = recipe_variants(get_config)
    lines = [f"variants: {', '.join(variants)}"] if variants else []
    return lines + [f"{name}: {type_name(hint)} = {default!r}"
                    for name, (hint, default) in recipe_parameters(get_config).items()]


def config_spec(argv: list[str]) -> str | None:
    """The FILE[:ARG] of `--config FILE[:ARG]` in `argv`, if any."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.partition("=")[2]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def check_distributed_flags(coordinator: str | None, num_processes: int | None,
                            process_id: int | None) -> None:
    """The multi-host flags fit together: none, `--coordinator auto` alone, or HOST:PORT with a
    process count and this process's index in it."""
    given = num_processes is not None or process_id is not None
    if coordinator is None:
        if given:
            raise ConfigError("--num-processes and --process-id need --coordinator HOST:PORT "
                              "(the address of process 0)")
        return
    if coordinator == "auto":
        if given:
            raise ConfigError("--coordinator auto finds the processes itself: drop "
                              "--num-processes and --process-id, or give --coordinator HOST:PORT")
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator {coordinator!r}: expected HOST:PORT of process 0 "
                          "(e.g. 10.0.0.1:1234) or 'auto'")
    if num_processes is None or process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id")
    if num_processes < 1:
        raise ConfigError(f"--num-processes {num_processes}: must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id}: must be in 0..{num_processes - 1} for "
                          f"--num-processes {num_processes}")


def help_and_exit(parser: Any, argv: list[str]) -> None:
    """When `argv` asks for `-h`/`--help`: prints the parser's usage (and, with `--config`, the
    config's keys with types and current values, and the recipe's variants and arguments) and
    exits 0."""
    if "-h" not in argv and "--help" not in argv:
        return
    text = parser.format_help()
    rest = [a for a in argv if a not in ("-h", "--help")]
    if (spec := config_spec(rest)) is not None:
        config, _ = parse_cli(rest)
        text += ("\nconfig keys (type = current value), each settable with "
                 "--config.KEY=VALUE:\n  " + "\n  ".join(config_fields(config)) + "\n")
        if recipe := recipe_help(spec.partition(":")[0]):
            text += ("\nrecipe variants and arguments (type = default), as "
                     "--config FILE:VARIANT,KEY=VALUE:\n  " + "\n  ".join(recipe) + "\n")
    print(text, end="")
    raise SystemExit(0)


def parse_training_cli(argv: list[str], description: str | None = None,
                       prog: str | None = None) -> TrainConfig:
    """`parse_cli` plus the multi-host flags of the training entry points; starts
    `jax.distributed` when `--coordinator` is given, before anything touches a device.

    `-h`/`--help` prints the usage (and, with `--config`, the config's keys) and exits 0."""
    parser = ArgumentParser(
        prog=prog, description=description, epilog=CONFIG_HELP,
        usage="%(prog)s --config FILE[:ARG] [--config.KEY=VALUE ...] [-h]\n"
              "       [--coordinator HOST:PORT --num-processes N --process-id I]",
        formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="multi-host: the address of process 0, or 'auto' (TPU pods, SLURM)")
    parser.add_argument("--num-processes", type=int, metavar="N", help="multi-host: processes")
    parser.add_argument("--process-id", type=int, metavar="I",
                        help="multi-host: this process, 0..N-1")
    help_and_exit(parser, argv)
    config, rest = parse_cli(argv)
    args = parser.parse_args(rest)
    check_distributed_flags(args.coordinator, args.num_processes, args.process_id)
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    return config


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """`jax.distributed.initialize` for multi-host runs; a no-op for one process.

    On TPU pods and SLURM/Kubernetes clusters JAX discovers all three by itself: pass
    `coordinator="auto"`.
    """
    if coordinator is None:
        return
    if coordinator != "auto" and (num_processes is None or process_id is None):
        raise ValueError("--coordinator needs --num-processes and --process-id")
    # CPU processes talk through gloo (tests and CPU clusters); GPUs and TPUs ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == "auto":
        jax.distributed.initialize()
        return
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
