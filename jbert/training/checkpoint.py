"""Orbax checkpoints of the train state together with the data position.

One checkpoint = `state` (params, optimizer state, step, RNG; restored onto any mesh through
the target shardings) + `data` (the input pipeline's JSON state) + `meta` (config and the
metrics at that step). Saves are asynchronous; a checkpoint counts only once orbax has
committed it, so a run killed mid-save resumes from the previous complete one.

Orbax does not notice flipped bytes in a committed checkpoint (it restores them), so `meta`
also holds a fingerprint of the state (a wrap-around sum of each leaf's bits), checked on
restore, by `restore_latest` and by the weights-only `restore_weights` alike. `restore_latest`
reports an unreadable or mismatching checkpoint by name, moves it aside to
`<directory>.unreadable/` (so neither orbax's garbage collection nor the next save of that step
touches it) and falls back to the previous one.

A checkpoint of another state tree (the model or optimiser config changed since it was saved)
is not corrupt: it is told apart by the saved tree's metadata before anything is read, and
`restore_latest` stops with `StructureMismatchError`, moving nothing.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jbert.errors import ConfigError, CorruptCheckpointError
from jbert.hf.keys import STACKED, iter_leaves, per_layer_leaves, stack_layers, unflatten
from jbert.model.lora import LoRAConfig
from jbert.training.state import State, trained_params

log = logging.getLogger(__name__)


@jax.jit
def _leaf_sums(state: Any) -> list[jax.Array]:
    def leaf_sum(x):
        bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))
        return jnp.sum(bits.astype(jnp.uint32), dtype=jnp.uint32)

    return [leaf_sum(x) for x in jax.tree.leaves(state)]


def fingerprint(state: State) -> list[int]:
    """One uint32 per leaf: the wrap-around sum of its bits (any single flipped word shows)."""
    return [int(x) for x in jax.device_get(_leaf_sums(state))]


def _check_fingerprint(tree: Any, expected: list[int], where: Path, prefix: str = "") -> None:
    bad = [prefix + jax.tree_util.keystr(path) for (path, _), want, got in zip(
        jax.tree_util.tree_leaves_with_path(tree), expected, fingerprint(tree), strict=True)
        if want != got]
    if bad:
        raise CorruptCheckpointError(f"checkpoint {where}: contents differ from what was saved "
                                     f"in {', '.join(bad)}")


def _unreadable(where: Path, error: Exception) -> CorruptCheckpointError:
    first_line = (str(error).splitlines() or [""])[0][:200]
    return CorruptCheckpointError(f"checkpoint {where}: unreadable ({type(error).__name__}: "
                                  f"{first_line})")


Structure = dict[tuple[str, ...], tuple[tuple[int, ...], str]]  # leaf path -> (shape, dtype)


def structure(tree: Any) -> Structure:
    """Shape and dtype of every leaf by path, for abstract states and orbax metadata alike
    (orbax stores list indices and namedtuple fields as dict keys: paths are plain strings)."""
    def name(key) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {tuple(name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def structure_differences(saved: Structure, wanted: Structure) -> list[str]:
    """What differs between a checkpoint's tree and the one asked for, parameters first."""
    def array(leaf: tuple[tuple[int, ...], str]) -> str:
        return f"{leaf[0]} {leaf[1]}"

    out = [f"{'/'.join(p)}: {array(saved[p])} in the checkpoint, {array(wanted[p])} now"
           for p in saved.keys() & wanted.keys() if saved[p] != wanted[p]]
    out += [f"{'/'.join(p)}: only in the checkpoint" for p in saved.keys() - wanted.keys()]
    out += [f"{'/'.join(p)}: not in the checkpoint" for p in wanted.keys() - saved.keys()]
    return sorted(out, key=lambda line: (not line.startswith("params/"), line))


def has_per_layer_params(saved: Structure) -> bool:
    """Whether a saved tree has the layout of jbert before its layers ran under scan: one
    subtree per layer (`encoder/layer/0/...`) where the stacked layout has one [N, ...] array."""
    return any(path[i:i + 2] == STACKED and path[i + 2].isdigit()
               for path in saved for i in range(len(path) - 2))


