"""The training engine: a `Task` becomes a vmapped init and a jitted, vmapped `lax.scan`.

A model family plugs in by supplying a `Task` of three pure, single-instance functions:

    init(hparams, *, key)          -> params
    sample(hparams, *, key)        -> batch
    loss(params, batch, hparams)   -> scalar        (or (scalar, aux) with `has_aux`)

and, where it needs them, optional pieces: `shared` (arrays every instance reads, e.g. a
corpus or a frozen model, passed to `init` and `sample` as `shared=`: an argument of the
compiled call, replicated, never a constant baked into the program), `transform` (a gradient
transformation chained before the optimizer, e.g. an SAE's unit-norm decoder), `init_extra`
(task state carried beside the parameters, e.g. firing counts), `prepare` (per-step
hyperparameters from the state, e.g. a warm-up or a dead-latent mask) and `after_update`
(a pure edit of the state after each update: projection, resampling, running statistics).

`hparams` is a pytree of arrays for one instance (feature probabilities, importance,
learning rate, model-kind flags, ...). `make_trainer` returns a `Trainer` whose `init`
maps over a leading instance axis of keys and hparams, and whose `run` advances every
instance by `n_steps` inside one compiled call, donating the state. Given a mesh, both are
compiled with their instance axes sharded over it (`Trainer.on(mesh)`).

Per-step data come from `jax.random.fold_in(data_key, step)`, so the batches an instance
sees depend only on its key and the global step: a run split into chunks (or resumed from
a checkpoint) sees exactly the data of an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy.typing as npt
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Float, Int, Key, PRNGKeyArray, PyTree, UInt

from superpos_jax.distributed import instance_sharding, to_global

Hparams = PyTree[ArrayLike]
Params = PyTree[Array]

SCHEDULES: tuple[str, ...] = ("constant", "warmup", "linear", "cosine")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")


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


class TrainState(eqx.Module):
    """Everything that evolves during training, for one instance (or, batched, for all).

    `key` holds raw key data (uint32) so the state checkpoints as plain arrays.
    """

    params: Params
    opt_state: optax.OptState
    step: Int[Array, ""]
    key: UInt[Array, " key_data"]
    extra: PyTree = ()


def step_key(state: TrainState, salt: int) -> PRNGKeyArray:
    """A key for randomness inside a step other than its batch (e.g. resampling), a pure
    function of the instance's key, its step and `salt` (so resumed runs draw the same)."""
    base = jax.random.fold_in(jax.random.wrap_key_data(state.key), salt)
    return jax.random.fold_in(base, state.step)


