"""JSON-lines files read with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from jbert.errors import InputError


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(`"file:line"`, row) for each non-blank line; a line that is not UTF-8 or not JSON raises
    `InputError` naming the file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte "
                                 f"{e.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
            yield f"{path}:{n}", row
