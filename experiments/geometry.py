"""Feature geometry across sparsity (Toy Models of Superposition, "Feature dimensionality").

Uniform importance, ReLU-output model, feature probability 1 − S swept log-evenly from 1 down
to 0.05 (the reference notebook's `20 ** -linspace(0, 1, 20)`), a few seeds, all in one
compiled sweep. Two results: the dimensions per feature m / ‖W‖_F² "stick" at 1 and at 1/2
as sparsity rises (digons: antipodal pairs), and the dimensionality D_i of single features
clusters at the fractions of small polytopes: 1, 3/4 (tetrahedron), 2/3 (triangle),
1/2 (digon), 2/5 (pentagon), 3/8 (square antiprism).

Size. The paper trains n = 400 features in m = 30 dimensions, the notebook n = 200 in m = 20,
both for 10,000 steps. On a 2-core CPU n = 400, m = 30 runs about 1,000 model-steps/s, so
20 sparsities × 10,000 steps take over 3 minutes per seed; the default is therefore the
notebook's n = 200, m = 20 (1,800–2,500 model-steps/s) with 2 seeds × 10,000 steps
(3–4 min on the shared 2-core machine). The paper's size is
`--set n_features=400 d_hidden=30 n_seeds=1` (about 3.5 min per seed).

A caveat on D_i, with the paper's definition D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²: features the
model does not represent keep small residual weights (‖W_j‖ ≈ 0.1–0.3 at moderate sparsity,
because the output ReLU hides their interference and only weight decay shrinks them). They
lie in the directions left over by the represented features and lower the D_i of those:
a dedicated feature (D = 1) then reads e.g. 0.7. The summary therefore also counts
`represented_dimensionality`: D_i recomputed among the represented features (‖W_i‖ > 0.5) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.toy import metrics
from superpos_jax.config import PositiveFloat, PositiveInt, fail, in_range, positive
from superpos_jax.toy.samplers import uniform_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.geometry import OTHER, fraction_counts, fraction_label
from superpos_jax.toy.models import toy_hparams
from superpos_jax import plots
from superpos_jax.engine.sweep import Grid

NAME = "geometry"
DESCRIPTION = "uniform-importance ReLU model across sparsity: dims per feature stick at 1 and 1/2; D_i cluster at polytope fractions"

@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 200
    d_hidden: PositiveInt = 20
    max_feature_probability: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 1.0
    min_feature_probability: Annotated[float, positive] = 0.05
    n_probabilities: PositiveInt = 20
    n_seeds: PositiveInt = 2
    log_every: PositiveInt = 50
    fractions: common.Fractions = (1.0, 0.75, 2 / 3, 0.5, 0.4, 0.375)
    tolerance: Annotated[float, in_range(0.0, 0.5, closed="()")] = 0.03
    represented_threshold: PositiveFloat = metrics.REPRESENTED_NORM

    def check(self) -> None:
        """min_feature_probability <= max_feature_probability; d_hidden < n_features."""
        super().check()
        if self.min_feature_probability > self.max_feature_probability:
            fail("min_feature_probability", self.min_feature_probability,
                 f"in (0, max_feature_probability={self.max_feature_probability}]")
        if self.d_hidden >= self.n_features:
            fail("d_hidden", self.d_hidden, f"< n_features={self.n_features} (superposition needs more features than dimensions)")


QUICK = {"n_features": 100, "d_hidden": 10, "n_probabilities": 12, "n_seeds": 1, "n_steps": 2_500, "chunk_steps": 2_500}


def feature_probabilities(cfg: Config) -> tuple[float, ...]:
    """The swept 1 − S, log-evenly from `max_feature_probability` down to `min_feature_probability`."""
    values = np.geomspace(cfg.max_feature_probability, cfg.min_feature_probability, cfg.n_probabilities)
    return tuple(float(f"{v:.6g}") for v in values)


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"feature_probability": feature_probabilities(cfg), "seed": range(cfg.n_seeds)})
    n = cfg.n_features
    hparams = toy_hparams(
        grid.column("feature_probability"), uniform_importance(n), ["relu"] * grid.size, cfg.learning_rate
    )
    trainer = cfg.toy_trainer(n, cfg.d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, write the figures (process 0), return the summary (written by the caller)."""
    grid, result, W, per, final_loss, ok = common.train_toy(
        NAME, cfg, build(cfg), out_dir, progress=progress, execution=execution
    )
    per["represented_dimensionality"] = np.asarray(
        jax.vmap(lambda w: metrics.represented_dimensionality(w, cfg.represented_threshold))(jnp.asarray(W, jnp.float32))
    )
    probs = np.asarray(feature_probabilities(cfg))
    bad = ~ok
    dpf = grid.fold(np.where(bad, np.nan, per["dimensions_per_feature"]))  # (prob, seed)
    dims = grid.fold(np.where(bad[:, None], np.nan, per["dimensionality"]))  # (prob, seed, feature)
    rep_dims = grid.fold(per["represented_dimensionality"])
    represented = grid.fold(per["feature_norms"] > cfg.represented_threshold)
    if is_primary():
        figures = out_dir.figures
        plots.save(plots.geometry_figure(
            probs, dpf, dims, cfg.fractions,
            represented=represented, threshold=cfg.represented_threshold,
            title=f"n={cfg.n_features}, m={cfg.d_hidden}, uniform importance, ReLU output "
                  f"({cfg.n_seeds} seed{'s' if cfg.n_seeds > 1 else ''}, {cfg.n_steps} steps)",
        ), figures / "geometry.png")
        plots.save(common.seed_loss_curves(grid, result, lambda c: f"1−S={c['feature_probability']:.3g}",
                                           log_every=cfg.log_every), figures / "loss.png")

    per_sparsity = []
    for a, p in enumerate(probs):
        usable = ok.reshape(grid.shape)[a]
        per_sparsity.append({
            "feature_probability": float(p),
            "inverse_feature_probability": float(1.0 / p),
            "dims_per_feature": [float(v) for v in dpf[a]],
            "dims_per_feature_mean": float(np.nanmean(dpf[a])) if usable.any() else float("nan"),
            "n_represented": [int(v) for v in represented[a].sum(axis=-1)],
            "fraction_counts": fraction_counts(dims[a][usable], cfg.fractions, cfg.tolerance),
            "fraction_counts_represented": fraction_counts(
                rep_dims[a][usable][represented[a][usable]], cfg.fractions, cfg.tolerance
            ),
        })
    means = np.array([s["dims_per_feature_mean"] for s in per_sparsity])
    # The polytope fractions describe the models that still have >= min(fractions) dims per feature;
    # sparser ones spread all their features evenly (D_i ≈ m/‖W‖_F² < 3/8).
    in_range = (means >= min(cfg.fractions) - cfg.tolerance)[:, None, None]
    usable = ok.reshape(grid.shape)[..., None]
    pooled = fraction_counts(rep_dims[represented & usable & in_range], cfg.fractions, cfg.tolerance)
    n_pooled = int(np.sum(represented & usable & in_range))
    return {
        **common.run_record(grid, result, ok),
        "fractions": {fraction_label(f): float(f) for f in cfg.fractions},
        "tolerance": cfg.tolerance,
        "plateau_at_1": [float(p) for p, v in zip(probs, means) if abs(v - 1.0) <= cfg.tolerance],
        "plateau_at_half": [float(p) for p, v in zip(probs, means) if abs(v - 0.5) <= cfg.tolerance],
        "represented_in_polytope_range": pooled,
        "represented_near_a_fraction": 1.0 - pooled[OTHER] / max(n_pooled, 1),
        "per_sparsity": per_sparsity,
        "instances": common.instance_records(grid, final_loss, ok, per),
    }