class Trainer:
    """Compiled, vmapped training for one `Task` (build it with `make_trainer`).

    Attributes:
        init: `(hparams, keys) -> TrainState`, batched over the leading instance axis
            (compiled: `init_jit(hparams, keys, shared)`).
        run: `(state, hparams, n_steps) -> (state, loss_trace)` (compiled:
            `run_jit(state, hparams, shared, n_steps)`, `n_steps` positional and static); `loss_trace` has shape
            `(instance, n_steps // log_every)`, each entry the mean loss over a window of
            `log_every` steps. `state` is donated.
        mesh: when set, `init` and `run` take and return arrays whose instance axis is
            sharded over this mesh's "sweep" axis (the instance count must be a multiple of
            the mesh size); otherwise they follow their inputs' placement.
        shared: the task's shared arrays, placed on the devices once (None without).
        observe: optional `(params, hparams) -> pytree of arrays` for one instance, evaluated
            inside the scan at the end of every window; then `run` returns
            `(state, (loss_trace, observations))`, each observation leaf shaped
            `(instance, n_steps // log_every, ...)`. No host round-trips per step.
    """

    def __init__(
        self,
        task: Task,
        optim: OptimConfig,
        log_every: int = 1,
        mesh: Mesh | None = None,
        observe: Callable[[Params, Hparams], PyTree] | None = None,
    ):
        if log_every <= 0:
            raise ValueError(f"log_every must be a positive integer, got {log_every}")
        self.task = task
        self.optim = optim
        self.log_every = log_every
        self.mesh = mesh
        self.observe = observe
        self._on: dict[Mesh | None, Trainer] = {}
        self.footprints: dict[Any, Any] = {}  # execution.measure_footprint's cache, per probe signature
        shard: dict[str, Any] = {}
        replicated: Any = None
        if mesh is not None:
            replicated = NamedSharding(mesh, PartitionSpec())
            inst = instance_sharding(mesh)
            shard = {"in_shardings": (inst, inst, replicated), "out_shardings": inst}
        self.shared = None if task.shared is None else _place(task.shared, replicated)
        self.init_jit = jax.jit(jax.vmap(self._init_one, in_axes=(0, 0, None)), **shard)
        # pjit takes no keyword arguments once in_shardings is given: n_steps is positional.
        self.run_jit = jax.jit(self._run, static_argnums=3, donate_argnums=0, **shard)

    def init(self, hparams: Hparams, keys: Key[Array, " instance"]) -> TrainState:
        """The initial state of every instance (batched over the leading axis of `keys`)."""
        return self.init_jit(hparams, keys, self.shared)

    def run(self, state: TrainState, hparams: Hparams, n_steps: int) -> tuple[TrainState, Any]:
        """Advance every instance by `n_steps` in one compiled call (donates `state`)."""
        return self.run_jit(state, hparams, self.shared, n_steps)

    def on(self, mesh: Mesh | None) -> Trainer:
        """This trainer compiled for `mesh` (itself if it already is; cached per mesh)."""
        if mesh == self.mesh:
            return self
        if mesh not in self._on:
            self._on[mesh] = Trainer(self.task, self.optim, self.log_every, mesh, self.observe)
        return self._on[mesh]

    def _learning_rate(self, hparams: Hparams) -> Array | float:
        if isinstance(hparams, dict) and "learning_rate" in hparams:
            return hparams["learning_rate"]
        return self.optim.learning_rate

    def _optimizer(self, hparams: Hparams) -> optax.GradientTransformation:
        transform = None if self.task.transform is None else self.task.transform(hparams)
        return make_optimizer(self.optim, self._learning_rate(hparams), transform)

    def _with_shared(self, shared: PyTree | None) -> dict[str, Any]:
        return {} if self.task.shared is None else {"shared": shared}

    def _init_one(self, hparams: Hparams, key: PRNGKeyArray, shared: PyTree | None = None) -> TrainState:
        init_key, data_key = jax.random.split(key)
        params = self.task.init(hparams, key=init_key, **self._with_shared(shared))
        with _optax_promotion():
            opt_state = self._optimizer(hparams).init(eqx.filter(params, eqx.is_array))
        extra = () if self.task.init_extra is None else self.task.init_extra(params, hparams)
        return TrainState(params, opt_state, jnp.int32(0), jax.random.key_data(data_key), extra)

    def batch(self, state: TrainState, hparams: Hparams, shared: PyTree | None = None) -> Any:
        """The batch one instance trains on at `state.step` (un-jitted, single instance;
        `hparams` as returned by the task's `prepare`, `shared` defaults to `self.shared`)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        shared = self.shared if shared is None else shared
        return self.task.sample(hparams, key=key, **self._with_shared(shared))

    def step_one(
        self, state: TrainState, hparams: Hparams, shared: PyTree | None = None
    ) -> tuple[TrainState, Float[Array, ""]]:
        """One optimisation step of one instance (un-jitted; `run` scans and vmaps it)."""
        task = self.task
        hp = hparams if task.prepare is None else task.prepare(hparams, state)
        batch = self.batch(state, hp, shared)
        if task.has_aux:
            (loss, aux), grads = jax.value_and_grad(task.loss, has_aux=True)(state.params, batch, hp)
        else:
            loss, grads = jax.value_and_grad(task.loss)(state.params, batch, hp)
            aux = None
        with _optax_promotion():
            updates, opt_state = self._optimizer(hparams).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params, opt_state, state.step + 1, state.key, state.extra)
        if task.after_update is not None:
            new = task.after_update(new, batch, aux, hp)
        return new, loss

    def _run_one(self, state: TrainState, hparams: Hparams, shared: PyTree | None, n_steps: int):
        def window(state, _):
            state, losses = jax.lax.scan(
                lambda s, _: self.step_one(s, hparams, shared), state, None, length=self.log_every
            )
            if self.observe is None:
                return state, jnp.mean(losses)
            return state, (jnp.mean(losses), self.observe(state.params, hparams))

        return jax.lax.scan(window, state, None, length=n_steps // self.log_every)

    def _run(self, state: TrainState, hparams: Hparams, shared: PyTree | None, n_steps: int):
        if n_steps % self.log_every:
            raise ValueError(f"n_steps={n_steps} is not a multiple of log_every={self.log_every}")
        return jax.vmap(self._run_one, in_axes=(0, 0, None, None))(state, hparams, shared, n_steps)


def _place(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Put the task's shared arrays on the devices once (replicated over a mesh)."""
    return jax.tree.map(jnp.asarray, tree) if sharding is None else to_global(tree, sharding)


def make_trainer(
    task: Task,
    optim: OptimConfig = OptimConfig(),
    *,
    log_every: int = 1,
    mesh: Mesh | None = None,
    observe: Callable[[Params, Hparams], PyTree] | None = None,
) -> Trainer:
    """Build the compiled, vmapped trainer of `task` (sharded over `mesh`, recording
    `observe(params, hparams)` every `log_every` steps, when given)."""
    return Trainer(task, optim, log_every, mesh, observe)


def instance_keys(seeds: npt.ArrayLike) -> Key[Array, " instance"]:
    """One PRNG key per instance from integer seeds (equal seeds give equal keys)."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
