"""Orbax checkpointing of a sweep's `TrainState`, behind `save` and `restore`.

Checkpoints live in `<run_dir>/checkpoints/<step>/`, written asynchronously with an atomic
commit by an `orbax.checkpoint.CheckpointManager`. Only arrays are saved; the structure to
restore into comes from a freshly initialised state (`like`).
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import orbax.checkpoint as ocp
from jaxtyping import PyTree


def manager(directory: str | Path, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """An async checkpoint manager rooted at `directory` (created if missing)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def latest_step(directory: str | Path) -> int | None:
    """The newest committed checkpoint step in `directory`, or None if it holds none."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)


def save(mngr: ocp.CheckpointManager, step: int, tree: PyTree) -> None:
    """Start saving the arrays of `tree` as checkpoint `step` (returns before it is written;
    call `mngr.wait_until_finished()` before exiting)."""
    mngr.save(step, args=ocp.args.StandardSave(eqx.filter(tree, eqx.is_array)))


def restore(directory: str | Path, like: PyTree, step: int | None = None) -> tuple[PyTree, int]:
    """Restore checkpoint `step` (default: the latest) into the structure of `like`.

    Raises:
        FileNotFoundError: the directory holds no checkpoint.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {directory}")
        arrays, static = eqx.partition(like, eqx.is_array)
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, arrays)
        restored = mngr.restore(step, args=ocp.args.StandardRestore(target))
    return eqx.combine(restored, static), int(step)
