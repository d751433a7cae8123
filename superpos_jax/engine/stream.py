"""Host data streamed into the compiled loop, and the prefetch that overlaps reading with compute.

A task whose data cannot live on the device (activations on disk, far beyond memory) sets
`Task.stream`: a host object that reads, for global steps `[start, start + n)`, a pytree of
NumPy arrays with a leading step axis of length n. `run_sweep` splits every chunk into calls of
at most `stream.steps_per_call` steps; each call receives its rows as an argument of the compiled
program (never a constant), and the rows of the next call are read and transferred on a
background thread while the current call computes (double buffering: at most two calls' rows
are on the host or in flight at once).

A stream must be a pure function of the step: `read(start, n)` returns the same arrays whenever
it is asked, in any order, so a run resumed from a checkpoint at step s reads exactly what the
uninterrupted run read from step s on. The "reading position" is therefore the step itself, and
the shuffle state the stream's seed; `fingerprint()` (the files, their sizes, the seed, the batch
shape) goes into the run's fingerprint, so a checkpoint is refused for a different data set or
shuffle, and `position(step)` (epoch, rows consumed) is recorded in every checkpoint's meta.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np
from jaxtyping import PyTree

__all__ = ["Prefetcher", "Stream", "call_lengths", "stream_spec"]


@runtime_checkable
class Stream(Protocol):
    """What `Task.stream` must provide (see the module docstring).

    Attributes:
        steps_per_call: the most steps one compiled call reads (bounds host and device memory:
            two calls' rows are resident at most).
    """

    steps_per_call: int

    def read(self, start: int, n_steps: int) -> PyTree[np.ndarray]:
        """The data of global steps `[start, start + n_steps)`: leaves shaped (n_steps, ...)."""
        ...

    def spec(self, n_steps: int) -> PyTree[jax.ShapeDtypeStruct]:
        """Shapes and dtypes of `read(·, n_steps)` without reading."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able identity of the data and its order (files, sizes, seed, batch shape)."""
        ...

    def position(self, step: int) -> dict[str, Any]:
        """JSON-able reading position after `step` steps (e.g. epoch and rows consumed)."""
        ...


def stream_spec(stream: Stream, n_steps: int) -> PyTree[jax.ShapeDtypeStruct]:
    """`stream.spec(n_steps)`, checked to have a leading axis of n_steps on every leaf."""
    spec = stream.spec(n_steps)
    for leaf in jax.tree.leaves(spec):
        if not leaf.shape or leaf.shape[0] != n_steps:
            raise ValueError(f"stream.spec({n_steps}) gave a leaf of shape {leaf.shape}; every leaf needs a leading "
                             f"step axis of {n_steps}")
    return spec


def call_lengths(todo: int, steps_per_call: int, log_every: int) -> list[int]:
    """Split `todo` steps into calls of at most `steps_per_call` steps, each a multiple of
    `log_every` (`steps_per_call` is rounded down to one, at least `log_every`)."""
    per_call = max(log_every, steps_per_call // log_every * log_every)
    out = [per_call] * (todo // per_call)
    if todo % per_call:
        out.append(todo % per_call)
    return out


class Prefetcher:
    """Reads a stream's calls ahead on one background thread and puts them on the devices.

    `get(start, n)` returns the device arrays of steps `[start, start + n)` (reading them now if
    they were not asked for ahead) and, given `then=(start2, n2)`, starts reading that call at
    once, so it transfers while the caller's call computes.
    """

    def __init__(self, stream: Stream, put: Callable[[Any], Any]):
        self.stream, self.put = stream, put
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="superpos-prefetch")
        self._ahead: dict[tuple[int, int], Future] = {}  # touched only by the caller's thread

    def _load(self, start: int, n: int) -> Any:
        return self.put(self.stream.read(start, n))

    def get(self, start: int, n: int, *, then: tuple[int, int] | None = None) -> Any:
        future = self._ahead.pop((start, n), None)
        for stale in self._ahead.values():  # asked ahead for something else: drop it
            stale.cancel()
        self._ahead.clear()
        data = future.result() if future is not None else self._load(start, n)
        if then is not None:
            self._ahead[then] = self._pool.submit(self._load, *then)
        return data

    def close(self) -> None:
        for f in self._ahead.values():
            f.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
