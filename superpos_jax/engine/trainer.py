"""The training engine: a `Task` becomes a vmapped init and a jitted, vmapped `lax.scan`.

A model family plugs in by supplying a `Task` (`superpos_jax.engine.task`) of three pure,
single-instance functions:

    init(hparams, *, key)          -> params
    sample(hparams, *, key)        -> batch
    loss(params, batch, hparams)   -> scalar        (or (scalar, aux) with `has_aux`)

and, where it needs them, optional pieces: `shared` (arrays every instance reads, e.g. a
corpus or a frozen model, passed to every callable of the task as `shared=`: an argument of
the compiled call, replicated, never a constant baked into the program), `transform` (a gradient
transformation chained before the optimizer, e.g. an SAE's unit-norm decoder), `init_extra`
(task state carried beside the parameters, e.g. firing counts), `prepare` (per-step
hyperparameters from the state, e.g. a warm-up or a dead-latent mask) and `after_update`
(a pure edit of the state after each update: projection, resampling, running statistics).

`hparams` is a pytree of arrays for one instance (feature probabilities, importance,
learning rate, model-kind flags, ...). `make_trainer(task, optimizer)` returns a `Trainer`
whose `init` maps over a leading instance axis of keys and hparams, and whose `run` advances
every instance by `n_steps` inside one compiled call, donating the state. The optimizer is
any factory `learning_rate -> optax.GradientTransformation`, called per instance with its
own traced learning rate (`OptimConfig` is the ready-made Adam/AdamW; see
`superpos_jax.engine.optim`). Given a mesh, both programs are compiled with their instance
axes sharded over it (`Trainer.on(mesh)`); `lower_init` and `lower_run` give them lowered,
for ahead-of-time compilation, memory analysis or reading their HLO.

Per-step data come from `jax.random.fold_in(data_key, step)`, so the batches an instance
sees depend only on its key and the global step: a run split into chunks (or resumed from
a checkpoint) sees exactly the data of an uninterrupted run.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy.typing as npt
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int, Key, PRNGKeyArray, PyTree, UInt

from superpos_jax.engine.distributed import instance_sharding, to_global
from superpos_jax.engine.optim import (
    OptimConfig,
    OptimizerFactory,
    _optax_promotion,
    check_optimizer,
    default_learning_rate,
    make_optimizer,
)
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
        task: the `Task`.
        optimizer: the optimizer factory (`OptimConfig` or `learning_rate -> optax
            transformation`, see `superpos_jax.engine.optim`).
        log_every: steps per window of the loss trace (and per observation).
        mesh: when set, `init` and `run` take and return arrays whose instance axis is
            sharded over this mesh's "sweep" axis (the instance count must be a multiple of
            the mesh size); otherwise they follow their inputs' placement.
        shared: the task's shared arrays, placed on the devices once (replicated over the
            mesh; None without). They are an argument of every compiled call, never a constant.
        observe: optional `(params, hparams) -> pytree of arrays` for one instance, evaluated
            inside the scan at the end of every window; then `run` returns
            `(state, (loss_trace, observations))`, each observation leaf shaped
            `(instance, n_steps // log_every, ...)`. No host round-trips per step.
    """

    def __init__(
        self,
        task: Task,
        optimizer: OptimConfig | OptimizerFactory = OptimConfig(),
        log_every: int = 1,
        mesh: Mesh | None = None,
        observe: Callable[[Params, Hparams], PyTree] | None = None,
    ):
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every <= 0:
            raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
        check_optimizer(optimizer)
        self.task = task
        self.optimizer = optimizer
        self.log_every = log_every
        self.mesh = mesh
        self.observe = observe
        self._on: dict[Mesh | None, Trainer] = {}
        shard: dict[str, Any] = {}
        replicated: Any = None
        if mesh is not None:
            replicated = NamedSharding(mesh, PartitionSpec())
            inst = instance_sharding(mesh)
            shard = {"in_shardings": (inst, inst, replicated), "out_shardings": inst}
        self.shared = None if task.shared is None else _place(task.shared, replicated)
        self._init_jit = jax.jit(jax.vmap(self._init_one, in_axes=(0, 0, None)), **shard)
        if mesh is not None:  # the streamed rows are replicated, like `shared`
            shard["in_shardings"] = (*shard["in_shardings"], replicated)
        # pjit takes no keyword arguments once in_shardings is given: n_steps is positional.
        self._run_jit = jax.jit(self._run, static_argnums=4, donate_argnums=0, **shard)
        self._compiled: dict[Any, jax.stages.Compiled] = {}

    def init(self, hparams: Hparams, keys: Key[Array, " instance"]) -> TrainState:
        """The initial state of every instance (batched over the leading axis of `keys`)."""
        return self._init_jit(hparams, keys, self.shared)

    def run(self, state: TrainState, hparams: Hparams, n_steps: int, streamed: PyTree = None) -> tuple[TrainState, Any]:
        """Advance every instance by `n_steps` in one compiled call (donates `state`).

        `streamed`: for a task with a `stream`, the rows of these steps (`stream.read(step,
        n_steps)`, leaves shaped (n_steps, ...)), an argument of the call.

        Returns `(state, loss_trace)`, `loss_trace` shaped `(instance, n_steps // log_every)`,
        each entry the mean loss over a window of `log_every` steps; with `observe`,
        `(state, (loss_trace, observations))`.
        """
        if self._compiled:
            key = _signature(state, hparams, streamed, n_steps)
            compiled = self._compiled.get(key)
            if compiled is not None:
                try:
                    return compiled(state, hparams, self.shared, streamed)
                except (TypeError, ValueError):  # checked before it runs: nothing was donated
                    del self._compiled[key]
        return self._run_jit(state, hparams, self.shared, streamed, n_steps)

    def keep_compiled(self, compiled: jax.stages.Compiled, state: Any, hparams: Any, n_steps: int,
                      streamed: PyTree = None) -> None:
        """Let `run` call `compiled` (of `lower_run(state, hparams, n_steps, streamed)`, arrays or
        `jax.ShapeDtypeStruct`s) for calls of these shapes, instead of compiling the same program
        again (the jit cache does not know programs compiled ahead of time)."""
        self._compiled[_signature(state, hparams, streamed, n_steps)] = compiled

    def lower_init(self, hparams: PyTree, keys: Key[Array, " instance"] | jax.ShapeDtypeStruct) -> jax.stages.Lowered:
        """The program of `init` lowered for these inputs (arrays or `jax.ShapeDtypeStruct`s),
        e.g. to compile it ahead of time or to read its HLO (`.as_text()`)."""
        return self._init_jit.lower(hparams, keys, self.shared)

    def lower_run(self, state: TrainState, hparams: PyTree, n_steps: int, streamed: PyTree = None) -> jax.stages.Lowered:
        """The program of `run(state, hparams, n_steps)` lowered for these inputs (arrays or
        `jax.ShapeDtypeStruct`s; for a streamed task, `streamed` defaults to the stream's
        `spec(n_steps)`); `.compile().memory_analysis()` gives its working set."""
        if streamed is None and self.task.stream is not None:
            from superpos_jax.engine.stream import stream_spec

            streamed = stream_spec(self.task.stream, n_steps)
        return self._run_jit.lower(state, hparams, self.shared, streamed, n_steps)

    def on(self, mesh: Mesh | None) -> Trainer:
        """This trainer compiled for `mesh` (itself if it already is; cached per mesh)."""
        if mesh == self.mesh:
            return self
        if mesh not in self._on:
            self._on[mesh] = Trainer(self.task, self.optimizer, self.log_every, mesh, self.observe)
        return self._on[mesh]

    def learning_rate(self, hparams: Hparams) -> Array:
        """One instance's base learning rate: `hparams["learning_rate"]` when the hparams (a
        mapping) hold one, else the optimizer's default (`optim.default_learning_rate`)."""
        if isinstance(hparams, Mapping) and "learning_rate" in hparams:
            return jnp.asarray(hparams["learning_rate"])
        return jnp.asarray(default_learning_rate(self.optimizer), jnp.float32)

    def _optimizer(self, hparams: Hparams, shared: dict[str, Any]) -> optax.GradientTransformation:
        transform = None if self.task.transform is None else self.task.transform(hparams, **shared)
        return make_optimizer(self.optimizer, self.learning_rate(hparams), transform)

    def _shared(self, shared: PyTree | None) -> dict[str, Any]:
        return self.task.shared_kwargs(self.shared if shared is None else shared)

    def _init_one(self, hparams: Hparams, key: PRNGKeyArray, shared: PyTree | None = None) -> TrainState:
        kw = self._shared(shared)
        init_key, data_key = jax.random.split(key)
        params = self.task.init(hparams, key=init_key, **kw)
        with _optax_promotion():
            opt_state = self._optimizer(hparams, kw).init(eqx.filter(params, eqx.is_array))
        extra = () if self.task.init_extra is None else self.task.init_extra(params, hparams, **kw)
        return TrainState(params, opt_state, jnp.int32(0), jax.random.key_data(data_key), extra)

    def batch(self, state: TrainState, hparams: Hparams, shared: PyTree | None = None, data: Any = None) -> Any:
        """The batch one instance trains on at `state.step` (un-jitted, single instance;
        `hparams` as returned by the task's `prepare`, `shared` defaults to `self.shared`;
        `data`: for a fed task, this step's `feed`)."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
        fed = {"data": data} if self.task.fed else {}
        return self.task.sample(hparams, key=key, **fed, **self._shared(shared))

    def feed(self, step: Int[Array, ""], streamed: PyTree, shared: PyTree | None = None) -> Any:
        """A fed task's data of global `step` for every instance (`streamed`: that step's
        streamed rows or None; un-jitted)."""
        if self.task.feed is None:
            return streamed
        r = self.task.feed_every
        if r == 1:
            return self.task.feed(step, streamed, **self._shared(shared))
        return _row_of(self.task.feed(step - step % r, streamed, **self._shared(shared)), step % r)

    def step_one(
        self, state: TrainState, hparams: Hparams, shared: PyTree | None = None, data: Any = None
    ) -> tuple[TrainState, Float[Array, ""]]:
        """One optimisation step of one instance (un-jitted; `run` scans and vmaps it;
        `shared` defaults to `self.shared`; `data`: a fed task's `feed` of this step)."""
        task = self.task
        kw = self._shared(shared)
        hp = hparams if task.prepare is None else task.prepare(hparams, state, **kw)
        batch = self.batch(state, hp, shared, data)
        loss_fn = functools.partial(task.loss, **kw)
        if task.has_aux:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, hp)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, hp)
            aux = None
        with _optax_promotion():
            updates, opt_state = self._optimizer(hparams, kw).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(params, opt_state, state.step + 1, state.key, state.extra)
        if task.after_update is not None:
            new = task.after_update(new, batch, aux, hp, **kw)
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

    def _run_fed(self, state: TrainState, hparams: Hparams, shared: PyTree | None, streamed: PyTree, n_steps: int):
        """Steps outside, instances inside: the feed is computed once per step for all of them."""
        n_windows = n_steps // self.log_every
        xs = None if streamed is None else jax.tree.map(
            lambda a: a.reshape(n_windows, self.log_every, *a.shape[1:]), streamed)
        each = jax.vmap(lambda s, h, d: self.step_one(s, h, shared, d), in_axes=(0, 0, None))
        r = self.task.feed_every
        kw = self._shared(shared)
        t0 = state.step[0]

        def step(c: tuple[TrainState, Any], x: Any):
            s, group = c  # group: the data of the feed period that step t lies in (None when r = 1)
            t = s.step[0]
            if r == 1:
                data = self.feed(t, x, shared)
            else:  # a period starts here (the call's first one is computed before the scan)
                group = jax.lax.cond((t % r == 0) & (t != t0), lambda g: self.task.feed(t, None, **kw), lambda g: g, group)
                data = _row_of(group, t % r)
            s, losses = each(s, hparams, data)
            return (s, group), losses

        def window(c: tuple[TrainState, Any], xw: Any):
            c, losses = jax.lax.scan(step, c, xw, length=self.log_every)
            mean = jnp.mean(losses, axis=0)
            if self.observe is None:
                return c, mean
            return c, (mean, jax.vmap(self.observe)(c[0].params, hparams))

        first = None if r == 1 else self.task.feed(t0 - t0 % r, None, **kw)
        (state, _), out = jax.lax.scan(window, (state, first), xs, length=n_windows)
        return state, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), out)  # (instance, window, ...)

    def _run(self, state: TrainState, hparams: Hparams, shared: PyTree | None, streamed: PyTree, n_steps: int):
        if n_steps % self.log_every:
            raise ValueError(f"n_steps={n_steps} is not a multiple of log_every={self.log_every}")
        if self.task.stream is not None and streamed is None:
            raise ValueError("this task streams its data: pass `streamed=task.stream.read(step, n_steps)`")
        if self.task.fed:
            return self._run_fed(state, hparams, shared, streamed, n_steps)
        return jax.vmap(self._run_one, in_axes=(0, 0, None, None))(state, hparams, shared, n_steps)


