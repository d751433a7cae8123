"""`OptimConfig` and the optimizer it builds: Adam/AdamW with a per-instance learning rate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

SCHEDULES: tuple[str, ...] = ("constant", "warmup", "linear", "cosine")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")

@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule shared by every instance of a sweep.

    The base learning rate is per instance: `hparams["learning_rate"]` when present,
    otherwise `learning_rate` here. The schedule multiplies it by a factor in [0, 1]:
    "constant"; "warmup" (linear 0 → 1 over `warmup_steps`, then 1); "linear" and "cosine"
    (warm-up, then decay to `final_fraction` at `total_steps`; with `decay_steps`, the decay
    spans only the last `decay_steps` steps, as in the April-2024 SAE recipe). `clip_norm`
    clips each instance's gradient to that global norm before the optimizer.
    """

    name: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["constant", "warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    final_fraction: float = 0.0
    decay_steps: int | None = None
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule in ("linear", "cosine") and (
            self.total_steps is None or self.total_steps <= self.warmup_steps
        ):
            raise ValueError(
                f"schedule {self.schedule!r} needs total_steps > warmup_steps "
                f"(got total_steps={self.total_steps}, warmup_steps={self.warmup_steps})"
            )
        if self.decay_steps is not None and not (
            self.schedule in ("linear", "cosine")
            and 0 < self.decay_steps <= self.total_steps - self.warmup_steps  # type: ignore[operator]
        ):
            raise ValueError(
                f"decay_steps={self.decay_steps} needs schedule 'linear' or 'cosine' and "
                f"0 < decay_steps <= total_steps - warmup_steps"
            )
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")


def lr_multiplier(optim: OptimConfig) -> Callable[[Array], Array]:
    """The schedule's factor as a function of the optimizer's step count."""
    warm = max(optim.warmup_steps, 1)

    def factor(count: Array) -> Array:
        t = jnp.asarray(count, jnp.float32)
        warmup = jnp.minimum((t + 1.0) / warm, 1.0) if optim.warmup_steps else jnp.float32(1.0)
        if optim.schedule in ("constant", "warmup"):
            return warmup
        total = optim.total_steps
        span = float(optim.decay_steps or total - optim.warmup_steps)  # type: ignore[operator]
        frac = jnp.clip((t - (total - span)) / span, 0.0, 1.0)  # type: ignore[operator]
        if optim.schedule == "linear":
            decay = 1.0 - frac
        else:
            decay = 0.5 * (1.0 + jnp.cos(math.pi * frac))
        lo = optim.final_fraction
        return warmup * (lo + (1.0 - lo) * decay)

    return factor


# Only the learning rate is injected (traced per instance); the rest stay Python floats.
_STATIC = ("b1", "b2", "eps")


def make_optimizer(
    optim: OptimConfig,
    learning_rate: Array | float,
    transform: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """Adam/AdamW with the learning rate injected as (per-instance, traced) state, preceded by
    `transform` (a task's own gradient transformation) and gradient clipping, when given."""
    first = [t for t in (transform,) if t is not None]
    if optim.clip_norm is not None:
        first.append(optax.clip_by_global_norm(optim.clip_norm))
    core = _core_optimizer(optim, learning_rate)
    return optax.chain(*first, core) if first else core


def _core_optimizer(optim: OptimConfig, learning_rate: Array | float) -> optax.GradientTransformation:
    if optim.name == "adamw":
        base = optax.inject_hyperparams(optax.adamw, static_args=_STATIC + ("weight_decay",))(
            learning_rate=learning_rate,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
    else:
        base = optax.inject_hyperparams(optax.adam, static_args=_STATIC)(
            learning_rate=learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps
        )
    if optim.schedule == "constant" and optim.warmup_steps == 0:
        return base
    return optax.chain(base, optax.scale_by_schedule(lr_multiplier(optim)))


def _optax_promotion():
    """optax computes e.g. `b1 ** count` (float ** int32), which strict dtype promotion
    rejects; let the optimizer's own arithmetic use standard promotion."""
    return jax.numpy_dtype_promotion("standard")
