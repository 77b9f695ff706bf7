"""Train-step time under XLA:CPU flag settings, as ratios against XLA's defaults.

    .venv/bin/python bench/xla_flags.py                        # base-code, 2 layers, 4x512
    .venv/bin/python bench/xla_flags.py --layers 0 --rounds 2 --steps 2   # all 12 layers

XLA reads its flags once, when a process starts its backend, so each setting runs in its own
subprocess (`bench/train_step.py --variants <variant>`), one per setting per round, the order
reversed every other round so that machine noise falls on all settings alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

from bench.common import ROOT, add_model_args, machine_line, write_json  # noqa: E402

SETTINGS = {
    "xla-default": "",
    "ynnpack-dots-only": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "no-ynnpack": "--xla_cpu_experimental_ynn_fusion_type=",
}


def run_setting(flags: str, args, json_path: str) -> list[float]:
    """Seconds per timed step of one subprocess running the train step under `flags`."""
    cmd = [sys.executable, str(ROOT / "bench" / "train_step.py"), "--preset", args.preset,
           "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
           "--variants", args.variant, "--json", json_path]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    subprocess.run(cmd, env=dict(os.environ, XLA_FLAGS=flags), check=True,
                   stdout=subprocess.DEVNULL)
    with open(json_path) as f:
        return json.load(f)["times"][args.variant]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p, layers=2)
    p.add_argument("--variant", default="jbert-masked", help="a bench/train_step.py variant")
    p.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    print("command: .venv/bin/python bench/xla_flags.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    times = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in list(SETTINGS) if round_ % 2 == 0 else list(SETTINGS)[::-1]:
                step_s = run_setting(SETTINGS[name], args, os.path.join(tmp, f"{name}.json"))
                times[name] += step_s
                print(f"  round {round_} {name}: " + ", ".join(f"{t:.2f}" for t in step_s)
                      + " s/step", flush=True)
    base = statistics.median(times["xla-default"])
    print("\n| setting | XLA_FLAGS | n | s/step median (min-max) | speed vs xla-default |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | `{SETTINGS[name] or '(none)'}` | {len(t)} | {med:.2f} "
              f"({min(t):.2f}-{max(t):.2f}) | {base / med:.2f}x |")
    result = {"args": vars(args), "machine": machine_line(), "settings": SETTINGS, "times": times}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
