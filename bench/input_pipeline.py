"""Does the MLM stream keep the train step fed? Batches/s produced vs consumed, on one process.

    .venv/bin/python bench/input_pipeline.py                                # pretrain_tiny.py
    .venv/bin/python bench/input_pipeline.py --preset base-code --batch 4 --seq 512 --steps 3

The config's task is built as `python -m train.pretrain` builds it (`jbert.tasks.mlm.mlm_task`:
its data dir, tokenizer, `StreamConfig`, `mlm_loss_fn` with `max_predictions`), and the step as
`jbert.training.trainer.train` jits it (donated state, explicit shardings on a 1-device mesh). Three
measurements, one after the other in one process:
1. produced: batches/s of the grain iterator alone over `--positions` positions (several
   chunks, so the chunk work is timed, not slices of one), after its first batch (whose
   latency, one chunk tokenized, packed and masked, is printed on its own);
2. consumed: steps/s of the jitted step alone, on batches taken from the stream beforehand
   (host-to-device copy included, as the trainer pays it);
3. fed: the trainer's loop (next batch, step, the previous step's metrics fetched) with the
   stream live, and the share of the time spent waiting in `next`.
produced / consumed > 1 means the stream could keep up if it had the cores to itself; the
waiting share of the fed loop says whether prefetch has each batch ready in time, and fed /
consumed what sharing the cores with the stream costs the step.
`--preset`, `--batch` and `--seq` replace the config's model and batch shape
(`max_predictions` scales with `--seq`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.common` when run as a file

import jax  # noqa: E402

from bench.common import cpu_name, write_json  # noqa: E402
from jbert.model.config import preset  # noqa: E402
from jbert.ops.sharding import batch_sharding, make_mesh  # noqa: E402
from jbert.tasks.mlm import mlm_task  # noqa: E402
from jbert.training.config import load_config  # noqa: E402
from jbert.training.optim import make_optimizer  # noqa: E402
from jbert.training.state import init_state, state_shardings  # noqa: E402
from jbert.training.trainer import global_batch, jit_train_step  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/pretrain_tiny.py")
    p.add_argument("--preset", help="replace the config's model by this preset")
    p.add_argument("--batch", type=int, help="replace data.batch_size")
    p.add_argument("--seq", type=int, help="replace data.seq_len")
    p.add_argument("--positions", type=int, default=2_000_000,
                   help="positions (batch x length) timed for 'produced'")
    p.add_argument("--steps", type=int, default=60, help="steps timed for 'consumed' and 'fed'")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    cfg = load_config(args.config)
    data = cfg.data
    if args.seq:
        data = dataclasses.replace(data, seq_len=args.seq, max_predictions=(
            data.max_predictions and -(-data.max_predictions * args.seq // data.seq_len // 8) * 8))
    if args.batch:
        data = dataclasses.replace(data, batch_size=args.batch)
    model = preset(args.preset) if args.preset else cfg.model
    cfg = dataclasses.replace(cfg, model=model, data=data)
    task, facts = mlm_task(cfg)
    positions = data.batch_size * data.seq_len
    num_batches = -(-args.positions // positions)
    print("command: .venv/bin/python bench/input_pipeline.py " + " ".join(sys.argv[1:]))
    print(f"machine: {cpu_name()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"config: {args.config}; model {args.preset or 'the config'} "
          f"({model.num_hidden_layers} layers, {model.hidden_size} hidden, vocab "
          f"{model.vocab_size}); batch {data.batch_size} x {data.seq_len}, docs_per_chunk "
          f"{data.docs_per_chunk}, max_predictions {data.max_predictions}; data "
          f"{facts['data_dir']} ({facts['train_documents']} train documents)")

    # 1. produced
    stream = task.train_data(0, 1, None)
    start = time.perf_counter()
    batches = [next(stream)]
    first = time.perf_counter() - start
    start = time.perf_counter()
    real = 0
    for _ in range(num_batches):
        batches.append(next(stream))
        real += int(batches[-1]["attention_mask"].sum())
    produced_s = time.perf_counter() - start
    stream.close()
    produced = num_batches / produced_s
    fill = real / (num_batches * positions)
    print(f"\nproduced: {produced:.3g} batches/s ({produced * positions:,.0f} positions/s, "
          f"rows {fill:.2%} filled) over {num_batches} batches, {produced_s:.1f} s; first "
          f"batch {first:.2f} s", flush=True)

    # 2. consumed
    mesh = make_mesh()
    tx = make_optimizer(cfg.optim, cfg.steps)
    _, state_sh = state_shardings(mesh, model, task.head, tx)
    batch_sh = batch_sharding(mesh)
    step_fn = jit_train_step(task.loss_fn, tx, state_sh, batch_sh, grad_accum=cfg.grad_accum)
    state = init_state(mesh, model, task.head, tx, cfg.seed)
    start = time.perf_counter()
    state, metrics = step_fn(state, global_batch(batches[0], batch_sh))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(args.steps):
        state, metrics = step_fn(state, global_batch(batches[i % len(batches)], batch_sh))
        jax.device_get(metrics)
    consumed_s = time.perf_counter() - start
    consumed = args.steps / consumed_s
    print(f"consumed: {consumed:.3g} steps/s ({consumed_s / args.steps:.2f} s/step, "
          f"{consumed * positions:,.0f} positions/s) over {args.steps} steps; first step "
          f"(compile) {compile_s:.1f} s", flush=True)
    del batches

    # 3. fed: the trainer's loop, the stream live (a fresh one: its read-ahead starts cold)
    stream = task.train_data(0, 1, None)
    state, metrics = step_fn(state, global_batch(next(stream), batch_sh))
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        local = next(stream)
        waiting += time.perf_counter() - t
        previous = metrics
        state, metrics = step_fn(state, global_batch(local, batch_sh))
        jax.device_get(previous)  # metrics one step late, as the trainer fetches them
    jax.device_get(metrics)
    fed_s = time.perf_counter() - start
    stream.close()
    fed = args.steps / fed_s
    ratio = produced / consumed
    print(f"fed: {fed:.3g} steps/s ({fed_s / args.steps:.2f} s/step) over {args.steps} steps; "
          f"{waiting / fed_s:.1%} of the time waiting for the next batch")
    alone = "outpaces the step" if ratio > 1 else "cannot feed the step"
    waits = waiting / fed_s
    # under 5% of the loop in `next`: the read-ahead had the batch ready nearly every step
    keeps_up = "keeps up" if waits < 0.05 else "falls behind"
    print(f"\nproduced / consumed = {ratio:.3g} (on its own the stream {alone}); prefetch "
          f"{keeps_up} ({waits:.1%} of the fed loop waits for a batch); fed / consumed = "
          f"{fed / consumed:.2f} (the step's speed while the stream shares its cores)")
    result = {"args": vars(args), "machine": cpu_name(), "batch": data.batch_size,
              "seq_len": data.seq_len, "produced_batches_per_s": produced, "fill": fill,
              "first_batch_s": first, "consumed_steps_per_s": consumed, "compile_s": compile_s,
              "fed_steps_per_s": fed, "fed_waiting_fraction": waits,
              "produced_over_consumed": ratio, "fed_over_consumed": fed / consumed}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
