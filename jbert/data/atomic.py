"""Outputs written whole or not at all: built in a temporary sibling, then renamed; and the
refusal to replace an existing output unless asked (`--overwrite`).

An interrupted writer (crash, kill -9, full disk) leaves either the old directory or the new
complete one, plus at worst a hidden `.NAME.tmp-*` sibling; never a mix of both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def replace_dir(tmp: Path, out: Path) -> None:
    """Moves the finished `tmp` to `out`; an old `out` is kept aside until the move succeeded."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "dir")
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "dir", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, owned: Callable[[str], bool]) -> Iterator[Path]:
    """Yields a temporary directory that replaces `out` when the block ends without error.

    `owned(name)` says which entries of an existing `out` this writer made; any other entry
    makes it refuse, so a user's directory is never swapped away by mistake.
    """
    out = Path(out).absolute()
    if out.exists():
        foreign = (sorted(p.name for p in out.iterdir() if not owned(p.name)) if out.is_dir()
                   else [out.name])
        if foreign:
            raise FileExistsError(f"{out} holds entries this writer did not make: "
                                  f"{foreign[:5]}; choose an empty or new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refuse_existing(path: str | os.PathLike, what: str, overwrite: bool,
                    entries: Iterable[str] | None = None) -> None:
    """Raises `FileExistsError` naming `what` (a flag and its value) when `path` holds
    something a writer would replace and `overwrite` (the `--overwrite` flag) is not given: the
    file, a non-empty directory or, with `entries`, any of those names in the directory. Entry
    points call it before any other work, so a refusal writes nothing and costs nothing."""
    out = Path(path)
    if overwrite or not out.exists():
        return
    if out.is_dir():
        found = sorted(p.name for p in out.iterdir() if entries is None or p.name in entries)
        if not found:
            return
        raise FileExistsError(f"{what}: holds {', '.join(found[:5])}"
                              f"{' ...' if len(found) > 5 else ''} already; give --overwrite "
                              "to replace it")
    raise FileExistsError(f"{what}: exists; give --overwrite to replace it")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes a file whole or not at all: a hidden sibling renamed over `path`."""
    out = Path(path).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
