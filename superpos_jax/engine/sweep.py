"""Named grids, the flat instance axis, and the host loop that trains a sweep in chunks.

A `Grid` is an ordered set of named axes, e.g.
`Grid({"feature_probability": [1, 0.1, 0.01], "model": ["linear", "relu"], "seed": [0, 1]})`.
Its instances are enumerated in C order (the last axis varies fastest); `column(name)`
gives each instance's value on one axis, and `fold(values)` reshapes per-instance results
back to the grid's shape.

`run_sweep` advances a batched `TrainState` chunk by chunk: each chunk is one compiled,
donated call of `Trainer.run` per block of instances (see `execution`), sharded over the
device mesh; between chunks the host only gathers the loss trace, checks it for NaN/inf,
prints progress, appends a line to metrics.jsonl (`metrics_log`, when given) and saves a
checkpoint. With `chunk_steps >= n_steps` and one block the whole sweep is literally one call.

Durability: a checkpoint after every chunk holds the whole state (params, optimizer state,
step, keys), the loss trace and the run's fingerprint, each array with its SHA-256. A run
that finds checkpoints continues from the newest one that reads back and matches its
checksums (others are quarantined, see `checkpoint`) and ends bit-identical to an
uninterrupted run.
SIGTERM (preemption) lets the current chunk finish, checkpoints, and raises `Preempted`.

Streamed tasks (`Task.stream`, see `engine.stream`): each chunk runs as calls of at most
`stream.steps_per_call` steps; the rows of the next call are read and transferred on a
background thread while the current one computes. The stream's fingerprint joins the run's,
and each checkpoint's meta records the stream position it resumes from.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from superpos_jax.engine import checkpoint
from superpos_jax.engine.distributed import agree, instance_sharding, is_primary, to_global, to_host
from superpos_jax.engine.execution import BlockPlan, Execution, plan_sweep
from superpos_jax.engine.metrics_log import MetricsLog, observation_names, scalar_observations
from superpos_jax.engine.stream import Prefetcher, call_lengths
from superpos_jax.engine.task import Hparams
from superpos_jax.engine.trainer import Trainer, TrainState


@dataclass(frozen=True)
class Grid:
    """An ordered mapping of axis name to the values along that axis."""

    axes: Mapping[str, Sequence[Any]]

    def __post_init__(self) -> None:
        axes = {str(k): tuple(v) for k, v in self.axes.items()}
        for name, values in axes.items():
            if len(values) == 0:
                raise ValueError(f"grid axis {name!r} has no values")
        object.__setattr__(self, "axes", axes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axes.values())

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def index(self, name: str) -> np.ndarray:
        """Per-instance position along axis `name`, shape (size,)."""
        if name not in self.axes:
            raise KeyError(f"grid has no axis {name!r}; axes are {self.names}")
        grids = np.indices(self.shape).reshape(len(self.shape), -1)
        return grids[self.names.index(name)]

    def column(self, name: str) -> np.ndarray:
        """Per-instance value on axis `name`, shape (size,)."""
        idx = self.index(name)
        out = np.asarray(self.axes[name], dtype=object)[idx]
        try:
            return out.astype(np.asarray(self.axes[name]).dtype)
        except (TypeError, ValueError):
            return out

    def coords(self, i: int) -> dict[str, Any]:
        """The grid coordinates (axis name -> value) of flat instance `i`."""
        pos = np.unravel_index(i, self.shape)
        return {n: _plain(self.axes[n][p]) for n, p in zip(self.names, pos)}

    def fold(self, values: Any) -> Any:
        """Reshape arrays with a leading instance axis to `(*grid.shape, ...)` (pytrees ok)."""
        return jax.tree.map(lambda a: np.asarray(a).reshape(self.shape + np.shape(a)[1:]), values)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


@dataclass
class SweepResult:
    """What `run_sweep` returns. Arrays are host NumPy, one row per instance (no padding).

    Attributes:
        state: the final batched `TrainState`.
        losses: shape (instance, n_windows); window w is the mean loss over steps
            `[w * log_every, (w + 1) * log_every)`.
        seconds, steps_per_second: wall time of the steps this call ran (not restored ones).
        plan: how the instances were laid out on the devices.
        non_finite: instance -> the step by which its loss was first seen NaN/inf.
        start_step: the step this call started from (0, or a restored checkpoint's).
        observations: with a trainer that observes, its pytree with leaves shaped
            (instance, n_windows, ...) (NaN where not yet run); else None.
    """

    state: TrainState
    losses: np.ndarray
    seconds: float
    steps_per_second: float
    plan: BlockPlan
    non_finite: dict[int, int]
    start_step: int = 0
    observations: Any = None


class Preempted(Exception):
    """SIGTERM arrived; training stopped after a checkpoint at `step` in `checkpoint_dir`."""

    def __init__(self, step: int, checkpoint_dir: Path):
        super().__init__(f"stopped by SIGTERM after step {step}; checkpoint saved in {checkpoint_dir}")
        self.step, self.checkpoint_dir = step, checkpoint_dir


class Progress:
    """A one-line progress bar: steps, steps/s, and loss quantiles over instances."""

    def __init__(self, total: int, n_instances: int, start_step: int = 0, stream: TextIO | None = None):
        self.total, self.n_instances, self.start_step = total, n_instances, start_step
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()

    def update(self, step: int, last_losses: np.ndarray) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (step - self.start_step) / elapsed  # steps run by this process, not restored ones
        q = np.nanquantile(last_losses, [0.0, 0.5, 1.0]) if np.isfinite(last_losses).any() else [np.nan] * 3
        width = 24
        done = int(width * step / max(self.total, 1))
        bar = "#" * done + "." * (width - done)
        self.stream.write(
            f"\r[{bar}] {step}/{self.total} steps  {rate:,.0f} steps/s  "
            f"{self.n_instances * rate:,.0f} model-steps/s  "
            f"loss min/med/max {q[0]:.4g}/{q[1]:.4g}/{q[2]:.4g}"
        )
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class _StopRequest:
    """Turns SIGTERM into a flag checked between chunks (only in the main thread). A handler
    installed before, with a `requested` flag of its own (the `superpos` command's), shares it:
    a SIGTERM that came before this sweep began stops it at its first checkpoint, and one that
    came during it is passed on to whatever runs next."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self.requested = bool(getattr(self._previous, "requested", False))
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        print("\nSIGTERM: finishing the current chunk, then checkpointing", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            if self.requested and hasattr(self._previous, "requested"):
                self._previous.requested = True


def _leading_size(hparams: Hparams, n: int) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(hparams):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] != n:
            raise ValueError(
                f"hparams{jax.tree_util.keystr(path)} has shape {np.shape(leaf)}; every leaf needs a "
                f"leading instance axis of size {n} (the number of keys)"
            )


def run_sweep(
    trainer: Trainer,
    hparams: Hparams,
    keys: Any,
    *,
    n_steps: int,
    chunk_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    execution: Execution = Execution(),
    grid: Grid | None = None,
    fingerprint: dict[str, Any] | None = None,
    metrics: MetricsLog | None = None,
) -> SweepResult:
    """Train every instance for `n_steps`, `chunk_steps` at a time, on `execution`'s devices.

    Args:
        trainer: from `make_trainer` (recompiled for the execution's mesh if needed).
        hparams: per-instance hyperparameters, every leaf with a leading instance axis.
        keys: one PRNG key per instance.
        n_steps: total training steps; must be a multiple of `trainer.log_every`.
        chunk_steps: steps per compiled call, and between checkpoints (default: all of them).
            The last chunk may be shorter, which compiles a second program.
        checkpoint_dir: when given, the state is checkpointed after every chunk; a run that
            finds a checkpoint there continues from the newest readable one, and SIGTERM
            ends the run with a checkpoint and `Preempted`.
        progress: print the block plan and a progress bar to stderr.
        execution: mesh, block size / memory budget (results do not depend on these).
        grid: names instances in NaN reports by their grid coordinates.
        fingerprint: JSON-able description of the run (e.g. its config); a checkpoint with a
            different one is refused with `checkpoint.CheckpointMismatch`.
        metrics: append one metrics.jsonl line per chunk there (loss quantiles, per-instance
            last-window loss and scalar observations with grid coordinates; see
            `metrics_log`); its lines past the start step are dropped first.

    Returns:
        A `SweepResult` on the host, identical in every process.
    """
    log_every = trainer.log_every
    chunk_steps = n_steps if chunk_steps is None else chunk_steps
    if n_steps <= 0 or n_steps % log_every:
        raise ValueError(f"n_steps must be a positive multiple of log_every={log_every}, got {n_steps}")
    if chunk_steps <= 0 or chunk_steps % log_every:
        raise ValueError(f"chunk_steps must be a positive multiple of log_every={log_every}, got {chunk_steps}")
    impl = jax.random.key_impl(keys)
    key_data = np.asarray(jax.random.key_data(keys))
    n = key_data.shape[0]
    hparams = jax.tree.map(np.asarray, hparams)
    _leading_size(hparams, n)
    describe = grid.coords if grid is not None else (lambda i: {"instance": i})
    fingerprint = {"n_instances": n, "n_steps": n_steps, "log_every": log_every, **(fingerprint or {})}
    stream = trainer.task.stream
    if stream is not None:
        fingerprint["stream"] = stream.fingerprint()

    trainer = trainer.on(execution.resolved_mesh(n))
    sharding = instance_sharding(trainer.mesh)
    first_call = None if stream is not None else min(chunk_steps, n_steps)
    plan = plan_sweep(trainer, hparams, keys, execution, n_steps=first_call)
    hp_blocks = [to_global(b, sharding) for b in plan.split(plan.pad(hparams))]
    key_blocks = [jax.random.wrap_key_data(to_global(b, sharding), impl=impl) for b in plan.split(plan.pad(key_data))]
    if progress:
        print(plan.describe(), file=sys.stderr)

    n_windows = n_steps // log_every
    losses = np.full((n, n_windows), np.nan, np.float32)
    block = jax.eval_shape(trainer.init, hp_blocks[0], key_blocks[0])
    observations = None
    if trainer.observe is not None:
        shapes = jax.eval_shape(jax.vmap(trainer.observe), block.params, hp_blocks[0])
        observations = jax.tree.map(lambda s: _unfilled((n, n_windows, *s.shape[1:]), s.dtype), shapes)
        if metrics is not None:
            observation_names(shapes)  # names that metrics.jsonl cannot hold fail before training
    non_finite: dict[int, int] = {}
    start_step = 0
    if checkpoint_dir is not None and checkpoint.latest_step(checkpoint_dir) is not None:
        like = (jax.tree.map(lambda s: np.zeros((n, *s.shape[1:]), s.dtype), block), losses, observations)
        (state, losses, observations), meta, start_step = checkpoint.restore_latest(
            checkpoint_dir, like, fingerprint=fingerprint
        )
        losses = np.array(losses)
        observations = jax.tree.map(np.array, observations)
        non_finite = {int(k): int(v) for k, v in meta.get("non_finite", {}).items()}
        states = [to_global(b, sharding) for b in plan.split(plan.pad(state))]
        if progress:
            print(f"resumed from step {start_step} of {n_steps} ({checkpoint_dir})", file=sys.stderr)
    else:
        states = [trainer.init(hp, k) for hp, k in zip(hp_blocks, key_blocks, strict=True)]

    coords = [grid.coords(i) if grid is not None else {} for i in range(n)] if metrics is not None else []
    if metrics is not None:
        metrics.open(start_step)
    mngr = checkpoint.manager(checkpoint_dir) if checkpoint_dir is not None else None
    bar = Progress(n_steps, n, start_step) if progress else None
    prefetch = None
    if stream is not None:
        replicated = jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec())
        prefetch = Prefetcher(stream, lambda rows: to_global(rows, replicated))
        calls = _stream_calls(start_step, n_steps, chunk_steps, stream.steps_per_call, log_every)
        following = dict(zip(calls, calls[1:]))
    t0 = time.perf_counter()
    step = start_step
    try:
        with _StopRequest() as stop:
            while step < n_steps:
                todo = min(chunk_steps, n_steps - step)
                traces = []
                if prefetch is None:
                    for b in range(plan.n_blocks):
                        states[b], trace = trainer.run(states[b], hp_blocks[b], n_steps=todo)
                        traces.append(to_host(trace))  # also keeps one block's working set in memory at a time
                else:
                    parts: list[list[Any]] = [[] for _ in range(plan.n_blocks)]
                    at = step
                    for m in call_lengths(todo, stream.steps_per_call, log_every):
                        rows = prefetch.get(at, m, then=following.get((at, m)))
                        for b in range(plan.n_blocks):
                            states[b], trace = trainer.run(states[b], hp_blocks[b], m, rows)
                            parts[b].append(to_host(trace))
                        del rows
                        at += m
                    traces = [jax.tree.map(lambda *t: np.concatenate(t, axis=1), *p) for p in parts]
                window = slice(step // log_every, (step + todo) // log_every)
                if observations is None:
                    losses[:, window] = plan.join(traces)
                else:
                    losses[:, window], observed = plan.join(traces)
                    jax.tree.map(lambda whole, part: whole.__setitem__((slice(None), window), part), observations, observed)
                _report_non_finite(losses[:, : (step + todo) // log_every], non_finite, step, step + todo, describe)
                step += todo
                last = step // log_every - 1
                if bar is not None:
                    bar.update(step, losses[:, last])
                if metrics is not None:
                    scalars = {} if observations is None else scalar_observations(
                        jax.tree.map(lambda a: a[:, last], observations))
                    metrics.log(step, time.perf_counter() - t0, losses[:, last], scalars, coords)
                if mngr is not None:
                    host_state = plan.join([to_host(s) for s in states])
                    meta = {"fingerprint": fingerprint, "step": step, "non_finite": {str(k): v for k, v in non_finite.items()}}
                    if stream is not None:
                        meta["stream_position"] = stream.position(step)
                    saved = (host_state, losses.copy(), jax.tree.map(np.copy, observations))
                    checkpoint.save(mngr, step, saved, meta)
                    if bool(agree(stop.requested, "any")) and step < n_steps:
                        mngr.wait_until_finished()
                        raise Preempted(step, Path(checkpoint_dir))  # type: ignore[arg-type]
    finally:
        if prefetch is not None:
            prefetch.close()
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
    seconds = time.perf_counter() - t0
    final = plan.join([to_host(s) for s in states])
    done = step - start_step
    rate = done / seconds if seconds > 0 else 0.0
    return SweepResult(final, losses, seconds, rate, plan, non_finite, start_step, observations)


def _stream_calls(start: int, n_steps: int, chunk_steps: int, per_call: int, log_every: int) -> list[tuple[int, int]]:
    """Every (first step, length) call of a streamed run from `start`, in order."""
    out, step = [], start
    while step < n_steps:
        todo = min(chunk_steps, n_steps - step)
        for m in call_lengths(todo, per_call, log_every):
            out.append((step, m))
            step += m
    return out


def _unfilled(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """NaN for floating dtypes (not yet run), zeros otherwise."""
    if np.issubdtype(dtype, np.floating):
        return np.full(shape, np.nan, dtype)
    return np.zeros(shape, dtype)


def _report_non_finite(
    seen: np.ndarray, known: dict[int, int], start: int, end: int, describe: Any
) -> None:
    """Record (and report once) every instance whose loss so far, `seen`, has a NaN/inf."""
    bad = np.flatnonzero(~np.isfinite(seen).all(axis=1))
    for i in bad:
        if int(i) in known:
            continue
        known[int(i)] = end
        if is_primary():
            print(
                f"\nnon-finite loss in instance {int(i)} {describe(int(i))} during steps {start}-{end}; "
                "the other instances are unaffected and keep training",
                file=sys.stderr,
            )
