"""The introduction's figure of *Toy Models of Superposition*: 5 features in 2 dimensions.

n = 5 features, m = 2 hidden dimensions, importance 0.9**i, ReLU-output model, across
feature probability 1 − S ∈ {1, 0.5, 0.3, 0.2, 0.1, 0.05}. The grid feature_probability ×
seed trains as one compiled sweep; per sparsity the lowest-loss seed is drawn as the paper's
2-D feature diagram (each W_i a line from the origin, coloured by importance) above its WᵀW.
Dense data keep the two most important features as an orthogonal pair; around 80%
sparsity four features sit as two antipodal pairs; from about 90% sparsity all five form a
pentagon (D_i = 2/5). The summary names each geometry with `classify_geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import common
from superpos_jax import plots
from superpos_jax.config import PositiveFloat, PositiveInt, Probabilities, check_power
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.geometry import classify_geometry, project_to_plane
from superpos_jax.toy.models import toy_hparams
from superpos_jax.engine.sweep import Grid

NAME = "intro"
DESCRIPTION = "n=5 features in m=2 dims across sparsity: orthogonal pair -> antipodal pairs -> pentagon (paper's intro figure)"


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 5
    d_hidden: PositiveInt = 2
    importance_base: PositiveFloat = 0.9
    feature_probabilities: Probabilities = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
    model: common.ToyModel = "relu"
    n_seeds: PositiveInt = 8
    chunk_steps: PositiveInt = 5_000

    def check(self) -> None:
        """importance_base**(n_features - 1) <= 1e30 (the importances stay finite in float32)."""
        super().check()
        check_power("importance_base", self.importance_base, self.n_features - 1, "n_features - 1")


QUICK = {"n_steps": 3_000, "n_seeds": 3, "chunk_steps": 3_000}


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})
    hparams = toy_hparams(
        grid.column("feature_probability"),
        geometric_importance(cfg.n_features, cfg.importance_base),
        [cfg.model] * grid.size,
        cfg.learning_rate,
    )
    trainer = cfg.toy_trainer(cfg.n_features, cfg.d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, write the figures (process 0), return the summary (written by the caller)."""
    grid, result, W, per, final_loss, finite = common.train_toy(
        NAME, cfg, build(cfg), out_dir, progress=progress, execution=execution
    )
    b = np.asarray(result.state.params.b)  # (instance, feature)
    geometry = np.asarray([classify_geometry(w) for w in W])
    best = common.best_along(grid, final_loss, finite)  # (prob,): lowest-loss seed
    W_best = common.take_best(grid, W, best)  # (prob, hidden, feature)
    b_best = common.take_best(grid, b, best)
    folded = grid.fold({**per, "final_loss": final_loss, "geometry": geometry})

    cells = []
    for a, p in enumerate(cfg.feature_probabilities):
        s = int(best[a])
        points, _ = project_to_plane(W_best[a])
        cells.append({
            "feature_probability": p, "sparsity": 1.0 - p, "best_seed": s,
            "final_loss": float(folded["final_loss"][a, s]),
            "geometry": str(folded["geometry"][a, s]),
            "n_represented": int(folded["n_represented"][a, s]),
            "feature_norms": folded["feature_norms"][a, s].astype(np.float64).round(4).tolist(),
            "dimensionality": folded["dimensionality"][a, s].astype(np.float64).round(4).tolist(),
            "dimensions_per_feature": round(float(folded["dimensions_per_feature"][a, s]), 4),
            "angles_deg": np.degrees(np.arctan2(points[1], points[0])).round(1).tolist(),
            "W": W_best[a].astype(np.float64).round(4).tolist(),
            "b": b_best[a].astype(np.float64).round(4).tolist(),
            "geometry_all_seeds": [str(g) for g in folded["geometry"][a]],
            "n_represented_all_seeds": folded["n_represented"][a].tolist(),
        })

    if is_primary():
        figures = out_dir.figures
        importance = geometric_importance(cfg.n_features, cfg.importance_base)
        notes = [[f"{c['geometry']}\nk={c['n_represented']}, mean D={np.mean([d for d in c['dimensionality'] if d > 0.05] or [0]):.2f}"
                  for c in cells]]
        plots.save(plots.feature_diagrams(
            W_best[None], importance=importance,
            col_labels=[f"1−S = {p:g}" for p in cfg.feature_probabilities], notes=notes,
            title=f"{cfg.model} model, n={cfg.n_features} features in m={cfg.d_hidden} dims, importance "
                  f"{cfg.importance_base}^i (lowest-loss of {cfg.n_seeds} seeds)",
        ), figures / "intro.png")
        plots.save(common.seed_loss_curves(grid, result, lambda c: f"p={c['feature_probability']:g}", log_every=cfg.log_every),
                   figures / "loss.png")

    instances = common.instance_records(grid, final_loss, finite, per)
    for record, g in zip(instances, geometry):
        record["geometry"] = str(g)
    return {
        **common.run_record(grid, result, finite),
        "best_per_sparsity": cells,
        "instances": instances,
    }
