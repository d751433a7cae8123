"""Named grids, the flat instance axis, and the host loop that trains a sweep in chunks.

A `Grid` is an ordered set of named axes, e.g.
`Grid({"feature_probability": [1, 0.1, 0.01], "model": ["linear", "relu"], "seed": [0, 1]})`.
Its instances are enumerated in C order (the last axis varies fastest); `column(name)`
gives each instance's value on one axis, and `fold(values)` reshapes per-instance results
back to the grid's shape.

`run_sweep` advances a batched `TrainState` chunk by chunk: each chunk is one compiled,
donated call of `Trainer.run`; between chunks the host only prints progress and saves a
checkpoint. With `chunk_steps >= n_steps` the whole sweep is literally one call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from superpos_jax import checkpoint
from superpos_jax.train import Hparams, Trainer, TrainState


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
    """What `run_sweep` returns: the final batched state and the loss trace.

    `losses` has shape (instance, n_windows); window w is the mean over steps
    `[w * log_every, (w + 1) * log_every)`.
    """

    state: TrainState
    losses: np.ndarray
    seconds: float
    steps_per_second: float


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


def run_sweep(
    trainer: Trainer,
    hparams: Hparams,
    keys: Any,
    *,
    n_steps: int,
    chunk_steps: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
) -> SweepResult:
    """Train every instance for `n_steps`, `chunk_steps` at a time.

    Args:
        trainer: from `make_trainer`.
        hparams: per-instance hyperparameters, every leaf with a leading instance axis.
        keys: one PRNG key per instance.
        n_steps: total training steps; must be a multiple of `trainer.log_every`.
        chunk_steps: steps per compiled call (default: all of them). The last chunk may be
            shorter, which compiles a second program.
        checkpoint_dir: when given, the state is checkpointed after every chunk, and a run
            that finds a checkpoint there continues from it.
        progress: print a progress bar to stderr.
    """
    log_every = trainer.log_every
    chunk_steps = n_steps if chunk_steps is None else chunk_steps
    if n_steps <= 0 or n_steps % log_every:
        raise ValueError(f"n_steps must be a positive multiple of log_every={log_every}, got {n_steps}")
    if chunk_steps <= 0 or chunk_steps % log_every:
        raise ValueError(f"chunk_steps must be a positive multiple of log_every={log_every}, got {chunk_steps}")

    state = trainer.init(hparams, keys)
    n_instances = jax.tree.leaves(state)[0].shape[0]
    losses = np.full((n_instances, n_steps // log_every), np.nan, np.float32)
    start_step = 0
    mngr = None
    if checkpoint_dir is not None:
        if checkpoint.latest_step(checkpoint_dir) is not None:
            (state, losses), start_step = checkpoint.restore(checkpoint_dir, (state, losses))
            losses = np.array(losses)
        mngr = checkpoint.manager(checkpoint_dir)

    bar = Progress(n_steps, n_instances, start_step) if progress else None
    t0 = time.perf_counter()
    step = start_step
    try:
        while step < n_steps:
            todo = min(chunk_steps, n_steps - step)
            state, trace = trainer.run(state, hparams, todo)
            losses[:, step // log_every : (step + todo) // log_every] = np.asarray(trace)
            step += todo
            if bar is not None:
                bar.update(step, losses[:, step // log_every - 1])
            if mngr is not None:
                checkpoint.save(mngr, step, (state, losses.copy()))
    finally:
        if bar is not None:
            bar.close()
        if mngr is not None:
            mngr.wait_until_finished()
            mngr.close()
    seconds = time.perf_counter() - t0
    done = step - start_step
    return SweepResult(state, losses, seconds, done / seconds if seconds > 0 else 0.0)
