"""The commands the docs show work: every `python -m train.X ...` in README.md, docs/*.md and the
recipes' docstrings (configs/*.py) names an entry point that exists, its parser takes every flag
as written, its `--config FILE[:arg]` loads and each `--config.KEY=VALUE` applies; every config
key the docs name in inline code (`checkpoint.every_steps`) exists. Listed in docs/reliability.md.

A command is parsed by the entry point's own `main` up to its argparse call (nothing after it
runs). One with a placeholder (`FILE`, `N`, `$VAR`) or an elision (`...`) is checked by flag
and key names only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import importlib
import io
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

from jbert.errors import ConfigError
from jbert.training.config import TrainConfig, apply_overrides, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RECIPES = sorted(p for p in (ROOT / "configs").glob("*.py") if not p.name.startswith("_"))

COMMAND = re.compile(r"python -m train\.(\w+)(.*)", re.S)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
FENCE = re.compile(r"^\s*(```|~~~)")
# `FILE`, `N`, `HOST:PORT`, `FILE[:ARG]`: written for the reader to fill in.
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*([:\[\]][A-Z0-9_:\[\]]*)?")
SHELL_END = {"&&", "||", "|", ";", ">", ">>", "2>", "&"}
# A config key in inline code: `checkpoint.every_steps`, `lora.rank=8`, `--config.steps=N`;
# not a file name (`model.safetensors`).
SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                 if dataclasses.is_dataclass(f.default))
KEY_IN_PROSE = re.compile(rf"(?:--config\.([a-z_][a-z0-9_.]*[a-z0-9_])"
                          rf"|((?:{'|'.join(SECTIONS)})(?:\.[a-z_][a-z0-9_]*)+))(=.*)?")
FILE_SUFFIXES = {"py", "json", "jsonl", "md", "safetensors", "txt", "png", "parquet", "bin"}


@dataclasses.dataclass(frozen=True)
class Command:
    where: str  # "docs/results.md:281"
    module: str  # "evaluate" for train.evaluate
    argv: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Nothing to fill in or left out: the whole line must parse."""
        return not any(is_placeholder(a) for a in self.argv)


def is_placeholder(token: str) -> bool:
    value = token.partition("=")[2] if token.startswith("-") else token
    # and a recipe argument's value: `configs/x.py:hardneg,data=DIR`
    values = [value] + [w.partition("=")[2] for w in value.partition(":")[2].split(",")]
    return "..." in token or "$" in token or any(v and PLACEHOLDER.fullmatch(v) for v in values)


def split_args(text: str) -> tuple[str, ...]:
    """Shell words up to a comment or the end of the command; `[optional]` brackets dropped. A
    command cut out of a quoted shell string (`--command '... python -m ...'`) gets its quote
    closed."""
    for closing in ("", "'", '"'):
        try:
            words = shlex.split(text + closing, comments=True)
            break
        except ValueError:
            continue
    else:
        words = text.split()
    args = []
    for word in words:
        if word in SHELL_END:
            break
        word = word.lstrip("[").rstrip("]")
        if word:
            args.append(word)
    return tuple(args)


def _line_commands(text: str, where: str, first_line: int) -> list[Command]:
    """Commands in shell lines (a code block, a docstring's `Run:` lines): `\\` continuations
    joined, one command per line."""
    commands, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        start, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        if m := COMMAND.search(line):
            commands.append(Command(f"{where}:{first_line + start}", m[1], split_args(m[2])))
    return commands


