"""`Task`: the pure, single-instance functions that define what is trained.

A model family plugs in by supplying a `Task` of three pure, single-instance functions:

    init(hparams, *, key)          -> params
    sample(hparams, *, key)        -> batch
    loss(params, batch, hparams)   -> scalar        (or (scalar, aux) with `has_aux`)

and, where it needs them, optional pieces (see `Task`). `hparams` is a pytree of arrays for
one instance (feature probabilities, importance, learning rate, model-kind flags, ...).

The `shared` rule: a task whose `shared` is not None (a corpus, a frozen model, an activation
store) has EVERY one of its callables — `init`, `sample`, `loss`, `transform`, `init_extra`,
`prepare`, `after_update` — called with the extra keyword argument `shared=`, the same array
tree each time: an argument of the compiled call, replicated over the mesh. A task must read
its data through that argument and never close over it, or the arrays are baked into the
compiled program as constants (slow to compile, and copied into every program).

Fed tasks: data computed once per step for every instance. A task with `feed` (a function of
the global step and `shared`, e.g. a frozen language model run on corpus windows) or with
`stream` (host data read per call, `superpos_jax.engine.stream`) has its `feed(step, streamed)`
evaluated once per step, outside the instance vmap, and its `sample` called with the extra
keyword `data=` (that step's feed, or the step's streamed rows when there is no `feed`).
With `feed_every = R > 1` the feed is evaluated once per R steps (at the steps that are
multiples of R, and at a call's first step for the group it falls in, so a resumed run
recomputes it bit for bit) and returns the data of R steps, each leaf with a leading axis of
length R; step t receives row t % R.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax
from jaxtyping import Array, ArrayLike, PyTree

Hparams = PyTree[ArrayLike]
Params = PyTree[Array]


@dataclass(frozen=True)
class Task:
    """The pure functions that define what is trained (see the module docstring).

    Every callable below also receives the keyword `shared=` when `shared` is not None (and
    only then); the signatures are written without it.

    Attributes:
        init: `(hparams, *, key) -> params`.
        sample: `(hparams, *, key) -> batch`.
        loss: `(params, batch, hparams) -> scalar`, or `(scalar, aux)` when `has_aux`.
        has_aux: the loss returns `(scalar, aux)`; `aux` goes to `after_update`.
        shared: a pytree of arrays common to every instance (no instance axis), passed to
            every callable as the keyword `shared` (only when not None).
        transform: `(hparams) -> optax.GradientTransformation`, chained before the optimizer
            (it receives the parameters in `update`).
        init_extra: `(params, hparams) -> pytree`, the initial `TrainState.extra`.
        prepare: `(hparams, state) -> hparams` for this step's `sample`, `loss` and
            `after_update`.
        after_update: `(state, batch, aux, hparams) -> state`, applied to the state after
            the optimizer update (its `step` already advanced); `aux` is None without `has_aux`.
        feed: `(step, streamed) -> data`, evaluated once per step for all instances (`step` the
            global int32 step, `streamed` that step's slice of the stream's rows or None); its
            result reaches `sample` as `data=`. Must read its arrays through `shared`.
        stream: a host `engine.stream.Stream` read per compiled call (disk data); without a
            `feed`, `sample` gets each step's streamed rows as `data=`.
        feed_every: the feed's period R in steps (see the module docstring; R > 1 needs a
            `feed` and no `stream`).
    """

    init: Callable[..., Params]
    sample: Callable[..., Any]
    loss: Callable[..., Any]
    has_aux: bool = False
    shared: PyTree | None = None
    transform: Callable[..., optax.GradientTransformation] | None = None
    init_extra: Callable[..., PyTree] | None = None
    prepare: Callable[..., Hparams] | None = None
    after_update: Callable[..., Any] | None = None
    feed: Callable[..., Any] | None = None
    stream: Any = None
    feed_every: int = 1

    def __post_init__(self) -> None:
        r = self.feed_every
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"feed_every must be a positive integer, got {r!r}")
        if r > 1 and (self.feed is None or self.stream is not None):
            raise ValueError(f"feed_every={r} needs a task with a feed and no stream")

    @property
    def fed(self) -> bool:
        """Whether `sample` receives per-step `data=` (the task has a `feed` or a `stream`)."""
        return self.feed is not None or self.stream is not None

    def shared_kwargs(self, shared: PyTree | None) -> dict[str, Any]:
        """`{"shared": shared}` for a task with shared arrays, `{}` for one without: the
        keyword arguments every callable of this task is given."""
        return {} if self.shared is None else {"shared": shared}
