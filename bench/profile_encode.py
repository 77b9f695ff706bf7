"""Where the time of an `encode` forward goes: jbert's XLA ops and the export's aten ops, side
by side, at one shape where packing cannot help (every token real).

    .venv/bin/python bench/profile_encode.py                       # base-code, 8x512
    .venv/bin/python bench/profile_encode.py --batch 1 --seq 2048 --top 15

jbert: `jax.jit(functional.embed)` traced once under `jax.profiler`, ops joined with the
compiled HLO as `bench/profile_step.py` does, then summed by the JAX primitive they come from
(`dot_general` is every matmul). PyTorch: jbert's self-contained export (`save_pretrained(...,
self_contained=True)`, the model sentence-transformers runs) under `torch.no_grad()` and
`torch.profiler`, aten self times. Same random weights; two threads each.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import machine_line, timed  # noqa: E402
from bench.profile_step import op_table, op_times  # noqa: E402
from jbert.hf.save import save_pretrained  # noqa: E402
from jbert.model import functional  # noqa: E402
from jbert.model.config import preset  # noqa: E402


def jbert_profile(config, params, ids_BL: np.ndarray
                  ) -> tuple[float, collections.Counter, collections.Counter, dict]:
    embed = jax.jit(functools.partial(functional.embed, config))
    ids, mask = jnp.asarray(ids_BL), jnp.ones(ids_BL.shape, jnp.int32)
    ops = op_table(embed.lower(params, ids, mask).compile().as_text())
    jax.block_until_ready(embed(params, ids, mask))
    seconds, _ = timed(lambda: jax.block_until_ready(embed(params, ids, mask)))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            jax.block_until_ready(embed(params, ids, mask))
        times = op_times(trace_dir, ops)
    by_primitive = collections.Counter()
    for name, us in times.items():
        by_primitive[ops[name][1].rsplit("/", 1)[-1]] += us
    return seconds, by_primitive, times, ops


def torch_profile(config, params, ids_BL: np.ndarray) -> tuple[float, collections.Counter]:
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as tmp:
        export = save_pretrained(Path(tmp) / "export", config, params, self_contained=True)
        model = AutoModel.from_pretrained(str(export), trust_remote_code=True).eval()
    ids = torch.from_numpy(ids_BL).long()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        seconds, _ = timed(lambda: model(input_ids=ids, attention_mask=mask))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(input_ids=ids, attention_mask=mask)
    times = collections.Counter({e.key: e.self_cpu_time_total for e in prof.key_averages()})
    return seconds, times


def print_top(title: str, seconds: float, times: collections.Counter, top: int) -> list:
    total = sum(times.values())
    print(f"\n{title}: {seconds:.2f} s untraced, {total / 1e6:.2f} s in profiled ops\n")
    print("| ms | share | op |\n|---:|---:|---|")
    rows = []
    for name, us in times.most_common(top):
        print(f"| {us / 1e3:.0f} | {us / total:.1%} | {name} |")
        rows.append({"op": name, "ms": us / 1e3, "share": us / total})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base-code")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--layers", type=int, default=None, help="override the preset's layers")
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    config = preset(args.preset)
    if args.layers:
        config = config.replace(num_hidden_layers=args.layers)
    params = functional.init_params(config, jax.random.key(0), "base")
    ids_BL = np.random.default_rng(0).integers(5, config.vocab_size, (args.batch, args.seq),
                                               dtype=np.int32)
    print("command: .venv/bin/python bench/profile_encode.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    print(f"model: {args.preset}, {config.num_hidden_layers} layers, {args.batch}x{args.seq}, "
          f"every token real, fp32")
    jax_s, jax_times, op_us, ops = jbert_profile(config, params, ids_BL)
    result = {"jbert": print_top("jbert (XLA ops by JAX primitive)", jax_s, jax_times, args.top),
              "jbert_s": jax_s}
    total = sum(op_us.values())
    print("\njbert, single XLA ops (fusions are named by their root op)\n")
    print("| ms | share | HLO op | result | JAX op |\n|---:|---:|---|---|---|")
    for name, us in op_us.most_common(args.top):
        print(f"| {us / 1e3:.0f} | {us / total:.1%} | {name} | {ops[name][0]} | {ops[name][1]} |")
    if not args.skip_torch:
        torch_s, torch_times = torch_profile(config, params, ids_BL)
        result["torch"] = print_top("export under torch (aten self time)", torch_s, torch_times,
                                    args.top)
        result["torch_s"] = torch_s
    return result

if __name__ == "__main__":
    main()
