"""The paper recipes compiled for the hardware their docstrings name: the table of
docs/scaling.md.

    .venv/bin/python bench/compile_targets.py                       # every row (about an hour)
    .venv/bin/python bench/compile_targets.py --only h100x8         # the GPU rows (minutes)
    .venv/bin/python bench/compile_targets.py --rows "configs/pretrain_base_code.py=v5p-32"

Each row is `python -m train.compile --config CONFIG --target TARGET --json ...` in its own
process (a base-code compile holds 1-6 GB of host memory, and libtpu keeps some per process);
the JSON reports land in `--out` (default `artifacts/compile/`), and the table is printed as
markdown: per-device peak memory against the device's, fits, the estimated step time and
tokens/s at 40% MFU, the attention kernel and the compile time. Needs the TPU and GPU compilers
in their folders (docs/scaling.md; `bash scripts/test.sh` installs them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30

# (config, target): the hardware each recipe's docstring names.
ROWS = (
    ("configs/pretrain_base_code.py", "h100x8"),
    ("configs/pretrain_base_code.py", "v5p-32"),
    ("configs/pretrain_base_code.py", "v4-32"),
    ("configs/pretrain_base_code.py:8k", "h100x8"),
    ("configs/pretrain_base_code.py:8k", "v5p-32"),
    ("configs/contrastive_base_code.py", "h100x8"),
    ("configs/contrastive_base_code.py", "v4-32"),
    ("configs/contrastive_base_code.py:hardneg", "h100x8"),
    ("configs/contrastive_base_code.py:hardneg", "v4-32"),
    ("configs/contrastive_base_code.py:8k", "h100x8"),
    ("configs/contrastive_base_code.py:8k", "v5p-32"),
)


def row_name(config: str, target: str) -> str:
    """`pretrain_base_code-8k_h100x8` for `configs/pretrain_base_code.py:8k` on h100x8."""
    path, _, arg = config.partition(":")
    return f"{Path(path).stem}{'-' + arg if arg else ''}_{target}"


def table(reports: list[dict]) -> str:
    lines = ["| config | target | mesh | grad_accum / remat | attention | peak / device (GiB) "
             "| device (GiB) | fits (10% headroom) | step at 40% MFU | tokens/s | compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
        attention = ", ".join(sorted(set(v.split(" @ ")[0] for v in r["attention"].values())))
        lines.append(
            f"| `{r['config']}` | {r['target']} | {mesh} | {r['grad_accum']} / {r['remat']} "
            f"| {attention} | {r['memory_bytes']['peak'] / GIB:.1f} "
            f"| {r['device_memory_bytes'] / GIB:.0f} | {'yes' if r['fits'] else '**no**'} "
            f"| {r['step_s']:.2f} s | {r['tokens_per_s'] / 1e3:,.0f}k | {r['compile_s']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="only the rows of this target (e.g. h100x8)")
    parser.add_argument("--rows", help="CONFIG=TARGET,...: these rows instead of the paper's")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "compile"))
    parser.add_argument("--reuse", action="store_true",
                        help="keep reports already in --out instead of compiling again")
    args = parser.parse_args()
    rows = ([tuple(r.split("=")) for r in args.rows.split(",")] if args.rows else ROWS)
    rows = [r for r in rows if not args.only or r[1] == args.only]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for config, target in rows:
        path = out / f"{row_name(config, target)}.json"
        if not (args.reuse and path.exists()):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "train.compile", "--config", config, "--target", target,
                 "--json", str(path)], cwd=ROOT, capture_output=True, text=True)
            if done.returncode not in (0, 3):  # 3: compiled, does not fit
                print(f"{config} on {target}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            print(f"{config} on {target}: {done.stdout.strip().splitlines()[-1]} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        reports.append({**json.loads(path.read_text()), "config": config})
    print(table(reports))


if __name__ == "__main__":
    main()