def _inline_commands(text: str, where: str, first_line: int) -> list[Command]:
    """Commands in inline code spans, which may wrap over lines."""
    commands = []
    for span in INLINE.finditer(text):
        if m := COMMAND.search(span[2].replace("\n", " ")):
            line = first_line + text.count("\n", 0, span.start())
            commands.append(Command(f"{where}:{line}", m[1], split_args(m[2])))
    return commands


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with the spans replaced by spaces, newlines kept (line numbers stay right)."""
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            if chars[i] != "\n":
                chars[i] = " "
    return "".join(chars)


def markdown_parts(text: str) -> tuple[list[tuple[str, int]], str]:
    """(code blocks as (text, first line number)), prose with the blocks blanked)."""
    blocks, prose, block, start = [], [], None, 0
    for n, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            if block is None:
                block, start = [], n + 1
            else:
                blocks.append(("\n".join(block), start))
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


def markdown_commands(text: str, where: str) -> list[Command]:
    blocks, prose = markdown_parts(text)
    commands = [c for block, line in blocks for c in _line_commands(block, where, line)]
    return commands + _inline_commands(prose, where, 1)


def docstring_commands(source: str, where: str) -> list[Command]:
    """A recipe's docstring: its inline code spans and its shell lines (`Run:   python -m ...`)."""
    node = ast.parse(source).body[0]
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return []
    text, line = node.value.value, node.lineno
    spans = [m.span() for m in INLINE.finditer(text)]
    return _inline_commands(text, where, line) + _line_commands(_blank(text, spans), where, line)


def prose_keys(text: str, where: str) -> list[tuple[str, str]]:
    """(where, key) of each config key written in inline code (`contrastive.pack=true`)."""
    keys = []
    for span in INLINE.finditer(text):
        line = 1 + text.count("\n", 0, span.start())
        for word in span[2].split():
            m = KEY_IN_PROSE.fullmatch(word)
            if m and (m[1] or m[2].rsplit(".", 1)[1] not in FILE_SUFFIXES):
                keys.append((f"{where}:{line}", m[1] or m[2]))
    return keys


def all_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        commands += markdown_commands(path.read_text(), str(path.relative_to(ROOT)))
    for path in RECIPES:
        commands += docstring_commands(path.read_text(), str(path.relative_to(ROOT)))
    return commands


def all_prose_keys() -> list[tuple[str, str]]:
    keys = []
    for path in DOCS:
        prose = markdown_parts(path.read_text())[1]
        keys += prose_keys(prose, str(path.relative_to(ROOT)))
    return keys


# -- the checks --------------------------------------------------------------------------------


class _Parsed(BaseException):
    """Raised at the end of the entry point's argparse call: nothing after it runs (a
    BaseException, so no `except Exception` in the entry point catches it)."""


def run_parser(module: str, argv: tuple[str, ...]) -> tuple[argparse.ArgumentParser | None,
                                                             str | None]:
    """(the parser, the error or None) of `train.<module>.main(argv)` run up to its argparse
    parse, which is where it stops. The error is what the user would read: argparse's or the
    one-line usage error (a config that does not load, an override that does not apply)."""
    seen: dict[str, argparse.ArgumentParser] = {}
    parse_known_args = argparse.ArgumentParser.parse_known_args

    def parse_and_stop(self, args=None, namespace=None):
        seen["parser"] = self
        namespace, extras = parse_known_args(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed

    stderr = io.StringIO()
    main = importlib.import_module(f"train.{module}").main
    with (mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_and_stop),
          # train.compile would put a compiler on the path for --target: not while testing.
          mock.patch("jbert.training.compile_plugins.target_platform_in", lambda argv: None),
          contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()),
          contextlib.chdir(ROOT)):  # config paths are relative to the repository
        try:
            main(list(argv))
        except _Parsed:
            return seen["parser"], None
        except SystemExit as e:
            lines = [x for x in stderr.getvalue().splitlines() if "error" in x]
            return seen.get("parser"), (lines[-1] if lines else f"exit status {e.code}")
        except Exception as e:  # reported as the command's problem
            return seen.get("parser"), f"{type(e).__name__}: {e}"
    return seen.get("parser"), "main returned without parsing its arguments"


@functools.cache
def parser_of(module: str) -> argparse.ArgumentParser | None:
    """The entry point's parser, caught at its parse (with a recipe, for the training ones)."""
    return run_parser(module, ("--config", "configs/pretrain_tiny.py"))[0]


