"""Orbax checkpoints of a sweep: arrays plus a JSON record of what produced them, checksummed.

Checkpoints live in `<run_dir>/checkpoints/<step>/`, written asynchronously by an
`orbax.checkpoint.CheckpointManager`, which commits each step atomically (a step directory
appears only once complete; a write cut short leaves a temporary directory that is never
read). Each step holds `state` (the arrays of a pytree) and `meta` (JSON: the run's
fingerprint, host-side bookkeeping and an `integrity` record).

Integrity: `save` records, for every array leaf, its dtype, shape and the SHA-256 of its
bytes, and the SHA-256 of the rest of the meta. Orbax's storage checks its own b-tree nodes
(CRC-32C) but not the compressed chunks of array data, so a flipped bit there would restore
as a silently different number; here every restored array is hashed and compared.

`restore_latest` walks back from the newest step: a step that cannot be read, whose meta
lacks its integrity record, or whose arrays or meta do not match their checksums is moved
to `<checkpoints>-corrupt/<step>` (kept, not deleted) with a one-line warning naming the
step and what failed, and the next older one is tried. A readable step written by another
configuration (fingerprint) or holding other arrays (paths, dtypes, shapes) raises
`CheckpointMismatch` and is left in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PyTree

from superpos_jax.engine.distributed import barrier, is_primary, to_host

INTEGRITY = "integrity"
"""The key of the meta record that `save` adds and every restore checks."""
_FORMAT = 1


def _orbax() -> Any:
    """orbax.checkpoint, imported when a checkpoint is first written or read (it pulls in
    tensorstore and an event loop: seconds that `import superpos_jax` should not pay)."""
    import orbax.checkpoint

    return orbax.checkpoint


class CheckpointError(FileNotFoundError):
    """No readable checkpoint where one was expected."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint step is unreadable, incomplete or does not match its checksums."""


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


def _host_bytes(leaf: Any) -> np.ndarray:
    """The leaf as a C-contiguous NumPy array (typed PRNG keys as their raw key data)."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.ascontiguousarray(to_host(leaf))


def _leaf_record(leaf: Any) -> dict[str, Any]:
    """dtype, shape and SHA-256 (over dtype, shape and bytes) of one array."""
    a = _host_bytes(leaf)
    digest = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    digest.update(a.reshape(-1).view(np.uint8).data)
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": digest.hexdigest()}


def _layout(leaf: Any) -> dict[str, Any]:
    """dtype and shape of an array or a `jax.ShapeDtypeStruct`-like target, as saved."""
    dtype = leaf.dtype
    shape = list(np.shape(leaf))
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        dtype, shape = data.dtype, list(data.shape)
    return {"dtype": str(np.dtype(dtype)), "shape": shape}


def _meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON text of `meta` (as it reads back: keys as strings, tuples as lists)."""
    plain = json.loads(json.dumps(dict(meta)))
    return hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _leaves(tree: PyTree) -> dict[str, Any]:
    """Array leaves of `tree` by their path (`jax.tree_util.keystr`)."""
    arrays = eqx.filter(tree, eqx.is_array)
    return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(arrays)}


