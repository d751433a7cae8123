"""Correlated and anticorrelated features (*Toy Models of Superposition*, "Superposition and
correlated features").

Features come in pairs (2k, 2k+1) with equal importance 1 and equal marginal firing rate
p = 1 − S. A *correlated* pair fires together or not at all; an *anticorrelated* pair is
active with probability 2p and then exactly one member fires (so the marginal rate is still
p); *independent* pairs are the ordinary sparse features, as a control. Present features
have independent U[0, 1] magnitudes. ReLU-output model, m = 2 hidden dimensions.

Setups (rows of the figure; `setups` picks them):

=========================  ================================  ==========================
setup                      features                          the paper's finding
=========================  ================================  ==========================
correlated-pairs           4 = 2 correlated pairs            pair members orthogonal
anticorrelated-pairs       4 = 2 anticorrelated pairs        pair members antipodal
three-correlated-pairs     6 = 3 correlated pairs            no room for orthogonal
                                                             pairs: members collapse
                                                             onto one (PCA-like) direction
                                                             or sit side by side — never
                                                             antipodal
independent-pairs          4 independent (control)           antipodal partners arbitrary
mixed                      1 correlated + 1 anticorrelated   (optional; frustrated in 2-D)
=========================  ================================  ==========================

All setups × feature probabilities × seeds train as ONE compiled sweep: every instance has
n = the largest setup's feature count, smaller setups padded with unused features
(probability 0, importance 0, W column fixed at 0); the pair structure is a traced per-instance
code (`superpos_jax.toy.correlated`). Per cell the lowest-loss seed is drawn as the 2-D
feature diagram, coloured by pair (second member dashed). The summary gives every pair's
cosine and a label (antipodal / obtuse / orthogonal / acute / collapsed) for every seed.
`--set d_hidden=3` runs the 3-dimensional variant (drawn in W's leading 2-D SVD plane).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from . import common
from superpos_jax import plots
from superpos_jax.config import PositiveInt, Probabilities, distinct, each, fail, non_empty, one_of
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.correlated import correlated_hparams, correlated_task
from superpos_jax.toy.geometry import classify_geometry
from superpos_jax.toy.metrics import REPRESENTED_NORM
from superpos_jax.plots.features2d import pair_colors
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer

NAME = "correlated"
DESCRIPTION = "correlated / anticorrelated feature pairs in m=2 dims: orthogonal or collapsed vs antipodal (paper's correlated-features figures)"

SETUPS: dict[str, tuple[str, ...]] = {
    "correlated-pairs": ("correlated", "correlated"),
    "anticorrelated-pairs": ("anticorrelated", "anticorrelated"),
    "three-correlated-pairs": ("correlated", "correlated", "correlated"),
    "independent-pairs": ("independent", "independent"),
    "mixed": ("correlated", "anticorrelated"),
}
_ROW_LABELS = {
    "correlated-pairs": "2 correlated pairs",
    "anticorrelated-pairs": "2 anticorrelated pairs",
    "three-correlated-pairs": "3 correlated pairs",
    "independent-pairs": "4 independent (control)",
    "mixed": "correlated + anticorr. pair",
}
_SHORT = {"correlated": "corr", "anticorrelated": "anti", "independent": "indep"}


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    setups: Annotated[tuple[str, ...], non_empty, each(one_of(*SETUPS)), distinct] = (
        "correlated-pairs", "anticorrelated-pairs", "three-correlated-pairs", "independent-pairs")
    d_hidden: PositiveInt = 2
    feature_probabilities: Probabilities = (0.2, 0.1, 0.05, 0.02)
    model: common.ToyModel = "relu"
    n_seeds: PositiveInt = 6
    chunk_steps: PositiveInt = 5_000

    def check(self) -> None:
        """An anticorrelated pair fires with probability 2p, so p <= 0.5 there."""
        super().check()
        if any("anticorrelated" in SETUPS[s] for s in self.setups) and max(self.feature_probabilities) > 0.5:
            fail("feature_probabilities", self.feature_probabilities,
                 "<= 0.5 with an anticorrelated setup (its pair fires with probability 2p)")


QUICK = {"n_steps": 3_000, "n_seeds": 2, "chunk_steps": 3_000, "feature_probabilities": (0.2, 0.1, 0.05)}


def sizes(cfg: Config) -> tuple[int, int]:
    """(n_features, n_pairs) of the padded sweep: those of the largest setup."""
    n_pairs = max(len(SETUPS[s]) for s in cfg.setups)
    return 2 * n_pairs, n_pairs


def setup_arrays(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Per setup: pair-kind names (setups, n_pairs) and used-feature mask (setups, n_features)."""
    n, n_pairs = sizes(cfg)
    kinds = np.full((len(cfg.setups), n_pairs), "independent", dtype=object)
    used = np.zeros((len(cfg.setups), n), bool)
    for a, s in enumerate(cfg.setups):
        kinds[a, : len(SETUPS[s])] = SETUPS[s]
        used[a, : 2 * len(SETUPS[s])] = True
    return kinds, used


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"setup": cfg.setups, "feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})
    n, _ = sizes(cfg)
    kinds, used = setup_arrays(cfg)
    row = grid.index("setup")
    p = np.where(used[row], grid.column("feature_probability")[:, None], 0.0).astype(np.float32)
    hparams = correlated_hparams(
        p, used[row].astype(np.float32), kinds[row].astype(str), [cfg.model] * grid.size, cfg.learning_rate
    )
    task = correlated_task(n, cfg.d_hidden, cfg.batch_size, generator=cfg.generator)  # type: ignore[arg-type]
    optim = cfg.optim()
    trainer = make_trainer(task, optim, log_every=cfg.log_every)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def pair_label(cosine: float | None) -> str:
    """Name of a pair's arrangement from the cosine of its members (None: not both represented)."""
    if cosine is None:
        return "not represented"
    if cosine < -0.9:
        return "antipodal"
    if cosine < -0.25:
        return "obtuse"
    if cosine <= 0.25:
        return "orthogonal"
    if cosine <= 0.9:
        return "acute"
    return "collapsed"