def takes_config(parser: argparse.ArgumentParser) -> bool:
    """The training entry points say `--config FILE` in their usage."""
    return "--config" in parser.format_usage()


def _spelling(name: str, options: dict) -> str | None:
    """The problem with a flag's name, if any. `--a_b` and `--a-b` are the same flag (the entry
    points accept both); abbreviations, which argparse would take, are not."""
    if name in options or name.replace("_", "-") in options or name.replace("-", "_") in options:
        return None
    known = sorted(o for o in options if o.startswith("--"))
    return f"{name} is not a flag of it (flags: {' '.join(known)})"


def unknown_key(config: object, key: str) -> str | None:
    """Why `key` is no config key (a field path of the nested dataclasses), or None."""
    node = config
    for i, part in enumerate(key.split(".")):
        names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in names:
            section = ".".join(key.split(".")[:i]) or "TrainConfig"
            return f"unknown config key {key!r} ({section} has no field {part!r})"
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        return f"config key {key!r} is a section, not a value"
    return None


def config_problems(argv: tuple[str, ...]) -> list[str]:
    """`--config FILE[:arg]` loads and every `--config.KEY=VALUE` applies to it (names only
    where the file or the value is a placeholder)."""
    problems, spec, overrides = [], None, []
    args = iter(argv)
    for arg in args:
        if arg == "--config":
            spec = next(args, "")
        elif arg.startswith("--config="):
            spec = arg.partition("=")[2]
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config."):].partition("=")
            overrides.append((key, value if sep else next(args, "")))
    config = TrainConfig()
    if spec is None:
        if overrides:
            problems.append("--config.KEY=VALUE without --config FILE")
    elif not is_placeholder(spec):
        try:
            config = load_config(str(ROOT / spec) if not Path(spec).is_absolute() else spec)
        except ConfigError as e:
            problems.append(f"--config {spec}: {e}")
    values = {}
    for key, value in overrides:
        if problem := unknown_key(config, key):
            problems.append(problem)
        elif not is_placeholder(value):
            values[key] = value
    if values and not problems:
        try:  # in order, as `parse_cli` applies them
            apply_overrides(config, values)
        except ConfigError as e:
            problems.append(str(e))
    return problems


def problems(command: Command) -> list[str]:
    """What is wrong with a command as the docs write it (empty: nothing)."""
    if PLACEHOLDER.fullmatch(command.module):  # `python -m train.X` answers `--help`
        return []
    if not (ROOT / "train" / f"{command.module}.py").is_file():
        return [f"no entry point train/{command.module}.py"]
    parser = parser_of(command.module)
    if parser is None:
        return [f"train.{command.module}: no argparse parser found in its main"]
    found = []
    training = takes_config(parser)
    for arg in command.argv:
        if not arg.startswith("-") or arg[1:2].isdigit():
            continue
        name = arg.partition("=")[0]
        if name == "--config" or name.startswith("--config."):
            if not training:
                found.append(f"{name}: train.{command.module} takes no --config")
        elif problem := _spelling(name, parser._option_string_actions):
            found.append(problem)
    if training:
        found += config_problems(command.argv)
    if not found and command.complete and command.argv:
        # The whole line, through the entry point's own parsing (values, required flags).
        if error := run_parser(command.module, command.argv)[1]:
            found.append(error)
    return found


# -- the tests ---------------------------------------------------------------------------------


def test_docs_commands_parse():
    commands = all_commands()
    assert len(commands) > 40, "the extractor lost the docs' commands"
    report = [f"{c.where}: python -m train.{c.module} {shlex.join(c.argv)}\n    {p}"
              for c in commands for p in problems(c)]
    assert not report, "stale commands in the docs:\n" + "\n".join(report)


def test_docs_config_keys_exist():
    keys = all_prose_keys()
    assert len(keys) > 10, "the extractor lost the docs' config keys"
    config = TrainConfig()
    report = [f"{where}: {problem}" for where, key in keys
              if (problem := unknown_key(config, key))]
    assert not report, "config keys in the docs that do not exist:\n" + "\n".join(report)


