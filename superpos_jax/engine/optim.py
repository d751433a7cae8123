"""The optimizer of a sweep: any optax transformation factory, called with a per-instance
learning rate.

`make_trainer(task, optimizer)` takes an optimizer *factory*: a callable
`learning_rate -> optax.GradientTransformation` that the engine calls once per instance with
that instance's learning rate, a traced float32 scalar — `hparams["learning_rate"]` when the
instance's hparams (a mapping) hold one, else the optimizer's default
(`default_learning_rate`). Any optax optimizer and schedule fits:

    make_trainer(task, lambda lr: optax.lion(optax.cosine_decay_schedule(lr, 5000)))

`OptimConfig` is the ready-made factory of Adam/AdamW with warm-up, decay and clipping built
from optax's own schedules; its `learning_rate` field is its default. A factory that is not
an `OptimConfig` defaults to `DEFAULT_LEARNING_RATE`. The task's own `transform` is chained
before the optimizer (`make_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike

from superpos_jax.config import fail, in_range, non_negative, positive, validate

OptimizerFactory = Callable[[Array], optax.GradientTransformation]
"""`learning_rate -> optax.GradientTransformation`, called per instance (traced learning rate)."""

DEFAULT_LEARNING_RATE: float = 1e-3
"""The learning rate of an instance without `hparams["learning_rate"]`, for a factory that is
not an `OptimConfig` (an `OptimConfig` uses its own `learning_rate`)."""

_moment = in_range(0.0, 1.0, closed="[)")


@dataclass(frozen=True)
class OptimConfig:
    """Adam/AdamW and a learning-rate schedule, as an optimizer factory (`lr -> transform`).

    The base learning rate is per instance: `hparams["learning_rate"]` when present,
    otherwise `learning_rate` here. The schedule multiplies it by a factor in [0, 1] as a
    function of the update count t (0 for the first update):

    * "constant" / "warmup": a linear warm-up `(t + 1) / warmup_steps` for the first
      `warmup_steps` updates (none when `warmup_steps` is 0), then 1;
    * "linear" / "cosine": the warm-up, then a linear or cosine decay to `final_fraction`
      at `total_steps` (held after it). The decay spans the steps after the warm-up, or,
      with `decay_steps`, only the last `decay_steps` steps (as in the April-2024 SAE recipe).

    `clip_norm` clips each instance's gradient to that global norm before the optimizer.
    Built from `optax.adam`/`optax.adamw`, `optax.linear_schedule`,
    `optax.cosine_decay_schedule` and `optax.join_schedules`.
    """

    name: Literal["adam", "adamw"] = "adamw"
    learning_rate: Annotated[float, positive] = 1e-3
    weight_decay: Annotated[float, non_negative] = 0.01
    b1: Annotated[float, _moment] = 0.9
    b2: Annotated[float, _moment] = 0.999
    eps: Annotated[float, non_negative] = 1e-8
    schedule: Literal["constant", "warmup", "linear", "cosine"] = "constant"
    warmup_steps: Annotated[int, non_negative] = 0
    total_steps: Annotated[int | None, positive] = None
    final_fraction: Annotated[float, in_range(0.0, 1.0)] = 0.0
    decay_steps: Annotated[int | None, positive] = None
    clip_norm: Annotated[float | None, positive] = None

    def __post_init__(self) -> None:
        validate(self)

    def check(self) -> None:
        """The constraints between fields (`config.validate` calls it)."""
        decays = self.schedule in ("linear", "cosine")
        if decays and (self.total_steps is None or self.total_steps <= self.warmup_steps):
            fail("total_steps", self.total_steps,
                 f"an integer > warmup_steps={self.warmup_steps} for schedule {self.schedule!r}")
        if self.decay_steps is not None:
            if not decays:
                fail("decay_steps", self.decay_steps, f"None for schedule {self.schedule!r} (it needs 'linear' or 'cosine')")
            span = self.total_steps - self.warmup_steps  # type: ignore[operator]
            if self.decay_steps > span:
                fail("decay_steps", self.decay_steps, f"<= total_steps - warmup_steps = {span}")

    @property
    def scheduled(self) -> bool:
        """Whether the learning rate varies with the step (else it is the constant base)."""
        return self.schedule in ("linear", "cosine") or self.warmup_steps >= 2

    def learning_rate_schedule(self, learning_rate: ArrayLike) -> optax.Schedule:
        """The schedule `update count -> learning rate` for base rate `learning_rate`
        (`learning_rate_schedule(1.0)` is the factor of the class docstring)."""
        lr = learning_rate
        warm = self.warmup_steps
        pieces: list[tuple[int, optax.Schedule]] = []  # (first step, schedule from there)
        if warm >= 2:
            # lr (t + 1) / warm for t < warm, then held at lr.
            pieces.append((0, optax.linear_schedule(lr / warm, lr, warm - 1)))
        if self.schedule in ("linear", "cosine"):
            total = self.total_steps
            span = self.decay_steps if self.decay_steps is not None else total - warm  # type: ignore[operator]
            start = total - span  # type: ignore[operator]
            if start > (warm if pieces else 0):
                pieces.append((warm if pieces else 0, optax.constant_schedule(lr)))
            if self.schedule == "linear":
                decay = optax.linear_schedule(lr, self.final_fraction * lr, span)
            else:
                decay = optax.cosine_decay_schedule(lr, span, alpha=self.final_fraction)
            pieces.append((start, decay))
        if not pieces:
            return optax.constant_schedule(lr)
        if len(pieces) == 1:
            return _standard_promotion(pieces[0][1])
        return _standard_promotion(optax.join_schedules([s for _, s in pieces], [b for b, _ in pieces[1:]]))

    def __call__(self, learning_rate: ArrayLike) -> optax.GradientTransformation:
        """The optimizer for one instance: gradient clipping (when set), then Adam/AdamW at
        `learning_rate` under this config's schedule."""
        lr = self.learning_rate_schedule(learning_rate) if self.scheduled else learning_rate
        if self.name == "adamw":
            core = optax.adamw(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)
        else:
            core = optax.adam(lr, b1=self.b1, b2=self.b2, eps=self.eps)
        if self.clip_norm is None:
            return core
        return optax.chain(optax.clip_by_global_norm(self.clip_norm), core)