def pair_cosines(W: np.ndarray, n_pairs: int, threshold: float = REPRESENTED_NORM) -> list[float | None]:
    """cos(W_{2k}, W_{2k+1}) for k < n_pairs; None where a member has ‖W_i‖ <= threshold."""
    out: list[float | None] = []
    for k in range(n_pairs):
        a, b = W[:, 2 * k], W[:, 2 * k + 1]
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        out.append(None if min(na, nb) <= threshold else round(float(a @ b / (na * nb)), 4))
    return out


def _pair_note(cell: dict[str, Any]) -> str:
    kinds, labels = cell["pair_kinds"], cell["pair_labels"]
    if len(set(kinds)) == 1:
        return "pairs: " + ", ".join(labels)
    return ", ".join(f"{_SHORT[k]}: {lab}" for k, lab in zip(kinds, labels))


def _count_labels(items: list[tuple[str, float | None]]) -> dict[str, dict[str, Any]]:
    """Per pair kind: pairs seen, pairs with both members represented, and label counts."""
    out: dict[str, dict[str, Any]] = {}
    for kind, cos in items:
        entry = out.setdefault(kind, {"pairs": 0, "represented": 0, "labels": {}})
        entry["pairs"] += 1
        if cos is not None:
            entry["represented"] += 1
            label = pair_label(cos)
            entry["labels"][label] = entry["labels"].get(label, 0) + 1
    return out


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, write the figures (process 0), return the summary (written by the caller)."""
    grid, result, W, per, final_loss, finite = common.train_toy(
        NAME, cfg, build(cfg), out_dir, progress=progress, execution=execution
    )
    best = common.best_along(grid, final_loss, finite)  # (setup, prob)
    W_best = common.take_best(grid, W, best)  # (setup, prob, hidden, feature)
    kinds, used = setup_arrays(cfg)
    row = grid.index("setup")

    geometry, cosines = [], []
    for i in range(grid.size):
        w = W[i][:, used[row[i]]]
        geometry.append(classify_geometry(w))
        cosines.append(pair_cosines(w, len(SETUPS[cfg.setups[row[i]]])))
    folded = grid.fold({**per, "final_loss": final_loss})

    cells = []
    for a, setup in enumerate(cfg.setups):
        for c, p in enumerate(cfg.feature_probabilities):
            s = int(best[a, c])
            idx = [int(np.ravel_multi_index((a, c, t), grid.shape)) for t in range(cfg.n_seeds)]
            cos = cosines[idx[s]]
            cells.append({
                "setup": setup, "pair_kinds": list(SETUPS[setup]), "feature_probability": p, "best_seed": s,
                "final_loss": float(folded["final_loss"][a, c, s]),
                "geometry": geometry[idx[s]],
                "pair_cosines": cos,
                "pair_labels": [pair_label(x) for x in cos],
                "n_represented": int(folded["n_represented"][a, c, s]),
                "feature_norms": folded["feature_norms"][a, c, s][used[a]].astype(np.float64).round(4).tolist(),
                "dimensionality": folded["dimensionality"][a, c, s][used[a]].astype(np.float64).round(4).tolist(),
                "W": W_best[a, c][:, used[a]].astype(np.float64).round(4).tolist(),
                "pair_cosines_all_seeds": [cosines[i] for i in idx],
                "geometry_all_seeds": [geometry[i] for i in idx],
            })

    all_pairs = [(kind, cos) for i in range(grid.size) if finite[i]
                 for kind, cos in zip(SETUPS[cfg.setups[row[i]]], cosines[i])]
    best_pairs = [(kind, cos) for cell in cells for kind, cos in zip(cell["pair_kinds"], cell["pair_cosines"])]

    if is_primary():
        figures = out_dir.figures
        n = used.shape[1]
        n_probs = len(cfg.feature_probabilities)
        notes = [[f"{cell['geometry']}\n{_pair_note(cell)}" for cell in cells[a * n_probs:(a + 1) * n_probs]]
                 for a in range(len(cfg.setups))]
        colours = pair_colors(n)
        legend = [(f"pair {k} (features {2 * k}, {2 * k + 1})", colours[2 * k], "-") for k in range(n // 2)]
        legend.append(("second member of a pair", "0.4", "--"))
        plots.save(plots.feature_diagrams(
            W_best, colors_=colours,
            linestyles=[["-" if i % 2 == 0 else "--" for i in range(n)]] * len(cfg.setups),
            mask=used, row_labels=[_ROW_LABELS[s] for s in cfg.setups],
            col_labels=[f"1−S = {p:g}" for p in cfg.feature_probabilities], notes=notes, legend=legend,
            title=f"{cfg.model} model, feature pairs in m={cfg.d_hidden} dims, equal importance "
                  f"(lowest-loss of {cfg.n_seeds} seeds)",
        ), figures / "correlated.png")
        plots.save(common.seed_loss_curves(grid, result, lambda c: f"{c['setup']} p={c['feature_probability']:g}", log_every=cfg.log_every),
                   figures / "loss.png")

    instances = common.instance_records(grid, final_loss, finite, per)
    for i, record in enumerate(instances):
        record["geometry"] = geometry[i]
        record["pair_cosines"] = cosines[i]
        record["used_features"] = int(used[row[i]].sum())
    return {
        **common.run_record(grid, result, finite),
        "best_per_cell": cells,
        "pair_labels_by_kind_best_seeds": _count_labels(best_pairs),
        "pair_labels_by_kind_all_seeds": _count_labels(all_pairs),
        "instances": instances,
    }
