"""Sparsity sweep (Toy Models of Superposition, "Superposition as a phase change" figure).

n = 20 features in m = 5 dimensions, importance 0.7**i, feature probability
1 − S ∈ {1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001}, linear and ReLU-output models, several seeds.
The whole grid model × feature_probability × seed trains as one compiled sweep; per cell the
lowest-loss seed is drawn. The linear model keeps the top m features orthogonally at every
sparsity; the ReLU model puts more and more features into superposition as sparsity rises.
The paper's second setting is `--set n_features=80 d_hidden=20 importance_base=0.9`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


from . import common
from superpos_jax import plots
from superpos_jax.config import PositiveFloat, PositiveInt, Probabilities
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.models import toy_hparams
from superpos_jax.engine.sweep import Grid

NAME = "sparsity"
DESCRIPTION = "n=20 features in m=5 dims across sparsity: linear vs ReLU toy models (paper's phase-change figure)"


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 20
    d_hidden: PositiveInt = 5
    importance_base: PositiveFloat = 0.7
    feature_probabilities: Probabilities = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    models: common.ToyModels = ("linear", "relu")
    n_seeds: PositiveInt = 4


QUICK = {"n_steps": 3_000, "n_seeds": 2, "chunk_steps": 1_000}


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"model": cfg.models, "feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})
    n = cfg.n_features
    hparams = toy_hparams(
        grid.column("feature_probability"),
        geometric_importance(n, cfg.importance_base),
        grid.column("model"),
        cfg.learning_rate,
    )
    trainer = cfg.toy_trainer(n, cfg.d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, write the figures (process 0), return the summary (written by the caller)."""
    grid, result, W, per, final_loss, finite = common.train_toy(
        NAME, cfg, build(cfg), out_dir, progress=progress, execution=execution
    )
    best = common.best_along(grid, final_loss, finite)  # (model, prob): lowest-loss seed
    W_best = common.take_best(grid, W, best)
    if is_primary():
        figures = out_dir.figures
        plots.save(plots.sparsity_figure(
            W_best, cfg.feature_probabilities, cfg.models,
            title=f"n={cfg.n_features}, m={cfg.d_hidden}, importance {cfg.importance_base}^i (lowest-loss of {cfg.n_seeds} seeds)",
        ), figures / "sparsity.png")
        plots.save(common.seed_loss_curves(grid, result, lambda c: f"{c['model']} p={c['feature_probability']:g}", log_every=cfg.log_every),
                   figures / "loss.png")

    loss_grid = grid.fold(final_loss)
    rep_grid = grid.fold(per["n_represented"])
    cells = []
    for a, model in enumerate(cfg.models):
        for b, p in enumerate(cfg.feature_probabilities):
            s = int(best[a, b])
            cells.append({
                "model": model, "feature_probability": p, "best_seed": s,
                "final_loss": float(loss_grid[a, b, s]),
                "n_represented": int(rep_grid[a, b, s]),
                "n_represented_all_seeds": rep_grid[a, b].tolist(),
            })
    return {
        **common.run_record(grid, result, finite),
        "best_per_cell": cells,
        "instances": common.instance_records(grid, final_loss, finite, per),
    }