class StructureMismatchError(ConfigError):
    """A checkpoint holds another state tree than the config builds: a config change (model,
    optimiser, head) or the per-layer layout of an older jbert, not corruption."""

    def __init__(self, step_dir: Path, differences: list[str], per_layer: bool = False):
        self.step_dir, self.differences = step_dir, differences
        self.params_changed = any(d.startswith("params/") for d in differences)
        self.per_layer = per_layer
        if per_layer:
            super().__init__(
                f"checkpoint {step_dir} has the per-layer layout of jbert before its layers ran "
                "under scan (encoder/layer/0/..., one subtree per layer); its weights still "
                "load, its optimiser state does not: start a new --config.workdir with "
                f"--config.init_from={step_dir.parent.parent} (weights only, fresh optimiser), or "
                f"convert it with `python -m train.export --checkpoint {step_dir.parent.parent} "
                "--out DIR` (an HF directory, per-layer names)")
            return
        more = f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        super().__init__(f"checkpoint {step_dir} holds another state than this config builds "
                         f"({'; '.join(differences[:3])}{more})")


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
            meta=ocp.args.JsonSave({**(meta or {}), "fingerprint": fingerprint(state)}),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: State) -> tuple[State, dict, dict]:
        """(state on the target shardings, data state, meta) of a committed step."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        ))
        state, meta = restored["state"], restored["meta"]
        expected = meta.pop("fingerprint", None)  # None: written before fingerprints existed
        if expected is not None:
            _check_fingerprint(state, expected, self.directory / str(step))
        return state, restored["data"], meta

    def saved_structure(self, step: int) -> Structure:
        """Shapes and dtypes of a step's saved state, from orbax's metadata (no array read)."""
        handler = ocp.StandardCheckpointHandler()
        try:
            return structure(handler.metadata(epath.Path(self.directory / str(step) / "state")))
        except Exception as e:  # tensorstore's checksums cover the metadata too
            raise _unreadable(self.directory / str(step), e) from e
        finally:
            handler.close()

    def restore_latest(self, abstract_state: State) -> tuple[int, State, dict, dict] | None:
        """(step, state, data state, meta) of the newest checkpoint that reads back intact.

        Unreadable ones are logged by path, moved aside and skipped; None if none is left. A
        checkpoint of another state tree raises `StructureMismatchError` and moves nothing.
        """
        unreadable: list[tuple[int, str, str]] = []  # (step, moved to, error)
        wanted = structure(abstract_state)
        for step in sorted(self.all_steps(), reverse=True):
            try:
                saved = self.saved_structure(step)
            except CorruptCheckpointError:  # reported below, as the restore fails too
                saved = None
            if saved is not None and saved != wanted:
                raise StructureMismatchError(self.directory / str(step),
                                             structure_differences(saved, wanted),
                                             per_layer=has_per_layer_params(saved))
            try:
                return (step, *self.restore(step, abstract_state))
            except Exception as e:  # tensorstore, JSON and fingerprint errors alike
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            moved = self._set_aside(step)
            log.warning("checkpoint step %d at %s is unreadable (%s); moved to %s, trying "
                        "the previous one", step, self.directory / str(step), error, moved)
            unreadable.append((step, str(moved), error))
        if unreadable:  # never start over silently when the run had checkpoints
            raise CorruptCheckpointError(f"no readable checkpoint in {self.directory}; set "
                                         f"aside: {unreadable}")
        return None

    def _set_aside(self, step: int) -> Path:
        """Moves an unreadable step out of orbax's directory (kept for inspection)."""
        target = (self.directory.parent / f"{self.directory.name}.unreadable"
                  / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jbert_set_aside_{step}")
        self.manager.reload()  # forget the step, or its garbage collection would delete it
        return target

    def restore_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters (weights-only initialisation from another run, export), checked
        like a full restore: the tree first (`StructureMismatchError`), then the contents
        against the state fingerprint (`CorruptCheckpointError`). Weights saved in the
        per-layer layout of jbert before scan are read as such and stacked."""
        where = self.directory / str(step)
        target = {"params": abstract_params}
        saved = self.saved_structure(step)
        saved_params = {path: leaf for path, leaf in saved.items() if path[0] == "params"}
        per_layer = has_per_layer_params(saved_params)
        if per_layer:
            target = {"params": unflatten(dict(per_layer_leaves(abstract_params)))}
        if saved_params != structure(target):
            raise StructureMismatchError(where, structure_differences(saved_params,
                                                                      structure(target)))
        try:
            with ocp.PyTreeCheckpointer() as checkpointer:
                restored = checkpointer.restore(
                    where / "state",
                    args=ocp.args.PyTreeRestore(
                        item=target, partial_restore=True,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
        except Exception as e:  # tensorstore's checksums, truncated files
            raise _unreadable(where, e) from e
        params = restored["params"]
        expected = self.restore_meta(step).get("fingerprint")
        if expected is not None:
            if len(saved) != len(expected):
                raise CorruptCheckpointError(f"checkpoint {where}: its fingerprint lists "
                                             f"{len(expected)} arrays, its state has {len(saved)}")
            # The fingerprint lists the state's leaves in JAX's order, top-level keys sorted:
            # the parameters' leaves come after those of every key that sorts before "params".
            start = sum(path[0] < "params" for path in saved)
            _check_fingerprint(params, expected[start:start + len(saved_params)], where,
                               prefix="['params']")
        return stack_layers(dict(iter_leaves(params))) if per_layer else params

    def wait(self) -> None:
        """Returns once every save started so far is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def lora_meta(cfg: LoRAConfig, base: str, base_encoder: Any) -> dict:
    """What a LoRA run's checkpoints record beside the adapters: the adapter layout, the base
    they adapt (its weights are not in the checkpoint) and the fingerprint of its encoder."""
    return {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.targets), "base": base,
            "base_fingerprint": fingerprint(base_encoder)}


