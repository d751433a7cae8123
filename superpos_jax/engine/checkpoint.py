"""Orbax checkpoints of a sweep: arrays plus a JSON record of what produced them.

Checkpoints live in `<run_dir>/checkpoints/<step>/`, written asynchronously by an
`orbax.checkpoint.CheckpointManager`, which commits each step atomically (a step directory
appears only once complete; a write cut short leaves a temporary directory that is never
read). Each step holds `state` (the arrays of a pytree) and `meta` (JSON: the run's
fingerprint and host-side bookkeeping).

`restore_latest` walks back from the newest step: a step that cannot be read is moved to
`<checkpoints>-corrupt/<step>` (kept, not deleted) and the next older one is tried; a step
whose fingerprint differs from the caller's raises `CheckpointMismatch`, naming the fields.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from superpos_jax.engine.distributed import barrier, is_primary

def _orbax() -> Any:
    """orbax.checkpoint, imported when a checkpoint is first written or read (it pulls in
    tensorstore and an event loop: seconds that `import superpos_jax` should not pay)."""
    import orbax.checkpoint

    return orbax.checkpoint


class CheckpointError(FileNotFoundError):
    """No readable checkpoint where one was expected."""


class CheckpointMismatch(ValueError):
    """A checkpoint was written by a run with a different configuration."""


def manager(directory: str | Path, *, max_to_keep: int = 3) -> Any:
    """An async `orbax.checkpoint.CheckpointManager` rooted at `directory` (created if missing)."""
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def steps(directory: str | Path) -> list[int]:
    """The committed checkpoint steps in `directory`, oldest first (empty if none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def latest_step(directory: str | Path) -> int | None:
    """The newest committed checkpoint step in `directory`, or None if it holds none."""
    found = steps(directory)
    return found[-1] if found else None


def save(mngr: Any, step: int, tree: PyTree, meta: Mapping[str, Any] | None = None) -> None:
    """Start saving the arrays of `tree` (and the JSON `meta`) as checkpoint `step`.

    Returns before the write finishes; the arrays must not be modified or donated until
    `mngr.wait_until_finished()` (pass host copies).
    """
    ocp = _orbax()
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(eqx.filter(tree, eqx.is_array)), meta=ocp.args.JsonSave(dict(meta or {}))
    )
    mngr.save(step, args=args)


def _read(directory: Path, step: int, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    ocp = _orbax()
    arrays, static = eqx.partition(like, eqx.is_array)
    with ocp.CheckpointManager(directory) as mngr:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(arrays)))["state"]
    return eqx.combine(restored, static), dict(meta or {})


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key}: checkpoint has {a!r}, this run has {b!r}")
    return out


def restore_latest(
    directory: str | Path, like: PyTree, *, fingerprint: Mapping[str, Any] | None = None
) -> tuple[PyTree, dict[str, Any], int]:
    """Restore the newest readable checkpoint into the structure (and placement) of `like`.

    Array leaves of `like` are the targets: NumPy arrays restore as NumPy, sharded
    `jax.Array`s restore with their sharding.

    Returns:
        (tree, meta, step).

    Raises:
        CheckpointError: no step in `directory` can be read.
        CheckpointMismatch: the newest readable step's `meta["fingerprint"]` differs from
            `fingerprint` (the message lists every differing field).
    """
    directory = Path(directory).absolute()
    found = steps(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}")
    for step in reversed(found):
        try:
            tree, meta = _read(directory, step, like)
        except Exception as e:  # noqa: BLE001 - any failure to read means this step is unusable
            _quarantine(directory, step, e)
            continue
        if fingerprint is not None:
            diffs = _differences(meta.get("fingerprint", {}), dict(fingerprint))
            if diffs:
                raise CheckpointMismatch(
                    f"the checkpoint in {directory} (step {step}) belongs to a different run:\n  "
                    + "\n  ".join(diffs)
                )
        return tree, meta, step
    raise CheckpointError(
        f"no readable checkpoint in {directory}: all {len(found)} step(s) were unreadable and were moved to "
        f"{directory.parent / (directory.name + '-corrupt')}"
    )


def _quarantine(directory: Path, step: int, error: Exception) -> None:
    """Move an unreadable step aside (keeping it) so a new save of that step can proceed."""
    dest = directory.parent / f"{directory.name}-corrupt" / str(step)
    summary = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    print(f"checkpoint step {step} in {directory} is unreadable ({summary[:200]}); "
          f"moved to {dest}, trying an older one", file=sys.stderr)
    barrier(f"superpos-quarantine-{step}-read")
    if is_primary():
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(directory / str(step)), str(dest))
    barrier(f"superpos-quarantine-{step}-moved")


def restore(directory: str | Path, like: PyTree, step: int | None = None) -> tuple[PyTree, int]:
    """Restore checkpoint `step` (default: the newest readable one) into the structure of `like`.

    Raises:
        CheckpointError: the directory holds no (readable) checkpoint.
    """
    directory = Path(directory).absolute()
    if step is None:
        tree, _, step = restore_latest(directory, like)
        return tree, step
    if step not in steps(directory):
        raise CheckpointError(f"no checkpoint step {step} in {directory}")
    tree, _ = _read(directory, step, like)
    return tree, step
