"""Orbax checkpoints of the train state together with the data position.

One checkpoint = `state` (params, optimizer state, step, RNG; restored onto any mesh through
the target shardings) + `data` (the input pipeline's JSON state) + `meta` (config and the
metrics at that step). Saves are asynchronous; a checkpoint counts only once orbax has
committed it, so a run killed mid-save resumes from the previous complete one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from jbert.state import State


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: State, data_state: dict, meta: dict | None = None,
             *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta or {}),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: State) -> tuple[State, dict, dict]:
        """(state on the target shardings, data state, meta) of a committed step."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        return restored["state"], restored["data"], restored["meta"]

    def restore_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters (weights-only initialisation from another run)."""
        target = {"params": abstract_params}
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                self.directory / str(step) / "state",
                args=ocp.args.PyTreeRestore(
                    item=target, partial_restore=True,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
        return restored["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