BAD_DOC = """\
Evaluate with `python -m train.evaluate --model runs/x --pairs p --bm25` (no such flag), or:

```bash
python -m train.pretrain --config configs/pretrain_tiny.py --config.checkpoint.every=5
python -m train.pretrain --config configs/pretrain_tiny.py \\
    --config.steps=many                                     # a value that does not parse
python -m train.export --checkpoint runs/x --out o --self   # an abbreviation
python -m train.contrastive --config configs/no_such_recipe.py
python -m train.nosuch --x 1
python -m train.export --checkpoint runs/x --head base      # --out is required
python -m train.evaluate --model EXPORT --pairs DIR --max_query_len 32
python -m train.contrastive --config configs/contrastive_small.py:hardneg,dta=/tmp/d
```

Saved every `checkpoint.every` steps; `lora.rank=8` and `model.safetensors` are fine.
"""


def test_checker_reports_bad_commands():
    commands = markdown_commands(BAD_DOC, "bad.md")
    assert [(c.where, c.module) for c in commands] == [
        ("bad.md:4", "pretrain"), ("bad.md:5", "pretrain"), ("bad.md:7", "export"),
        ("bad.md:8", "contrastive"), ("bad.md:9", "nosuch"), ("bad.md:10", "export"),
        ("bad.md:11", "evaluate"), ("bad.md:12", "contrastive"), ("bad.md:1", "evaluate")]
    assert commands[1].argv[-1] == "--config.steps=many"  # the continuation line is part of it
    assert not commands[6].complete and commands[0].complete
    found = {c.where: " / ".join(problems(c)) for c in commands}
    assert "--bm25 is not a flag" in found["bad.md:1"]
    assert "unknown config key 'checkpoint.every'" in found["bad.md:4"]
    assert "config key 'steps'" in found["bad.md:5"] and "many" in found["bad.md:5"]
    assert "--self is not a flag" in found["bad.md:7"]
    assert "no_such_recipe.py" in found["bad.md:8"]
    assert "no entry point train/nosuch.py" in found["bad.md:9"]
    assert "--out" in found["bad.md:10"] and "required" in found["bad.md:10"]
    assert "--max_query_len is not a flag" in found["bad.md:11"]
    assert "unknown recipe argument 'dta' (did you mean 'data'?)" in found["bad.md:12"]
    keys = prose_keys(markdown_parts(BAD_DOC)[1], "bad.md")
    assert [k for _, k in keys] == ["checkpoint.every", "lora.rank"]
    assert unknown_key(TrainConfig(), "checkpoint.every") and not unknown_key(TrainConfig(),
                                                                             "lora.rank")


def test_checker_passes_good_commands():
    doc = ("`python -m train.evaluate --model runs/x --pairs p --no-bm25 --max_query_length 32`"
           " and `python -m train.compile --config FILE --target TARGET` and\n```bash\n"
           "python -m train.pretrain --config configs/pretrain_small.py:smoke,data=DIR\n"
           "python -m train.contrastive --config configs/contrastive_small.py:hardneg,data=/d\n"
           "python -m train.contrastive --config configs/contrastive_tiny.py:features \\\n"
           "    --config.contrastive.matryoshka_dims=64,32 --config.lora.rank=4  # a comment\n"
           "srun .venv/bin/python -m train.pretrain --config configs/pretrain_tiny.py \\\n"
           "    [--coordinator HOST:PORT --num_processes N --process_id I]\n```\n")
    commands = markdown_commands(doc, "good.md")
    assert len(commands) == 6 and not commands[0].complete and commands[1].complete
    assert {c.where: problems(c) for c in commands} == {c.where: [] for c in commands}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_docstrings_say_how_to_run_them(path):
    modules = {c.module for c in docstring_commands(path.read_text(), path.name)}
    assert modules & {"pretrain", "contrastive"}, f"{path.name}: no Run: line"
