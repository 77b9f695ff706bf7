"""A retrieval report (`train.evaluate`'s JSON) as lines a person reads: one row per system,
one column per set and the macro average, and the bootstrap intervals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def summary_table(result: Mapping[str, Any], metric: str = "ndcg@10") -> str:
    """`metric` of every system (rows) on every set and macro-averaged (columns)."""
    systems = list(result.get("macro", {}))
    if not systems:
        return ""
    sets = list(result["sets"])
    columns = [*sets, "macro"]
    width = max(len(s) for s in [*systems, metric])
    lines = [f"{metric:<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for system in systems:
        values = [result["sets"][s].get(system, {}).get(metric) for s in sets]
        values.append(result["macro"][system][metric])
        lines.append(f"{system:<{width}}  " + "  ".join(
            f"{'-':>8}" if v is None else f"{v:8.4f}" for v in values))
    return "\n".join(lines)


def interval_lines(intervals: Mapping[str, Any]) -> list[str]:
    """One line per comparison of `intervals` (the report's "intervals" entry)."""
    if not intervals:
        return []
    head = (f"paired bootstrap over queries, macro {intervals['metric']}: difference "
            f"[{intervals['level']:.0%} interval], {intervals['resamples']} resamples, "
            f"seed {intervals['seed']}")
    rows = [f"  {name}: {c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
            + ("" if c["low"] > 0 or c["high"] < 0 else "  (includes 0)")
            for name, c in intervals["comparisons"].items()]
    return [head, *rows]
