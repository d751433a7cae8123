"""What every toy-model experiment does the same way: keys per seed, the checkpointed sweep,
final losses, the best seed per cell, per-instance metrics and the summary records.

An experiment module builds its grid, hparams and trainer, then calls `train` and reads the
rest off the `SweepResult` with these helpers, so its own file holds only its science.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from superpos_jax.toy import metrics
from superpos_jax.config import check_choices, check_positive_int, fail, to_dict
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Grid, SweepResult, run_sweep
from superpos_jax.engine.prng import GENERATORS
from superpos_jax.toy.models import toy_task
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.task import Task
from superpos_jax.engine.trainer import Trainer, make_trainer


@dataclass(frozen=True)
class TrainingConfig:
    """The training fields every toy-model experiment shares; an experiment's `Config`
    subclasses it, adds its science fields and may override these defaults."""

    seed: int = 0
    n_steps: int = 10_000
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    optimizer: Literal["adam", "adamw"] = "adamw"
    chunk_steps: int = 2_500
    log_every: int = 10
    generator: str = "hash"

    def validate_training(self) -> None:
        """Check the shared fields (call first from the experiment's `validate`)."""
        check_positive_int(self, "n_steps", "batch_size", "chunk_steps", "log_every")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", self.seed, "a non-negative integer")
        check_choices(self, "generator", GENERATORS)
        check_choices(self, "optimizer", ("adam", "adamw"))
        if not self.learning_rate > 0:
            fail("learning_rate", self.learning_rate, "> 0")
        if self.weight_decay < 0:
            fail("weight_decay", self.weight_decay, ">= 0")
        if self.n_steps % self.log_every:
            fail("n_steps", self.n_steps, f"a multiple of log_every={self.log_every}")
        if self.chunk_steps % self.log_every:
            fail("chunk_steps", self.chunk_steps, f"a multiple of log_every={self.log_every}")

    def optim(self) -> OptimConfig:
        """AdamW/Adam at this config's learning rate and weight decay."""
        return OptimConfig(name=self.optimizer, learning_rate=self.learning_rate, weight_decay=self.weight_decay)

    def toy_trainer(self, n_features: int, d_hidden: int) -> Trainer:
        """The toy-model (`toy_task`) trainer at this config's batch size, generator and optimizer."""
        task = toy_task(n_features, d_hidden, self.batch_size, generator=self.generator)  # type: ignore[arg-type]
        return make_trainer(task, self.optim(), log_every=self.log_every)


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
    out_dir: Path,
    *,
    progress: bool,
    execution: Execution,
    tag: str | None = None,
    n_steps: int | None = None,
    chunk_steps: int | None = None,
) -> SweepResult:
    """The experiment's whole grid as one checkpointed, resumable sweep in `out_dir/checkpoints`
    (`cfg.n_steps` and `cfg.chunk_steps` unless given, e.g. for a second stage trained for
    another number of steps). An experiment with several sweeps (e.g. two model sizes, which
    are static shapes) names each with `tag`: `out_dir/checkpoints/<tag>`."""
    directory = out_dir / "checkpoints" if tag is None else out_dir / "checkpoints" / tag
    return run_sweep(
        trainer, hparams, keys, n_steps=cfg.n_steps if n_steps is None else n_steps,
        chunk_steps=cfg.chunk_steps if chunk_steps is None else chunk_steps,
        checkpoint_dir=directory, progress=progress, execution=execution, grid=grid,
        fingerprint={"experiment": name, "config": to_dict(cfg), "sweep": tag},
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