def save(mngr: Any, step: int, tree: PyTree, meta: Mapping[str, Any] | None = None) -> None:
    """Start saving the arrays of `tree` (and the JSON `meta`) as checkpoint `step`.

    The meta gains an `integrity` record: each array's dtype, shape and SHA-256, and the
    SHA-256 of the meta itself, computed here from the arrays as passed. Returns before the
    write finishes; the arrays must not be modified or donated until
    `mngr.wait_until_finished()` (pass host copies). In a multi-process job every process
    calls this with the same tree.
    """
    ocp = _orbax()
    meta = dict(meta or {})
    if INTEGRITY in meta:
        raise ValueError(f"checkpoint meta may not use the key {INTEGRITY!r}: save() writes it")
    record = {
        "format": _FORMAT,
        "leaves": {path: _leaf_record(leaf) for path, leaf in _leaves(tree).items()},
        "meta_sha256": _meta_digest(meta),
    }
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(eqx.filter(tree, eqx.is_array)),
        meta=ocp.args.JsonSave({**meta, INTEGRITY: record}),
    )
    mngr.save(step, args=args)


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, when closed, first lets its unfinished tasks end and marks the
    exceptions of all its tasks as seen.

    Orbax runs each restore in a fresh loop and closes it as soon as the first array read
    fails; the other reads, still in flight in tensorstore, then report "Event loop is
    closed" from their completion callbacks, and those that failed too are logged as
    "Task exception was never retrieved". The first failure is what the caller reports.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[asyncio.Task[Any]] = []
        self.set_task_factory(self._track)

    def _track(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        self._tasks.append(task)
        return task

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = [t for t in self._tasks if not t.done()]
            if pending:
                self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            for task in self._tasks:
                if not task.cancelled():
                    task.exception()
            self._tasks.clear()
        super().close()


@contextmanager
def _draining_loops() -> Iterator[None]:
    """Within: every new event loop is a `_DrainingLoop` (through the loop policy, which is
    how orbax's `asyncio.new_event_loop()` calls get theirs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # loop policies: deprecated from Python 3.14

        class Policy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self) -> asyncio.AbstractEventLoop:
                return _DrainingLoop()

        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(Policy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


def _read_meta(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step's meta and its integrity record, checked; raises CheckpointCorrupt otherwise."""
    ocp = _orbax()
    try:
        meta = ocp.JsonCheckpointHandler().restore(path / "meta")
    except Exception as e:  # noqa: BLE001 - any failure to read the meta makes the step unusable
        raise CheckpointCorrupt(f"its meta cannot be read ({_summary(e)})") from e
    if not isinstance(meta, dict):
        raise CheckpointCorrupt(f"its meta is a JSON {type(meta).__name__}, not an object")
    record = meta.pop(INTEGRITY, None)
    if (
        not isinstance(record, dict)
        or record.get("format") != _FORMAT
        or not isinstance(record.get("leaves"), dict)
        or not isinstance(record.get("meta_sha256"), str)
    ):
        raise CheckpointCorrupt(
            f"its meta has no valid {INTEGRITY!r} record (keys found: {sorted(meta) or 'none'}), "
            "so its contents cannot be verified"
        )
    if _meta_digest(meta) != record["meta_sha256"]:
        raise CheckpointCorrupt("its meta does not match the SHA-256 recorded when it was saved")
    for name, leaf in record["leaves"].items():
        if not (isinstance(leaf, dict) and isinstance(leaf.get("dtype"), str) and isinstance(leaf.get("sha256"), str)
                and isinstance(leaf.get("shape"), list)):
            raise CheckpointCorrupt(f"the integrity record of array {name} is incomplete")
    step_record = path / "_CHECKPOINT_METADATA"  # orbax's own; its manager reads it when it opens the directory
    if step_record.exists():
        try:
            ok = isinstance(json.loads(step_record.read_bytes()), dict)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            ok = False
        if not ok:
            raise CheckpointCorrupt(f"orbax's step record {step_record.name} is not a JSON object")
    return meta, record


def _check_layout(record: Mapping[str, Any], like: PyTree) -> list[str]:
    """How the arrays recorded in a checkpoint differ from those of `like` (empty if not)."""
    saved, wanted = record["leaves"], {p: _layout(leaf) for p, leaf in _leaves(like).items()}
    out = [f"array {p}: in the checkpoint, not in this run" for p in sorted(set(saved) - set(wanted))]
    out += [f"array {p}: in this run, not in the checkpoint" for p in sorted(set(wanted) - set(saved))]
    for p in sorted(set(saved) & set(wanted)):
        s, w = saved[p], wanted[p]
        if s["dtype"] != w["dtype"] or s["shape"] != w["shape"]:
            out.append(f"array {p}: checkpoint has {s['dtype']}{s['shape']}, this run has {w['dtype']}{w['shape']}")
    return out


def _read_state(path: Path, like: PyTree, record: Mapping[str, Any]) -> PyTree:
    """The arrays of the step into the structure of `like`, each checked against its SHA-256."""
    ocp = _orbax()
    arrays, static = eqx.partition(like, eqx.is_array)
    try:
        with _draining_loops():
            restored = ocp.StandardCheckpointHandler().restore(path / "state", args=ocp.args.StandardRestore(arrays))
    except Exception as e:  # noqa: BLE001 - any failure to read the arrays makes the step unusable
        raise CheckpointCorrupt(f"its arrays cannot be read ({_summary(e)})") from e
    found = _leaves(restored)
    for name, expected in record["leaves"].items():
        if name not in found:
            raise CheckpointCorrupt(f"array {name} is missing from its data")
        if _leaf_record(found[name]) != expected:
            raise CheckpointCorrupt(f"array {name} does not match the SHA-256 recorded when it was saved")
    return eqx.combine(restored, static)


def _summary(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]


def _differences(found: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key, "<absent>"), expected.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{key}: checkpoint has {a!r}, this run has {b!r}")
    return out


def _read(
    directory: Path, step: int, like: PyTree, fingerprint: Mapping[str, Any] | None
) -> tuple[PyTree, dict[str, Any]]:
    """Read and verify one step. Raises CheckpointCorrupt (unusable) or CheckpointMismatch
    (another run's: checked before any array is read)."""
    path = directory / str(step)
    meta, record = _read_meta(path)
    if fingerprint is not None:
        found = meta.get("fingerprint", {})
        diffs = _differences(found if isinstance(found, Mapping) else {"<fingerprint>": found}, dict(fingerprint))
        if diffs:
            raise CheckpointMismatch(
                f"the checkpoint in {directory} (step {step}) belongs to a different run:\n  " + "\n  ".join(diffs)
            )
    diffs = _check_layout(record, like)
    if diffs:
        raise CheckpointMismatch(
            f"the checkpoint in {directory} (step {step}) holds other arrays than this run:\n  " + "\n  ".join(diffs)
        )
    return _read_state(path, like, record), meta


def restore_latest(
    directory: str | Path, like: PyTree, *, fingerprint: Mapping[str, Any] | None = None
) -> tuple[PyTree, dict[str, Any], int]:
    """Restore the newest readable, verified checkpoint into the structure (and placement) of `like`.

    Array leaves of `like` are the targets: NumPy arrays restore as NumPy, sharded
    `jax.Array`s restore with their sharding. Unusable steps are quarantined on the way
    (see the module docstring).

    Returns:
        (tree, meta, step); `meta` as passed to `save` (without the integrity record).

    Raises:
        CheckpointError: no step in `directory` can be read.
        CheckpointMismatch: the newest readable step's `meta["fingerprint"]` differs from
            `fingerprint`, or its arrays differ from those of `like` in path, dtype or shape
            (the message lists every difference).
    """
    directory = Path(directory).absolute()
    found = steps(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}")
    for step in reversed(found):
        try:
            tree, meta = _read(directory, step, like, fingerprint)
        except CheckpointCorrupt as e:
            _quarantine(directory, step, str(e))
            continue
        return tree, meta, step
    raise CheckpointError(
        f"no readable checkpoint in {directory}: all {len(found)} step(s) were unreadable and were moved to "
        f"{directory.parent / (directory.name + '-corrupt')}"
    )


def _quarantine(directory: Path, step: int, reason: str) -> None:
    """Move an unusable step aside (keeping it) so a new save of that step can proceed."""
    dest = directory.parent / f"{directory.name}-corrupt" / str(step)
    if is_primary():
        print(f"checkpoint step {step} in {directory} is unreadable: {reason}; "
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

    An explicitly named step is verified but never moved.

    Raises:
        CheckpointError: the directory holds no (readable) checkpoint; `CheckpointCorrupt`
            (a subclass) when the named step is unreadable or fails its checksums.
        CheckpointMismatch: the step holds other arrays than `like`.
    """
    directory = Path(directory).absolute()
    if step is None:
        tree, _, step = restore_latest(directory, like)
        return tree, step
    if step not in steps(directory):
        raise CheckpointError(f"no checkpoint step {step} in {directory}")
    try:
        tree, _ = _read(directory, step, like, None)
    except CheckpointCorrupt as e:
        raise CheckpointCorrupt(f"checkpoint step {step} in {directory} is unreadable: {e}") from e
    return tree, step