def default_learning_rate(optimizer: OptimConfig | OptimizerFactory) -> float:
    """The learning rate of an instance whose hparams hold none: an `OptimConfig`'s own
    `learning_rate`, else `DEFAULT_LEARNING_RATE`."""
    return optimizer.learning_rate if isinstance(optimizer, OptimConfig) else DEFAULT_LEARNING_RATE


def check_optimizer(optimizer: Any) -> None:
    """Raise a clear `ValueError` unless `optimizer` is a factory of optax transformations
    (it is called once here, with the default learning rate; nothing is compiled)."""
    if isinstance(optimizer, OptimConfig):
        return
    if isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            "optimizer is an optax.GradientTransformation; pass a factory of the learning rate "
            "instead, e.g. `lambda lr: optax.adam(lr)`: the engine calls it with each instance's "
            "learning rate (hparams['learning_rate'])"
        )
    if not callable(optimizer):
        raise ValueError(
            f"optimizer must be an OptimConfig or a callable learning_rate -> optax.GradientTransformation, "
            f"got {type(optimizer).__name__}: {optimizer!r}"
        )
    with _optax_promotion():
        made = optimizer(jnp.float32(default_learning_rate(optimizer)))
    if not (callable(getattr(made, "init", None)) and callable(getattr(made, "update", None))):
        raise ValueError(
            f"optimizer factory {optimizer!r} returned {type(made).__name__}, not an optax.GradientTransformation"
        )


def make_optimizer(
    optimizer: OptimConfig | OptimizerFactory,
    learning_rate: ArrayLike,
    transform: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """`optimizer(learning_rate)`, preceded by `transform` (a task's own gradient
    transformation) when given."""
    core = optimizer(learning_rate)
    return core if transform is None else optax.chain(transform, core)


def _standard_promotion(schedule: optax.Schedule) -> optax.Schedule:
    """`schedule`, evaluated under standard dtype promotion (optax mixes int counts and floats)."""

    def evaluate(count: ArrayLike) -> Array:
        with _optax_promotion():
            return schedule(count)

    return evaluate


def _optax_promotion():
    """optax computes e.g. `b1 ** count` (float ** int32), which strict dtype promotion
    rejects; let the optimizer's own arithmetic use standard promotion."""
    return jax.numpy_dtype_promotion("standard")
