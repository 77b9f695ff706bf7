"""JSON-lines files read with errors that name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """(`"file:line"`, row) for each non-blank line; a line that is not JSON, or a file that is
    not UTF-8, raises ValueError naming where."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
                yield f"{path}:{n}", row
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
