"""What every experiment does the same way: the shared config fields (`RunConfig`,
`TrainingConfig`, with their constraints declared once), keys per seed, the checkpointed sweep
in the run directory (`train`), final losses, the best seed per cell, per-instance metrics
and the summary records.

An experiment module builds its grid, hparams and trainer, then calls `train` and reads the
rest off the `SweepResult` with these helpers, so its own file holds only its science.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from superpos_jax.toy import metrics
from superpos_jax.config import (
    NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, each, fail, in_range, non_empty, one_of, to_dict,
)
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Grid, SweepResult, run_sweep
from superpos_jax.engine.prng import GENERATORS
from superpos_jax.toy.models import MODEL_KINDS, toy_task
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.task import Task
from superpos_jax.engine.trainer import Trainer, make_trainer
from superpos_jax.rundir import RunDir


ToyModel = Annotated[str, one_of(*MODEL_KINDS)]
"""A toy model's output nonlinearity: "linear" or "relu"."""
ToyModels = Annotated[tuple[str, ...], non_empty, each(one_of(*MODEL_KINDS))]
"""A non-empty list of toy model kinds (a grid axis)."""
Fractions = Annotated[tuple[float, ...], non_empty, each(in_range(0.0, 1.0, closed="(]"))]
"""A non-empty list of dimensionality fractions in (0, 1] (geometry's reference lines)."""


@dataclass(frozen=True)
class RunConfig:
    """The fields every experiment's sweep has: the seed, its length, its chunks and how often
    it logs. An experiment's `Config` subclasses this (or `TrainingConfig`), adds its science
    fields and may override these defaults — with the same annotated types, which carry the
    constraints.

    `STEP_FIELDS` names the step counts that must be multiples of `log_every` (a subclass with
    a second training stage adds its own, e.g. `sae_steps`)."""

    STEP_FIELDS: ClassVar[tuple[str, ...]] = ("n_steps", "chunk_steps")

    seed: NonNegativeInt = 0
    n_steps: PositiveInt = 10_000
    chunk_steps: PositiveInt = 2_500
    log_every: PositiveInt = 10

    def check(self) -> None:
        """n_steps, chunk_steps (and every other step count in `STEP_FIELDS`) are multiples of log_every."""
        for name in self.STEP_FIELDS:
            value = getattr(self, name)
            if value % self.log_every:
                fail(name, value, f"a multiple of log_every={self.log_every}")


@dataclass(frozen=True)
class TrainingConfig(RunConfig):
    """`RunConfig` plus the optimizer and data fields every toy-model experiment shares."""

    batch_size: PositiveInt = 1024
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    optimizer: Literal["adam", "adamw"] = "adamw"
    generator: Annotated[str, one_of(*GENERATORS)] = "hash"

    def optim(self) -> OptimConfig:
        """AdamW/Adam at this config's learning rate and weight decay."""
        return OptimConfig(name=self.optimizer, learning_rate=self.learning_rate, weight_decay=self.weight_decay)

    def toy_trainer(self, n_features: int, d_hidden: int) -> Trainer:
        """The toy-model (`toy_task`) trainer at this config's batch size, generator and optimizer."""
        task = toy_task(n_features, d_hidden, self.batch_size, generator=self.generator)  # type: ignore[arg-type]
        return make_trainer(task, self.optim(), log_every=self.log_every)


def dictionary_sweep_mode(
    requested: str, sizes: Any, *, backend: str | None = None, out_dir: RunDir | None = None, tag_prefix: str = ""
) -> str:
    """How a dictionary-size sweep is trained: `requested` ("masked", "per_size" or "auto"), with
    "auto" resolved to "per_size" on CPU and "masked" on an accelerator (`backend`: default
    `jax.default_backend()`), or, when `out_dir` already holds checkpoints of one mode (a resumed
    run: tags `{tag_prefix}masked` or `{tag_prefix}N{size}`), to that mode."""
    if requested != "auto":
        return requested
    if out_dir is not None:
        tags = {p.name for p in out_dir.checkpoint_dirs()}
        if f"{tag_prefix}masked" in tags:
            return "masked"
        if any(f"{tag_prefix}N{n}" in tags for n in sizes):
            return "per_size"
    return "per_size" if (backend or jax.default_backend()) == "cpu" else "masked"


