"""Tokens/s of `encode`-style inference (forward, mean pooling, L2): jbert vs the PyTorch twin.

    .venv/bin/python bench/encode.py                              # base-code, 8x512 and 1x4096
    .venv/bin/python bench/encode.py --shapes 1x8192 --variants jbert --steps 2
    .venv/bin/python bench/encode.py --preset tiny-code --shapes 8x128,1x1024

Variants, run in one process, alternating one call of each per round after one warm-up call:
- `jbert`: `jax.jit(functional.embed)` with the attention path the config picks
  (`attention_impl="auto"`: the materialised reference path up to 2 x 512 tokens, blockwise
  beyond); `jbert-reference` / `jbert-blockwise` / `jbert-dpa` force a path.
- `torch`: tests/torch_twin.py's `JinaBertModel` under `torch.no_grad()`, then its
  `mean_pool`; attention materialises the [B, H, L, L] ALiBi bias and scores, as the official
  implementation does, so its memory grows with L^2 (about 4 fp32 copies of B*H*L*L at peak).

Every token is real (no padding), ids uniform over the vocab, two threads for both.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (  # noqa: E402
    machine_line,
    peak_rss_gib,
    print_table,
    summary,
    timed,
    twin_module,
    write_json,
)
from jbert.model import functional  # noqa: E402
from jbert.model.config import JinaBertConfig, preset  # noqa: E402
from jbert.model.encoder import attention_path  # noqa: E402


def jbert_encode(config: JinaBertConfig, ids_BL: np.ndarray):
    params = jax.jit(functools.partial(functional.init_params, config, head="base"))(
        jax.random.key(0))
    embed = jax.jit(functools.partial(functional.embed, config))
    ids, mask = jnp.asarray(ids_BL), jnp.ones(ids_BL.shape, jnp.int32)

    def run():
        return np.asarray(embed(params, ids, mask))

    return run


def torch_encode(config: JinaBertConfig, ids_BL: np.ndarray):
    tw = twin_module()
    model = tw.build(config.to_hf_dict())
    ids = torch.from_numpy(ids_BL).long()
    mask = torch.ones_like(ids)

    def run():
        with torch.no_grad():
            return tw.mean_pool(model(ids, mask), mask).numpy()

    return run


def make_variant(name: str, config: JinaBertConfig, ids_BL: np.ndarray):
    framework, _, option = name.partition("-")
    if framework == "jbert":
        return jbert_encode(config.replace(attention_impl=option or "auto"), ids_BL)
    if framework == "torch":
        return torch_encode(config, ids_BL)
    raise ValueError(f"unknown variant {name!r}")


def bench_shape(config: JinaBertConfig, batch: int, length: int, names: list[str],
                steps: int) -> dict:
    ids_BL = np.random.default_rng(0).integers(5, config.vocab_size, (batch, length), np.int32)
    print(f"\n## {batch}x{length}: jbert attention auto -> {attention_path(config, length)}",
          flush=True)
    runs, times, outputs = {}, {n: [] for n in names}, {}
    for name in names:
        runs[name] = make_variant(name, config, ids_BL)
        first, outputs[name] = timed(runs[name])
        print(f"  warm-up {name}: {first:.1f} s (jbert: compile included)", flush=True)
    for round_ in range(steps):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(timed(runs[name])[0])
            print(f"  round {round_} {name}: {times[name][-1]:.2f} s", flush=True)
    rows = {n: summary(t, batch * length) for n, t in times.items()}
    print()
    print_table(rows, "torch" if "torch" in rows else names[0], unit="call")
    return {"rows": rows, "times": times}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base-code")
    p.add_argument("--shapes", default="8x512,1x4096", help="comma list of BATCHxLENGTH")
    p.add_argument("--steps", type=int, default=3, help="timed calls per variant and shape")
    p.add_argument("--variants", default="jbert,torch",
                   help="comma list of jbert, jbert-reference, jbert-blockwise, jbert-dpa, torch")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(2)
    config = preset(args.preset)
    print("command: .venv/bin/python bench/encode.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    print(f"model: {args.preset} ({config.num_hidden_layers} layers, {config.hidden_size} hidden), "
          "fp32, forward + mean pooling + L2")
    results = {}
    for shape in args.shapes.split(","):
        batch, length = (int(x) for x in shape.split("x"))
        results[shape] = bench_shape(config, batch, length, args.variants.split(","), args.steps)
    print(f"\npeak RSS of the process: {peak_rss_gib():.1f} GiB")
    write_json(args.json, {"args": vars(args), "machine": machine_line(), "shapes": results})
    return results


if __name__ == "__main__":
    main()
