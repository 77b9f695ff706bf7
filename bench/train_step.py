"""Tokens/s of one MLM train step (forward, backward, AdamW): jbert vs the PyTorch twin, on CPU.

    .venv/bin/python bench/train_step.py                       # base-code, 4x512, fp32
    .venv/bin/python bench/train_step.py --preset tiny-code --batch 8 --seq 128 --steps 5
    .venv/bin/python bench/train_step.py --variants jbert,jbert-masked,torch,torch-masked

Variants (run in one process, alternating one step of each per round, after one warm-up step
each, so machine noise hits them alike):
- `jbert`: the library's `train_step` with `mlm_loss_fn`, jitted with donated state and explicit
  shardings on a 1-device mesh exactly as `jbert.training.trainer` does; the attention path the
  config picks (`attention_impl="auto"`). `jbert-reference` / `jbert-blockwise` force a path.
- `jbert-masked`: the same step with a loss that runs the MLM head (transform + tied decoder
  over the 61k vocab) only on the labelled positions, gathered before the head.
- `torch`: tests/torch_twin.py's `JinaBertForMaskedLM`, `torch.optim.AdamW`, gradient clipping
  at 1.0 as jbert's default optimizer; `torch-masked` gathers the labelled positions likewise.

Both use the same batch (ids uniform over the vocab, ~30% of positions masked and labelled) and
two threads (XLA's default on this 2-core machine; `torch.set_num_threads`). A base-code step at
4x512 takes 10-20 s here, so the default is 3 timed steps per variant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bench.common import (
    IGNORE_INDEX,
    add_model_args,
    machine_line,
    mlm_batch,
    peak_rss_gib,
    print_table,
    summary,
    timed,
    twin_module,
    write_json,
)
from jbert.hf.save import to_hf_state_dict
from jbert.model import functional
from jbert.model.config import JinaBertConfig, preset
from jbert.model.encoder import attention_path
from jbert.ops.sharding import batch_sharding, make_mesh
from jbert.tasks.mlm import mlm_loss_fn
from jbert.training.optim import OptimConfig, make_optimizer
from jbert.training.state import init_state, state_shardings
from jbert.training.trainer import jit_train_step

HEAD = "masked_lm"


def masked_loss_fn(config: JinaBertConfig, batch_np: dict):
    """The library's MLM loss with the head only at the labelled positions (data.max_predictions
    set to the most labels any row has, rounded up to 8)."""
    most = int((batch_np["labels"] != IGNORE_INDEX).sum(1).max())
    return mlm_loss_fn(config, max_predictions=-(-most // 8) * 8)


def jbert_step(config: JinaBertConfig, batch_np: dict, loss: str):
    """A closure running one jitted, donated train step, as `jbert.training.trainer` builds it."""
    mesh = make_mesh()
    tx = make_optimizer(OptimConfig(warmup_steps=10), total_steps=1000)
    loss_fn = masked_loss_fn(config, batch_np) if loss == "masked" else mlm_loss_fn(config)
    _, state_sh = state_shardings(mesh, config, HEAD, tx)
    batch_sh = batch_sharding(mesh)
    step_fn = jit_train_step(loss_fn, tx, state_sh, batch_sh)
    state = init_state(mesh, config, HEAD, tx, seed=0)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in batch_np.items()}, batch_sh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step_fn(holder["state"], batch)
        jax.block_until_ready((holder["state"], metrics))
        return float(metrics["loss_sum"] / metrics["count"])

    return run


def torch_step(config: JinaBertConfig, batch_np: dict, loss: str, bf16: bool):
    tw = twin_module()
    model = tw.build(config.to_hf_dict(), head="masked_lm")
    # The parameters `init_state(seed=0)` gives jbert, so both sides compute the same function
    # from the same weights (their step-0 losses agree, up to dropout where the config has it).
    init_key = jax.random.split(jax.random.key(0))[0]
    init = to_hf_state_dict(config, functional.init_params(config, init_key, HEAD), HEAD)
    missing, unexpected = model.load_state_dict(
        {name: torch.from_numpy(np.asarray(x)) for name, x in init.items()}, strict=False)
    if set(missing) - set(tw.TIED) or unexpected:
        raise KeyError(f"twin init: missing {missing}, unexpected {unexpected}")
    model.train()
    params = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": 0.01},
         {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    ids = torch.from_numpy(batch_np["input_ids"]).long()
    mask = torch.from_numpy(batch_np["attention_mask"]).long()
    labels = torch.from_numpy(batch_np["labels"]).long()
    selected = (labels.view(-1) != IGNORE_INDEX).nonzero().squeeze(-1)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if loss == "masked":
                hidden = model.bert(ids, mask).reshape(-1, config.hidden_size)
                logits = model.cls.predictions(hidden[selected])
                value = F.cross_entropy(logits.float(), labels.view(-1)[selected])
            else:
                logits = model(ids, mask)
                value = F.cross_entropy(logits.float().view(-1, config.vocab_size),
                                        labels.view(-1), ignore_index=IGNORE_INDEX)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(value.detach())

    return run


def make_variant(name: str, config: JinaBertConfig, batch_np: dict, dtype: str):
    framework, _, option = name.partition("-")
    if framework == "jbert":
        if option in ("reference", "blockwise", "dpa"):
            return jbert_step(config.replace(dtype=dtype, attention_impl=option), batch_np, "all")
        return jbert_step(config.replace(dtype=dtype), batch_np, option or "all")
    if framework == "torch":
        return torch_step(config, batch_np, option or "all", bf16=dtype == "bfloat16")
    raise ValueError(f"unknown variant {name!r}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="jbert compute dtype (fp32 params); torch autocast bf16")
    p.add_argument("--variants", default="jbert,torch",
                   help="comma list of jbert, jbert-masked, jbert-reference, jbert-blockwise, "
                        "jbert-dpa, torch, torch-masked")
    p.add_argument("--mask-rate", type=float, default=0.3)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    torch.set_num_threads(2)
    config = preset(args.preset)
    if args.layers:
        config = config.replace(num_hidden_layers=args.layers)
    batch_np = mlm_batch(config.vocab_size, args.batch, args.seq, args.mask_rate)
    tokens = args.batch * args.seq
    names = args.variants.split(",")
    print("command: .venv/bin/python bench/train_step.py " + " ".join(sys.argv[1:]))
    print(f"machine: {machine_line()}")
    print(f"model: {args.preset} ({config.num_hidden_layers} layers, {config.hidden_size} hidden, "
          f"vocab {config.vocab_size}), batch {args.batch}x{args.seq}, {args.dtype}, "
          f"attention auto -> {attention_path(config, args.seq)}, "
          f"{int((batch_np['labels'] != IGNORE_INDEX).sum())} labelled positions")

    runs, times = {}, {n: [] for n in names}
    for name in names:  # build and warm up (compile) each variant once
        runs[name] = make_variant(name, config, batch_np, args.dtype)
        first, loss = timed(runs[name])
        print(f"  warm-up {name}: {first:.1f} s (jbert: compile included), loss {loss:.4f}",
              flush=True)
    for round_ in range(args.steps):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            times[name].append(timed(runs[name])[0])
            print(f"  round {round_} {name}: {times[name][-1]:.2f} s", flush=True)

    rows = {n: summary(t, tokens) for n, t in times.items()}
    baseline = "torch" if "torch" in rows else names[0]
    print()
    print_table(rows, baseline)
    print(f"\npeak RSS of the process: {peak_rss_gib():.1f} GiB")
    result = {"args": vars(args), "machine": machine_line(), "rows": rows,
              "times": times}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