class SavedLoRA(NamedTuple):
    cfg: LoRAConfig
    base: str  # where the base was when the run started (an absolute path)
    base_fingerprint: list[int]


def saved_lora(meta: dict) -> SavedLoRA | None:
    """The adapter layout and base of a LoRA run's checkpoint meta; None for plain weights."""
    saved = meta.get("lora")
    if saved is None:
        return None
    return SavedLoRA(LoRAConfig(saved["rank"], saved["alpha"], tuple(saved["targets"])),
                     saved["base"], saved["base_fingerprint"])


def check_lora_base(base_encoder: Any, saved: SavedLoRA, adapters: str) -> None:
    """Refuses a base whose encoder is not the one the adapters were trained on."""
    leaves = jax.tree_util.tree_leaves_with_path(base_encoder)
    now = fingerprint(base_encoder)
    changed = [jax.tree_util.keystr(path) for (path, _), want, got in zip(
        leaves, saved.base_fingerprint, now, strict=False) if want != got]  # lengths: below
    if changed or len(now) != len(saved.base_fingerprint):
        raise ConfigError(f"{adapters} holds LoRA adapters of another base than {saved.base} "
                          f"is now (its encoder differs in {', '.join(changed[:3]) or 'shape'}); "
                          "put back the base they were trained on")


def restore_meta(directory: str | Path, step: int | None = None) -> tuple[dict, int]:
    """(meta, step) of a committed checkpoint, the latest by default."""
    return _read(directory, step, lambda checkpointer, step: checkpointer.restore_meta(step))


def restore_weights(directory: str | Path, config: Any,
                    step: int | None = None) -> tuple[Any, str, int]:
    """(params, head, step) of a committed checkpoint, the latest by default: weights only,
    for the head the run trained (recorded in its meta; MLM before heads were recorded).
    A LoRA run's params are its trainable tree (`saved_lora` of its meta names the base)."""
    def read(checkpointer: Checkpointer, step: int) -> tuple[Any, str]:
        meta = checkpointer.restore_meta(step)
        head = meta.get("head", "masked_lm")
        adapters = saved_lora(meta)
        return checkpointer.restore_params(
            step, trained_params(config, head, adapters.cfg if adapters else None)), head

    (params, head), step = _read(directory, step, read)
    return params, head, step


def _read(directory: str | Path, step: int | None, read: Any) -> tuple[Any, int]:
    """`read(checkpointer, step)` on a committed step (the latest by default), and the step."""
    if not Path(directory).is_dir():  # Checkpointer would create it: a typo must not leave dirs
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    checkpointer = Checkpointer(directory)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None or step not in checkpointer.all_steps():
            raise FileNotFoundError(f"{directory}: no checkpoint at step "
                                    f"{step if step is not None else '(any)'}; have "
                                    f"{checkpointer.all_steps()}")
        return read(checkpointer, step), step
    finally:
        checkpointer.close()