def seed_keys(seed: int, grid: Grid, axis: str = "seed") -> jax.Array:
    """One key per instance: `fold_in(key(seed), seed value)`, so instances that differ only in
    other axes share their initialisation and data (common random numbers)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(grid.column(axis), jnp.uint32))


def train(
    name: str,
    cfg: Any,
    grid: Grid,
    hparams: Any,
    keys: jax.Array,
    trainer: Trainer,
    out_dir: RunDir,
    *,
    progress: bool,
    execution: Execution,
    tag: str | None = None,
    n_steps: int | None = None,
    chunk_steps: int | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> SweepResult:
    """The experiment's whole grid as one checkpointed, resumable sweep in the run directory
    (`cfg.n_steps` and `cfg.chunk_steps` unless given, e.g. for a second stage trained for
    another number of steps), logging every chunk to its metrics.jsonl. An experiment with
    several sweeps (e.g. two model sizes, which are static shapes) names each with `tag`
    (its checkpoints go to `checkpoints/<tag>`). `fingerprint` adds what else must match when
    the run is resumed (e.g. the corpus's fingerprint) to the experiment's name and config."""
    return run_sweep(
        trainer, hparams, keys, n_steps=cfg.n_steps if n_steps is None else n_steps,
        chunk_steps=cfg.chunk_steps if chunk_steps is None else chunk_steps,
        checkpoint_dir=out_dir.checkpoint_dir(tag), progress=progress, execution=execution, grid=grid,
        fingerprint={"experiment": name, "config": to_dict(cfg), "sweep": tag, **(fingerprint or {})},
        metrics=out_dir.metrics_log(tag),
    )


def final_losses(result: SweepResult, tail: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss over the last `tail` of the windows per instance, and whether it is usable
    (finite and never reported non-finite). Shapes (instance,), (instance,)."""
    windows = max(1, int(result.losses.shape[1] * tail))
    final = np.nanmean(result.losses[:, -windows:], axis=1)
    ok = np.isfinite(final) & ~np.isin(np.arange(final.shape[0]), list(result.non_finite))
    return final, ok


def best_along(grid: Grid, final: np.ndarray, ok: np.ndarray, axis: str = "seed") -> np.ndarray:
    """Index of the lowest-loss usable instance along `axis` for every other grid cell.

    Returns an integer array of the grid's shape without `axis`.
    """
    folded = grid.fold(np.where(ok, final, np.inf))
    return np.argmin(folded, axis=grid.names.index(axis))


def take_best(grid: Grid, values: np.ndarray, best: np.ndarray, axis: str = "seed") -> np.ndarray:
    """`values` (instance, ...) folded to the grid and indexed by `best` along `axis`."""
    folded = grid.fold(values)
    k = grid.names.index(axis)
    idx = best.reshape(best.shape[:k] + (1,) + best.shape[k:] + (1,) * (folded.ndim - len(grid.shape)))
    return np.take_along_axis(folded, idx, axis=k).squeeze(k)


def toy_metrics(W: np.ndarray) -> dict[str, np.ndarray]:
    """Per-instance feature metrics of W (instance, hidden, feature), as host arrays."""
    per = jax.vmap(lambda w: {
        "feature_norms": metrics.feature_norms(w),
        "superposition": metrics.superposition(w),
        "dimensionality": metrics.feature_dimensionality(w),
        "dimensions_per_feature": metrics.dimensions_per_feature(w),
        "n_represented": metrics.n_represented(w),
    })(jnp.asarray(W, jnp.float32))
    return jax.tree.map(np.asarray, per)


class ToySweep(NamedTuple):
    """A trained toy-model sweep, read for analysis (unpacks in this order). Arrays are host
    NumPy, one row per instance.

    Attributes:
        grid, result: the sweep's grid and `SweepResult`.
        W: final weights, shape (instance, hidden, feature).
        per: `toy_metrics(W)`.
        final_loss, finite: `final_losses(result)`.
    """

    grid: Grid
    result: SweepResult
    W: np.ndarray
    per: dict[str, np.ndarray]
    final_loss: np.ndarray
    finite: np.ndarray


def train_toy(
    name: str, cfg: Any, built: tuple[Grid, Any, jax.Array, Trainer], out_dir: RunDir, *,
    progress: bool, execution: Execution,
) -> ToySweep:
    """`train` a toy-model experiment's `build(cfg)` = (grid, hparams, keys, trainer) and read
    off what every toy analysis starts from: weights, feature metrics and final losses."""
    grid, hparams, keys, trainer = built
    result = train(name, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    W = np.asarray(result.state.params.W)
    final, ok = final_losses(result)
    return ToySweep(grid, result, W, toy_metrics(W), final, ok)


def seed_loss_curves(
    grid: Grid, result: SweepResult, label: Callable[[dict[str, Any]], str], *, log_every: int, seed: int = 0
) -> Any:
    """The loss-curve figure of every instance with `seed` (one curve per other grid cell),
    each labelled `label(coords)`."""
    from superpos_jax import plots

    chosen = np.flatnonzero(grid.column("seed") == seed)
    return plots.loss_curves(result.losses[chosen], [label(grid.coords(int(i))) for i in chosen], log_every=log_every)


def instance_records(grid: Grid, final: np.ndarray, ok: np.ndarray, per: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One summary record per instance: its grid coordinates, final loss and metrics."""
    records = []
    for i in range(grid.size):
        record: dict[str, Any] = {"coords": grid.coords(i), "final_loss": float(final[i]), "finite": bool(ok[i])}
        for key, values in per.items():
            v = values[i]
            record[key] = v.round(5).tolist() if np.ndim(v) else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))
        records.append(record)
    return records


def run_record(grid: Grid, result: SweepResult, ok: np.ndarray) -> dict[str, Any]:
    """The summary fields every experiment reports: grid, timing, layout, bad instances."""
    return {
        "grid": {k: list(v) for k, v in grid.axes.items()},
        "n_instances": grid.size,
        "train_seconds": result.seconds,
        "model_steps_per_second": grid.size * result.steps_per_second,
        "execution": result.plan.as_dict(),
        "non_finite_instances": [
            {"instance": int(i), "coords": grid.coords(int(i)), "detected_by_step": result.non_finite.get(int(i))}
            for i in np.flatnonzero(~ok)
        ],
    }


def best_of_seeds(task: Task, n_seeds: int, eval_batches: int) -> Callable[..., Any]:
    """A jitted `select(params, hparams, ok, key)` that picks the lowest-loss seed per grid cell.

    Instances must be ordered cell-major with the seed axis last (a `Grid` whose last axis is
    "seed"): instance = cell · n_seeds + seed. Every instance's final params are scored by the
    task's loss averaged over `eval_batches` fresh batches drawn from `key` — the same batches
    for every instance, so seeds are compared on identical data — and instances that are not
    `ok` (or score non-finite) never win.

    `select` returns `(best_params, best_loss, best_seed, loss)`: params with leaves
    (cell, ...), best_loss (cell,), best_seed (cell,) int32 and every instance's loss (instance,).
    """

    def score(params: PyTree, hparams: PyTree, key: PRNGKeyArray) -> Array:
        keys = jax.random.split(key, eval_batches)
        losses = jax.lax.map(lambda k: task.loss(params, task.sample(hparams, key=k), hparams), keys)
        return jnp.mean(losses)

    @jax.jit
    def select(
        params: PyTree, hparams: PyTree, ok: Bool[ArrayLike, " instance"], key: PRNGKeyArray
    ) -> tuple[PyTree, Float[Array, " cell"], Int[Array, " cell"], Float[Array, " instance"]]:
        loss = jax.vmap(score, in_axes=(0, 0, None))(params, hparams, key)
        usable = jnp.asarray(ok) & jnp.isfinite(loss)
        by_cell = jnp.where(usable, loss, jnp.inf).reshape(-1, n_seeds)
        best = jnp.argmin(by_cell, axis=1)

        def gather(leaf: Array) -> Array:
            folded = leaf.reshape(by_cell.shape + leaf.shape[1:])
            index = best.reshape(best.shape + (1,) * (folded.ndim - 1))
            return jnp.take_along_axis(folded, index, axis=1).squeeze(1)

        return jax.tree.map(gather, params), jnp.min(by_cell, axis=1), best.astype(jnp.int32), loss

    return select