def _row_of(group: PyTree, i: Array) -> PyTree:
    """Row i (traced) of every leaf of a feed period's data (leading axis: the period's steps)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), group)


def _signature(state: Any, hparams: Any, streamed: Any, n_steps: int) -> Any:
    leaves, tree = jax.tree.flatten((state, hparams, streamed))
    return n_steps, tree, tuple((tuple(a.shape), str(a.dtype)) for a in leaves)


def _place(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Put the task's shared arrays on the devices once (replicated over a mesh)."""
    return jax.tree.map(jnp.asarray, tree) if sharding is None else to_global(tree, sharding)


def make_trainer(
    task: Task,
    optimizer: OptimConfig | OptimizerFactory = OptimConfig(),
    *,
    log_every: int = 1,
    mesh: Mesh | None = None,
    observe: Callable[[Params, Hparams], PyTree] | None = None,
) -> Trainer:
    """Build the compiled, vmapped trainer of `task`.

    Args:
        task: what is trained.
        optimizer: an `OptimConfig`, or any factory `learning_rate -> optax.GradientTransformation`
            called per instance with its traced learning rate (`hparams["learning_rate"]`, else
            `optim.DEFAULT_LEARNING_RATE`), e.g.
            `lambda lr: optax.lion(optax.cosine_decay_schedule(lr, 5000))`. The task's
            `transform` is chained before it.
        log_every: steps per window of the loss trace.
        mesh: shard the instance axis over this mesh (default: follow the inputs).
        observe: `(params, hparams) -> pytree`, recorded at the end of every window.

    Raises:
        ValueError: `log_every` is not a positive integer, or `optimizer` is not a factory
            of optax transformations.
    """
    return Trainer(task, optimizer, log_every, mesh, observe)


def instance_keys(seeds: npt.ArrayLike) -> Key[Array, " instance"]:
    """One PRNG key per instance from integer seeds (equal seeds give equal keys)."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
