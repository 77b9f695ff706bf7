"""Memory and step time of each layer remat policy (`model.remat`) at base-code 512 and 8192.

    .venv/bin/python bench/remat_policies.py                  # all policies (about 25 minutes)
    .venv/bin/python bench/remat_policies.py --policies none,full,save_qkv --steps 512=1

Two figures per policy and length:
- **memory**: the recipe's train step (`configs/pretrain_base_code.py`, `:8k` for 8192)
  compiled for `h100x8` by `python -m train.compile --config.model.remat=POLICY` in its own
  process (the GPU compiler is put on the path before JAX starts): peak bytes per GPU;
- **time**: the layers alone on this CPU: forward and backward of two base-code layers under
  `scan` (the encoder, no MLM head, whose vocabulary projection would hide the layers' share)
  at 4x512 and 1x8192, jitted: seconds per step, policies alternating one step each per round
  after a warm-up step, as a ratio to `none` measured in the same run (by default at 512 only:
  a step at 8192 takes minutes here), and XLA's FLOPs of the compiled gradient (the
  recomputation shows there) as a ratio to `none`'s.
Prints a markdown table; `--json` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.common` when run as a file

import jax  # noqa: E402

from bench.common import machine_line, mlm_batch, write_json  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.model.encoder import REMAT_POLICIES  # noqa: E402

GIB = 1 << 30
LENGTHS = {512: ("configs/pretrain_base_code.py", 4), 8192: ("configs/pretrain_base_code.py:8k", 1)}


def compiled_peak(config: str, policy: str, target: str) -> dict:
    """`train.compile`'s report of the recipe with this remat policy (exit 3, does not fit, is
    a figure too)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        run = subprocess.run(
            [sys.executable, "-m", "train.compile", "--config", config, "--target", target,
             f"--config.model.remat={policy}", "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True)
        if run.returncode not in (0, 3):
            raise RuntimeError(f"{config} remat={policy}: {run.stderr[-2000:]}")
        return json.loads(out.read_text())


def cpu_steps(policies: list[str], batch: int, seq: int, steps: int) -> dict[str, dict]:
    """Seconds and XLA FLOPs per gradient of two base-code layers, per policy."""
    ids_BL = jax.numpy.asarray(mlm_batch(preset("base-code").vocab_size, batch, seq)["input_ids"])
    params = functional.init_params(preset("base-code", num_hidden_layers=2), jax.random.key(0),
                                    "base")
    runs = {}
    for policy in policies:
        config = preset("base-code", num_hidden_layers=2, remat=policy)
        grad = jax.jit(jax.grad(lambda p, c=config: jax.numpy.sum(
            functional.forward(c, p, ids_BL) ** 2)))
        flops = grad.lower(params).compile().cost_analysis().get("flops", 0.0)
        if steps:
            jax.block_until_ready(grad(params))  # warm-up
        runs[policy] = {"grad": grad, "flops": flops, "s": []}
    for _ in range(steps):
        for run in runs.values():
            start = time.perf_counter()
            jax.block_until_ready(run["grad"](params))
            run["s"].append(time.perf_counter() - start)
    return {p: {"flops": r["flops"], "seconds": r["s"]} for p, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default=",".join(REMAT_POLICIES))
    parser.add_argument("--lengths", default="512,8192")
    parser.add_argument("--target", default="h100x8")
    parser.add_argument("--steps", default="512=2,8192=0",
                        help="timed CPU steps per policy at each length (0: FLOPs only)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    policies = args.policies.split(",")
    if policies[0] != "none":
        policies = ["none", *(p for p in policies if p != "none")]  # the baseline
    print(machine_line())
    result: dict = {"machine": machine_line(), "args": vars(args), "lengths": {}}
    lines = [f"| policy | length | peak / GPU on {args.target} (GiB) | CPU s/step (2 layers) "
             "| vs none | XLA FLOPs vs none |", "|---|---|---|---|---|---|"]
    steps = {int(k): int(v) for k, v in (x.split("=") for x in args.steps.split(","))}
    for length in (int(x) for x in args.lengths.split(",")):
        config, batch = LENGTHS[length]
        peaks = {p: compiled_peak(config, p, args.target) for p in policies}
        for p, report in peaks.items():
            print(f"  {length} {p}: {report['memory_bytes']['peak'] / GIB:.1f} GiB", flush=True)
        cpu = cpu_steps(policies, batch, length, steps.get(length, 0))
        for p in policies:
            s, base = (statistics.median(cpu[q]["seconds"]) if cpu[q]["seconds"] else None
                       for q in (p, "none"))
            timed = f"{s:.2f} | {s / base:.2f}x" if s else "- | -"
            lines.append(f"| `{p}` | {length} | {peaks[p]['memory_bytes']['peak'] / GIB:.1f}"
                         f"{'' if peaks[p]['fits'] else ' (does not fit)'} | {timed} "
                         f"| {cpu[p]['flops'] / cpu['none']['flops']:.2f}x |")
        result["lengths"][length] = {"peak_bytes": {p: r["memory_bytes"]["peak"]
                                                    for p, r in peaks.items()}, "cpu": cpu}
    print("\n".join(lines))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
