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
from pathlib import Path
from typing import Any

import numpy as np

from . import common
from superpos_jax import plots
from superpos_jax.config import check_choices, check_positive_int, check_probabilities, fail
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.toy.models import MODEL_KINDS, toy_hparams
from superpos_jax.plots.features2d import feature_diagrams, project_to_plane
from superpos_jax.engine.sweep import Grid

NAME = "intro"
DESCRIPTION = "n=5 features in m=2 dims across sparsity: orthogonal pair -> antipodal pairs -> pentagon (paper's intro figure)"

REPRESENTED = 0.5
_POLYGONS = {3: "triangle", 4: "two antipodal pairs", 5: "pentagon", 6: "hexagon", 7: "heptagon", 8: "octagon"}
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: int = 5
    d_hidden: int = 2
    importance_base: float = 0.9
    feature_probabilities: tuple[float, ...] = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
    model: str = "relu"
    n_seeds: int = 8
    chunk_steps: int = 5_000

    def validate(self) -> None:
        self.validate_training()
        check_positive_int(self, "n_features", "d_hidden", "n_seeds", "n_steps", "batch_size", "chunk_steps", "log_every")
        check_probabilities(self, "feature_probabilities")
        check_choices(self, "model", MODEL_KINDS)
        if not self.importance_base > 0:
            fail("importance_base", self.importance_base, "> 0")


QUICK = {"n_steps": 3_000, "n_seeds": 3, "chunk_steps": 3_000}


def classify_geometry(W: np.ndarray, threshold: float = REPRESENTED, *, tolerance_deg: float = 12.0) -> str:
    """A name for the arrangement of the represented features (‖W_i‖ > threshold) of W
    (d_hidden, n_features), read off their cosines.

    Features whose directions agree (cos > 0.9) are first merged into one direction
    ("collapsed"). The directions are then named, first match wins:
    "orthogonal pair" / "k orthogonal features" (all |cos| < 0.25); a regular polygon
    ("triangle", "pentagon", "hexagon", ...; the square is "two antipodal pairs") when they
    lie in a plane with equal angular gaps (within `tolerance_deg`); "antipodal pair" /
    "two antipodal pairs" (each direction has exactly one partner with cos < −0.9);
    "a antipodal pair(s) + d orthogonal feature(s)" (the unpartnered ones orthogonal to
    all); "pair at θ°"; else "k features, irregular". Collapsed directions add
    " (c collapsed)".
    """
    W = np.asarray(W, np.float64)
    norms = np.linalg.norm(W, axis=0)
    rep = np.flatnonzero(norms > threshold)
    if rep.size == 0:
        return "nothing represented"
    unit = W[:, rep] / norms[rep]
    cos = unit.T @ unit
    directions: list[int] = []
    merged = 0
    for i in range(rep.size):
        if any(cos[i, j] > 0.9 for j in directions):
            merged += 1
        else:
            directions.append(i)
    suffix = f" ({merged} collapsed)" if merged else ""
    C = cos[np.ix_(directions, directions)]
    k = len(directions)
    off = np.abs(C - np.eye(k))
    if k == 1:
        return "one direction" + suffix if merged else "one feature"
    if np.all(off < 0.25):
        return ("orthogonal pair" if k == 2 else f"{k} orthogonal features") + suffix
    if k >= 3:
        points, _ = project_to_plane(unit[:, directions])
        if np.allclose(np.linalg.norm(points, axis=0), 1.0, atol=0.05):
            angles = np.sort(np.degrees(np.arctan2(points[1], points[0])))
            gaps = np.diff(np.concatenate([angles, angles[:1] + 360.0]))
            if np.all(np.abs(gaps - 360.0 / k) < tolerance_deg):
                return _POLYGONS.get(k, f"regular {k}-gon") + suffix
    anti = C < -0.9
    n_partners = anti.sum(axis=1)
    if np.all(n_partners == 1):
        pairs = k // 2
        return ("antipodal pair" if pairs == 1 else f"{_NUMBERS.get(pairs, pairs)} antipodal pairs") + suffix
    alone = n_partners == 0
    if np.all(n_partners <= 1) and np.all(off[alone] < 0.25):
        pairs, n_alone = int(n_partners.sum()) // 2, int(alone.sum())
        return (f"{pairs} antipodal pair{'s' if pairs > 1 else ''} + "
                f"{n_alone} orthogonal feature{'s' if n_alone > 1 else ''}") + suffix
    if k == 2:
        return f"pair at {np.degrees(np.arccos(np.clip(C[0, 1], -1, 1))):.0f}°" + suffix
    return f"{k} features, irregular" + suffix


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


def run(cfg: Config, out_dir: Path, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, write the figures (process 0), return the summary (written by the caller)."""
    grid, hparams, keys, trainer = build(cfg)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    W = np.asarray(result.state.params.W)  # (instance, hidden, feature)
    b = np.asarray(result.state.params.b)  # (instance, feature)
    per = common.toy_metrics(W)
    geometry = np.asarray([classify_geometry(w) for w in W])
    final_loss, finite = common.final_losses(result)
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
        figures = out_dir / "figures"
        importance = geometric_importance(cfg.n_features, cfg.importance_base)
        notes = [[f"{c['geometry']}\nk={c['n_represented']}, mean D={np.mean([d for d in c['dimensionality'] if d > 0.05] or [0]):.2f}"
                  for c in cells]]
        feature_diagrams(
            W_best[None], figures / "intro.png", importance=importance,
            col_labels=[f"1−S = {p:g}" for p in cfg.feature_probabilities], notes=notes,
            title=f"{cfg.model} model, n={cfg.n_features} features in m={cfg.d_hidden} dims, importance "
                  f"{cfg.importance_base}^i (lowest-loss of {cfg.n_seeds} seeds)",
        )
        labels = [f"p={c['feature_probability']:g}" for c in (grid.coords(i) for i in range(grid.size))]
        first_seed = np.flatnonzero(grid.column("seed") == 0)
        plots.loss_curves(result.losses[first_seed], [labels[i] for i in first_seed], figures / "loss.png", log_every=cfg.log_every)

    instances = common.instance_records(grid, final_loss, finite, per)
    for record, g in zip(instances, geometry):
        record["geometry"] = str(g)
    return {
        **common.run_record(grid, result, finite),
        "best_per_sparsity": cells,
        "instances": instances,
    }
