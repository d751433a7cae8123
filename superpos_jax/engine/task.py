"""`Task`: the pure, single-instance functions that define what is trained.

A model family plugs in by supplying a `Task` of three pure, single-instance functions:

    init(hparams, *, key)          -> params
    sample(hparams, *, key)        -> batch
    loss(params, batch, hparams)   -> scalar        (or (scalar, aux) with `has_aux`)

and, where it needs them, optional pieces (see `Task`). `hparams` is a pytree of arrays for
one instance (feature probabilities, importance, learning rate, model-kind flags, ...).
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

    Attributes:
        init: `(hparams, *, key[, shared]) -> params`.
        sample: `(hparams, *, key[, shared]) -> batch`.
        loss: `(params, batch, hparams) -> scalar`, or `(scalar, aux)` when `has_aux`.
        has_aux: the loss returns `(scalar, aux)`; `aux` goes to `after_update`.
        shared: a pytree of arrays common to every instance (no instance axis), passed to
            `init` and `sample` as the keyword `shared` (only when not None).
        transform: `hparams -> optax.GradientTransformation`, chained before the optimizer
            (it receives the parameters in `update`).
        init_extra: `(params, hparams) -> pytree`, the initial `TrainState.extra`.
        prepare: `(hparams, state) -> hparams` for this step's `sample` and `loss`.
        after_update: `(state, batch, aux, hparams) -> state`, applied to the state after
            the optimizer update (its `step` already advanced); `aux` is None without `has_aux`.
    """

    init: Callable[..., Params]
    sample: Callable[..., Any]
    loss: Callable[..., Any]
    has_aux: bool = False
    shared: PyTree | None = None
    transform: Callable[[Hparams], optax.GradientTransformation] | None = None
    init_extra: Callable[[Params, Hparams], PyTree] | None = None
    prepare: Callable[[Hparams, Any], Hparams] | None = None
    after_update: Callable[[Any, Any, Any, Hparams], Any] | None = None
