"""A deterministic MLM batch source indexed by (step, global row), for trainer tests.

Each global batch is a pure function of its step, and a process takes its contiguous slice of
rows, so any process count sees the same global batches: the single-process run is the
reference for multi-process runs. `poison_step` makes that step's loss NaN (through `scale`).
"""

from __future__ import annotations

import os
import signal

import numpy as np

from jbert.model.config import preset
from jbert.tasks.mlm import mlm_loss_fn
from jbert.training.config import CheckpointConfig, DataConfig, MeshConfig, TrainConfig
from jbert.training.optim import OptimConfig
from jbert.training.trainer import Task

VOCAB, LENGTH, ROWS = 128, 32, 16


def tiny_config(workdir, steps=6, mesh: MeshConfig | None = None, **kw) -> TrainConfig:
    model = preset("tiny", vocab_size=VOCAB, hidden_size=32, num_attention_heads=2,
                   intermediate_size=64, num_hidden_layers=2, hidden_dropout_prob=0.1)
    return TrainConfig(
        model=model, optim=OptimConfig(learning_rate=3e-3, warmup_steps=2),
        data=DataConfig(seq_len=LENGTH, batch_size=ROWS), mesh=mesh or MeshConfig(),
        checkpoint=CheckpointConfig(every_steps=3, keep=5, async_save=True),
        workdir=str(workdir), steps=steps, log_every=1, eval_every=100, progress=False, **kw)


def global_batch(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    # Zipf-distributed tokens: a model learns the unigram distribution within a few steps.
    zipf = 1.0 / np.arange(1, VOCAB - 4)
    ids = (5 + rng.choice(VOCAB - 5, (ROWS, LENGTH), p=zipf / zipf.sum())).astype(np.int32)
    ids[:, ::2] = np.minimum(ids[:, 1::2] + 1, VOCAB - 1)  # and a neighbour to attend to
    masked = rng.random((ROWS, LENGTH)) < 0.3
    mask = np.ones((ROWS, LENGTH), np.int32)
    mask[::3, 24:] = 0
    masked &= mask.astype(bool)
    return {"input_ids": np.where(masked, 4, ids).astype(np.int32),
            "labels": np.where(masked, ids, -100).astype(np.int32),
            "attention_mask": mask, "segment_ids": mask.copy(),
            "token_type_ids": np.zeros_like(ids)}


class SyntheticBatches:
    def __init__(self, process_index, process_count, state, poison_step=None, sigterm_step=None):
        self.position = 0 if state is None else state["position"]
        self.rows = slice(process_index * ROWS // process_count,
                          (process_index + 1) * ROWS // process_count)
        self.poison_step, self.sigterm_step = poison_step, sigterm_step

    def __next__(self):
        batch = {k: v[self.rows] for k, v in global_batch(self.position).items()}
        self.position += 1
        scale = np.nan if self.position == self.poison_step else 1.0
        batch["scale"] = np.full(batch["input_ids"].shape[:1], scale, np.float32)
        if self.position == self.sigterm_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    def get_state(self):
        return {"position": self.position}


def synthetic_task(cfg: TrainConfig, **data_kw) -> Task:
    mlm = mlm_loss_fn(cfg.model)

    def loss_fn(params, batch, rng):
        batch = dict(batch)
        scale = batch.pop("scale")
        loss_sum, sums = mlm(params, batch, rng)
        return loss_sum * scale[0], {**sums, "loss_sum": sums["loss_sum"] * scale[0]}

    return Task(
        head="masked_lm", loss_fn=loss_fn,
        train_data=lambda pi, pc, state: SyntheticBatches(pi, pc, state, **data_kw),
        eval_data=lambda pi, pc: [
            {**{k: v[pi * ROWS // pc:(pi + 1) * ROWS // pc] for k, v in
                global_batch(10_000).items()},
             "scale": np.ones(ROWS // pc, np.float32)}],
    )


def tiny_model():
    return tiny_config("unused").model


def tiny_lora_cli(data, tmp_path, **overrides) -> tuple[list[str], object, object]:
    """(argv, model config, base export dir) for `train.contrastive` on the tiny recipe's smoke
    run shrunk to a 2-layer model over `data` on a (2, 2, 2) mesh, GradCache chunks of 8 and
    LoRA rank 4 on a fresh base exported in the released layout; `overrides` (config keys) add
    to or replace these."""
    import jax

    from jbert.hf.save import save_pretrained
    from jbert.model import functional
    from jbert.training.cli import parse_training_cli

    keys = {"model.vocab_size": 320, "model.hidden_size": 32, "model.num_hidden_layers": 2,
            "model.num_attention_heads": 2, "model.intermediate_size": 64,
            "data.dir": data, "data.batch_size": 16, "contrastive.chunk_size": 8,
            "contrastive.max_query_length": 16, "contrastive.max_doc_length": 24,
            "workdir": tmp_path / "run", "progress": False, "steps": 4,
            "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "lora.rank": 4} | overrides
    argv = ["--config", "configs/contrastive_tiny.py:smoke"] + [
        f"--config.{k}={v}" for k, v in keys.items()]
    config = parse_training_cli(argv).model
    base = save_pretrained(tmp_path / "base", config,
                           functional.init_params(config, jax.random.key(5), "base"))
    return argv + [f"--config.init_from={base}"], config, base
