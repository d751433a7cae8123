"""Superposition, memorization and double descent (Henighan et al., Anthropic 2023).

The ReLU-output toy model x' = ReLU(WᵀWx + b) with n features in m dimensions, trained on a
*finite* training set of T points drawn once from the sparse-feature distribution (feature
probability 1 − S), AdamW with weight decay and a warm-up + cosine schedule, then scored on
fresh test points. T is swept over orders of magnitude, with a few m and seeds.

Small T: the model memorises its training points — their hidden vectors h_t = W x_t form
clean geometry (T = 2 orthogonal, T = 4 a square) while the features W_i are messy; large T:
the features get the geometry and the model generalises. In between neither gets clean
dimensions, and the test loss peaks: double descent in the data set size.

Measures per model (`superpos_jax.toy.memorization`): feature dimensionality D_i and
data-point dimensionality D_t = ‖h_t‖⁴ / Σ_s (h_t·h_s)² over the training points; their
norm-weighted means Σ_i ‖W_i‖² D_i / Σ_i ‖W_i‖² and Σ_t ‖h_t‖² D_t / Σ_t ‖h_t‖² are the
"feature measure" and the "data-point measure". All T × m × seeds train as ONE compiled sweep:
the training sets are prefixes of one fixed pool per seed (the task's shared arrays, a traced T
per instance), and m is padded to the largest m with masked hidden units (exact: see the
library module). The reference setup is n = 10,000 features at S = 0.999 and 50k steps; the
default here is n = 100 at S = 0.95, which keeps ~5 active features per point and runs on a
laptop CPU in minutes.

summary.json: per (m, T) cell the seed-mean train and test loss (also relative to the zero
model, whose loss is E[x²]), both measures, ΣD_i, ΣD_t and norm summaries (with per-seed
values); per m the T of the test-loss peak, the interpolation threshold (the first T whose
train loss reaches `fit_fraction` of the zero model's: the model stops fitting its training
set) and the crossover (the first T where the feature measure reaches the data-point measure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax import plots
from superpos_jax.config import NonNegativeFloat, PositiveFloat, PositiveInt, distinct, each, fail, in_range, non_empty, positive
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.plots.memorization import dimensionality_figure, double_descent_figure, memorization_geometry_figure
from superpos_jax.rundir import RunDir
from superpos_jax.toy import metrics
from superpos_jax.toy.datasets import sample_pool, train_mask
from superpos_jax.toy.memorization import (
    datapoint_dimensionality, hidden_mask, memorization_hparams, memorization_task, pool_loss,
)
from superpos_jax.toy.samplers import uniform_importance

NAME = "memorization"
DESCRIPTION = "finite training sets of T points: memorised data points vs features, double descent in T (Henighan et al. 2023)"

Sizes = Annotated[tuple[int, ...], non_empty, distinct, each(positive)]

_POOL_SALT = 0xDA7A
_TEST_SALT = 0x7E57


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 100
    feature_probability: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.05
    d_hidden: Sizes = (1, 2, 4)
    n_train: Sizes = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    n_seeds: PositiveInt = 3
    n_test: PositiveInt = 20_000
    warmup_fraction: Annotated[float, in_range(0.0, 1.0, closed="[)")] = 0.05
    fit_fraction: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.5
    picture_n_train: Sizes = (4, 2048)
    n_steps: PositiveInt = 6_000
    chunk_steps: PositiveInt = 2_000
    log_every: PositiveInt = 100
    batch_size: PositiveInt = 128
    learning_rate: PositiveFloat = 1e-2
    weight_decay: NonNegativeFloat = 1e-2

    def check(self) -> None:
        """Step counts are multiples of log_every; the pictured T are among the trained ones."""
        super().check()
        missing = [t for t in self.picture_n_train if t not in self.n_train]
        if missing:
            fail("picture_n_train", self.picture_n_train, f"values from n_train={self.n_train} (not {missing})")

    def optim(self) -> OptimConfig:
        """AdamW (or Adam) with a linear warm-up over `warmup_fraction` of the steps, then a
        cosine decay to 0 at `n_steps`."""
        return OptimConfig(name=self.optimizer, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                           schedule="cosine", warmup_steps=int(self.warmup_fraction * self.n_steps),
                           total_steps=self.n_steps)


QUICK = {"d_hidden": (2,), "n_train": (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), "picture_n_train": (4, 1024),
         "n_seeds": 2, "n_steps": 3_000, "chunk_steps": 1_500, "n_test": 10_000}


def pools_for(cfg: Config) -> tuple[jax.Array, jax.Array]:
    """One fixed pool of max(n_train) points per seed, (n_seeds, T_max, n), whose first T rows
    are the training set of size T; and the test set, (n_test, n), shared by all models."""
    base = jax.random.key(cfg.seed)
    keys = jax.random.split(jax.random.fold_in(base, _POOL_SALT), cfg.n_seeds)
    T_max = max(cfg.n_train)
    gen = cfg.generator
    pools = jnp.stack([sample_pool(k, cfg.feature_probability, cfg.n_features, T_max, generator=gen) for k in keys])  # type: ignore[arg-type]
    test = sample_pool(jax.random.fold_in(base, _TEST_SALT), cfg.feature_probability, cfg.n_features, cfg.n_test,
                       generator=gen)  # type: ignore[arg-type]
    return pools, test


def build(cfg: Config, pools: jax.Array):
    """The grid (d_hidden × n_train × seed), per-instance hparams, keys and trainer."""
    grid = Grid({"d_hidden": cfg.d_hidden, "n_train": cfg.n_train, "seed": range(cfg.n_seeds)})
    hparams = memorization_hparams(
        grid.column("n_train").astype(np.int64), grid.column("d_hidden").astype(np.int64),
        grid.column("seed").astype(np.int64), uniform_importance(cfg.n_features), cfg.learning_rate,
        pool_shape=pools.shape[:2], max_hidden=max(cfg.d_hidden),
    )
    task = memorization_task(pools, max(cfg.d_hidden), cfg.batch_size)
    trainer = make_trainer(task, cfg.optim(), log_every=cfg.log_every)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


@jax.jit
def measures(params: Any, hparams: dict[str, Any], pools: jax.Array, test: jax.Array) -> dict[str, jax.Array]:
    """Per instance (leading axis): test and train loss, D_i, D_t and the norm summaries."""

    def one(args):
        p, h = args
        pool = pools[h["dataset"]]
        mask = train_mask(h["n_train"], pool.shape[0])
        W = p.W * hidden_mask(h["d_hidden"], p.W.shape[0])[:, None]
        H = W @ pool.T
        d_t = datapoint_dimensionality(H, mask)
        d_i = metrics.feature_dimensionality(W)
        h_sq = jnp.sum(H * H, axis=0) * mask
        w_sq = jnp.sum(W * W, axis=0)
        n = h["n_train"].astype(jnp.float32)
        return {
            "test_loss": pool_loss(p, test, h["importance"], h["d_hidden"]),
            "train_loss": pool_loss(p, pool, h["importance"], h["d_hidden"], h["n_train"]),
            "feature_dims": d_i, "data_dims": d_t,
            "feature_measure": jnp.sum(w_sq * d_i) / jnp.maximum(jnp.sum(w_sq), 1e-12),
            "data_measure": jnp.sum(h_sq * d_t) / jnp.maximum(jnp.sum(h_sq), 1e-12),
            "feature_dims_sum": jnp.sum(d_i), "data_dims_sum": jnp.sum(d_t),
            "feature_norm_mean": jnp.mean(jnp.sqrt(w_sq)),
            "feature_norm_max": jnp.max(jnp.sqrt(w_sq)),
            "hidden_norm_mean": jnp.sum(jnp.sqrt(h_sq)) / n,
            "hidden_norm_max": jnp.max(jnp.sqrt(h_sq)),
        }

    return jax.lax.map(one, (params, hparams))


def interpolation_threshold(n_train: np.ndarray, train_rel: np.ndarray, fit_fraction: float) -> int | None:
    """The smallest T whose (seed-mean) train loss, relative to the zero model's, reaches
    `fit_fraction`: where the model stops fitting (memorising) most of its training set
    (None if it fits them all)."""
    above = np.flatnonzero(train_rel >= fit_fraction)
    return int(n_train[above[0]]) if above.size else None


def crossover(n_train: np.ndarray, feature_measure: np.ndarray, data_measure: np.ndarray) -> int | None:
    """The smallest T at which the feature measure reaches the data-point measure (seed means)."""
    over = np.flatnonzero(feature_measure >= data_measure)
    return int(n_train[over[0]]) if over.size else None


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, measure every model, write the figures (process 0), return the summary."""
    pools, test = pools_for(cfg)
    grid, hparams, keys, trainer = build(cfg, pools)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    _, ok = common.final_losses(result)
    per = jax.tree.map(np.asarray, measures(result.state.params, jax.tree.map(jnp.asarray, hparams), pools, test))
    zero_loss = float(np.mean(np.asarray(test) ** 2))  # uniform importance: the zero output's loss

    T = np.asarray(cfg.n_train)
    fold = {k: grid.fold(v) for k, v in per.items()}  # (m, T, seed, ...)
    test_rel, train_rel = fold["test_loss"] / zero_loss, fold["train_loss"] / zero_loss
    per_m = []
    for k, m in enumerate(cfg.d_hidden):
        mean_test = test_rel[k].mean(axis=-1)
        j = int(np.argmax(mean_test))
        per_m.append({
            "d_hidden": m,
            "peak_n_train": int(T[j]),
            "peak_test_loss_rel": float(mean_test[j]),
            "peak_interior": bool(0 < j < T.size - 1),
            "interpolation_threshold": interpolation_threshold(T, train_rel[k].mean(axis=-1), cfg.fit_fraction),
            "crossover_n_train": crossover(T, fold["feature_measure"][k].mean(-1), fold["data_measure"][k].mean(-1)),
        })
    cells = []
    scalar = ("test_loss", "train_loss", "feature_measure", "data_measure", "feature_dims_sum", "data_dims_sum",
              "feature_norm_mean", "feature_norm_max", "hidden_norm_mean", "hidden_norm_max")
    for k, m in enumerate(cfg.d_hidden):
        for j, t in enumerate(cfg.n_train):
            cell: dict[str, Any] = {"d_hidden": m, "n_train": t}
            for name in scalar:
                cell[name] = float(fold[name][k, j].mean())
                cell[f"{name}_seeds"] = fold[name][k, j].round(6).tolist()
            cell["test_loss_rel"] = float(test_rel[k, j].mean())
            cell["train_loss_rel"] = float(train_rel[k, j].mean())
            cells.append(cell)

    if is_primary():
        _figures(cfg, out_dir, grid, result, fold, test_rel, per_m, zero_loss, pools)
        _loss_figure(cfg, out_dir, grid, result)
    return {
        **common.run_record(grid, result, ok),
        "zero_model_loss": zero_loss,
        "per_d_hidden": per_m,
        "cells": cells,
    }


