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

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy.typing as npt
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray, PyTree, UInt

from superpos_jax.engine.distributed import instance_sharding, to_global
from superpos_jax.engine.optim import OptimConfig, _optax_promotion, make_optimizer
from superpos_jax.engine.task import Hparams, Params, Task


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