def _figures(cfg: Config, out_dir: RunDir, grid: Grid, result: Any, fold: dict[str, np.ndarray],
             test_rel: np.ndarray, per_m: list[dict[str, Any]], zero_loss: float, pools: jax.Array) -> None:
    figures = out_dir.figures
    setup = f"n={cfg.n_features}, S={1 - cfg.feature_probability:g}, {cfg.n_steps} steps, {cfg.n_seeds} seeds"
    plots.save(double_descent_figure(
        cfg.n_train, cfg.d_hidden, fold["test_loss"], fold["train_loss"], zero_loss=zero_loss,
        peaks=[c["peak_n_train"] for c in per_m], title=f"double descent in the training-set size ({setup})",
    ), figures / "double_descent.png")
    data_dims = [[fold["data_dims"][k, j, 0, :t] for j, t in enumerate(cfg.n_train)] for k in range(len(cfg.d_hidden))]
    plots.save(dimensionality_figure(
        cfg.n_train, cfg.d_hidden, fold["feature_dims"][:, :, 0], data_dims, fold["feature_measure"],
        fold["data_measure"], fold["test_loss"], zero_loss=zero_loss,
        title=f"feature vs data-point dimensionality ({setup})\ndots: seed 0; lines: norm-weighted means, mean of seeds",
    ), figures / "dimensionality.png")
    if 2 not in cfg.d_hidden:  # the 2-D pictures need a width-2 model
        return
    k = cfg.d_hidden.index(2)
    W = grid.fold(np.asarray(result.state.params.W))
    weights, hidden, labels = [], [], []
    for t in cfg.picture_n_train:
        j = cfg.n_train.index(t)
        w = W[k, j, 0, :2]
        weights.append(w)
        hidden.append(w @ np.asarray(pools[0, :t]).T)
        labels.append(f"T={t} (test {test_rel[k, j, 0]:.2f}×zero)")
    plots.save(memorization_geometry_figure(weights, hidden, labels, title=f"m=2, seed 0 ({setup})"),
               figures / "geometry.png")


def _loss_figure(cfg: Config, out_dir: RunDir, grid: Grid, result: Any) -> None:
    m = 2 if 2 in cfg.d_hidden else cfg.d_hidden[0]
    chosen = np.flatnonzero((grid.column("d_hidden") == m) & (grid.column("seed") == 0))
    plots.save(plots.loss_curves(result.losses[chosen], [f"T={grid.coords(int(i))['n_train']}" for i in chosen],
                                 log_every=cfg.log_every), out_dir.figures / "loss.png")
