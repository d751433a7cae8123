"""What the two phase-diagram experiments (phase-2x1, phase-3x2) share: config, grid, analysis.

The grid is feature density 1 − S × relative importance r of the extra (last) feature × seed;
the other features have importance 1. The density applies to every feature (`sparse_features=
"all"`, the default: the paper's "feature density" axis) or, with `sparse_features="extra"`,
to the extra feature alone while the others are always present (the other reading of the
paper's setup). Every cell × seed trains in ONE sweep:
density and the importance vector are per-instance hparams. Per cell the seed with the lowest
*expected* loss is read (the paper trains 10 and drops the highest-loss one; keeping the best
estimates the optimum that the theory computes, and the per-seed phases are in the summary
too). The expected loss of each trained (W, b) is computed exactly (`theory.expected_loss`)
rather than taken from the training trace, whose noise at low density exceeds the loss
differences between solutions. The extra
feature's phase comes from its geometry (`theory.feature_phase`): ‖W_extra‖ ≤ norm_threshold
→ not represented; superposition Σ_{j≠extra} (Ŵ_extra·W_j)² ≤ superposition_threshold →
dedicated dimension; otherwise in superposition. The theoretical diagram classifies the
lowest-expected-loss candidate (`theory.theoretical_phases`) in the same way.

This module has no NAME: it is not an experiment itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.toy import metrics
from superpos_jax.toy import theory
from superpos_jax.config import PositiveFloat, PositiveInt, fail, in_range
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.models import toy_hparams
from superpos_jax import plots
from superpos_jax.engine.sweep import Grid


@dataclass(frozen=True)
class PhaseConfig(common.TrainingConfig):
    """Shared fields; each experiment subclasses it (and may change defaults)."""

    importance_min: PositiveFloat = 0.1
    importance_max: PositiveFloat = 10.0
    n_importances: PositiveInt = 20
    density_min: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.01
    density_max: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 1.0
    n_densities: PositiveInt = 20
    sparse_features: Literal["all", "extra"] = "all"
    n_seeds: PositiveInt = 5
    norm_threshold: PositiveFloat = metrics.REPRESENTED_NORM
    superposition_threshold: PositiveFloat = 0.1
    theory_nodes: PositiveInt = 32
    theory_iterations: PositiveInt = 50

    def check(self) -> None:
        """importance_min <= importance_max; density_min <= density_max."""
        super().check()
        if not self.importance_max >= self.importance_min:
            fail("importance_max", self.importance_max, f">= importance_min={self.importance_min}")
        if not self.density_min <= self.density_max:
            fail("density_max", self.density_max, f"in [density_min={self.density_min}, 1]")


QUICK = {"n_importances": 8, "n_densities": 8, "n_seeds": 2, "n_steps": 4_000, "chunk_steps": 2_000, "theory_iterations": 30}


def axes(cfg: PhaseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced densities (n_densities,) and relative importances (n_importances,), float64."""
    densities = np.geomspace(cfg.density_min, cfg.density_max, cfg.n_densities)
    importances = np.geomspace(cfg.importance_min, cfg.importance_max, cfg.n_importances)
    return densities, importances


def importance_vectors(relative_importance: np.ndarray, n_features: int) -> np.ndarray:
    """(k, n_features) float32: importance 1 for every feature but the last, r for the last."""
    r = np.asarray(relative_importance, np.float32).reshape(-1, 1)
    return np.concatenate([np.ones((r.shape[0], n_features - 1), np.float32), r], axis=1)


def probability_vectors(density: np.ndarray, n_features: int, sparse_features: str) -> np.ndarray:
    """(k, n_features) float32 feature probabilities: `density` for every feature ("all"), or
    for the extra (last) feature only with the others always present ("extra")."""
    p = np.asarray(density, np.float32).reshape(-1, 1)
    others = p if sparse_features == "all" else np.ones_like(p)
    return np.concatenate([np.repeat(others, n_features - 1, axis=1), p], axis=1)


def build(cfg: PhaseConfig, n_features: int, d_hidden: int):
    """The grid density × relative_importance × seed, per-instance hparams, keys and trainer."""
    densities, importances = axes(cfg)
    grid = Grid({
        "feature_probability": [float(p) for p in densities],
        "relative_importance": [float(r) for r in importances],
        "seed": range(cfg.n_seeds),
    })
    hparams = toy_hparams(
        probability_vectors(grid.column("feature_probability"), n_features, cfg.sparse_features),
        importance_vectors(grid.column("relative_importance"), n_features),
        ["relu"] * grid.size,
        cfg.learning_rate,
    )
    trainer = cfg.toy_trainer(n_features, d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def extra_feature_stats(W: np.ndarray, cfg: PhaseConfig) -> dict[str, np.ndarray]:
    """Norm, superposition and phase of the extra (last) feature of W (instance, hidden, feature)."""
    extra = W.shape[-1] - 1
    W = jnp.asarray(W, jnp.float32)
    stats = jax.vmap(lambda w: {
        "norm": metrics.feature_norms(w)[extra],
        "superposition": metrics.superposition(w)[extra],
        "phase": theory.feature_phase(
            w, extra, norm_threshold=cfg.norm_threshold, superposition_threshold=cfg.superposition_threshold
        ),
    })(W)
    return jax.tree.map(np.asarray, stats)


def exact_losses(W: np.ndarray, b: np.ndarray, hparams: dict[str, np.ndarray], cfg: PhaseConfig) -> np.ndarray:
    """Expected loss of every trained instance over the data distribution, shape (instance,).

    Seeds are ranked by it rather than by the training loss: at low density the few batches
    at the end of training estimate the loss with more noise than separates the solutions.
    """
    loss = jax.jit(jax.vmap(lambda w, bias, imp, p: theory.expected_loss(w, bias, imp, p, n_nodes=cfg.theory_nodes)))
    return np.asarray(loss(
        jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32),
        jnp.asarray(hparams["importance"], jnp.float32), jnp.asarray(hparams["feature_probability"], jnp.float32),
    ))


def theory_diagram(cfg: PhaseConfig, candidates: tuple[theory.Candidate, ...], n_features: int) -> theory.TheoryDiagram:
    """The theoretical diagram on the experiment's cells, flattened density-major (C order)."""
    densities, importances = axes(cfg)
    P, R = np.meshgrid(densities, importances, indexing="ij")
    return theory.theoretical_phases(
        candidates, importance_vectors(R.ravel(), n_features),
        probability_vectors(P.ravel(), n_features, cfg.sparse_features),
        n_nodes=cfg.theory_nodes, n_iterations=cfg.theory_iterations,
        norm_threshold=cfg.norm_threshold, superposition_threshold=cfg.superposition_threshold,
    )


def _counts(phase: np.ndarray) -> list[int]:
    return [int(np.sum(phase == i)) for i in range(len(theory.PHASES))]


def _round(a: Any, digits: int = 5) -> Any:
    return np.round(np.asarray(a, np.float64), digits).tolist()


def run(
    name: str,
    cfg: PhaseConfig,
    out_dir: RunDir,
    *,
    n_features: int,
    d_hidden: int,
    candidates: tuple[theory.Candidate, ...],
    progress: bool,
    execution: Execution,
) -> dict[str, Any]:
    """Train the sweep, compute the theory, draw the figure (process 0), return the summary."""
    grid, hparams, keys, trainer = build(cfg, n_features, d_hidden)
    result = common.train(name, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    W = np.asarray(result.state.params.W)  # (instance, hidden, feature)
    b = np.asarray(result.state.params.b)
    final_loss, finite = common.final_losses(result)
    stats = extra_feature_stats(W, cfg)
    exact = exact_losses(W, b, hparams, cfg)
    best = common.best_along(grid, exact, finite & np.isfinite(exact))  # (density, importance)
    empirical = common.take_best(grid, stats["phase"], best)
    W_best = common.take_best(grid, W, best)
    b_best = common.take_best(grid, b, best)

    th = theory_diagram(cfg, candidates, n_features)
    shape = best.shape
    theory_phase = th.phase.reshape(shape)
    agreement = float(np.mean(empirical == theory_phase))
    # Trained optimum vs. theory's: > 0 where training fell short, < 0 would mean a better
    # solution than every candidate (a missing candidate).
    theory_loss = th.losses[np.arange(best.size), th.best].reshape(shape)
    gap = common.take_best(grid, exact, best) / theory_loss - 1.0
    densities, importances = axes(cfg)

    if is_primary():
        plots.save(plots.phase_diagram_figure(
            empirical, theory_phase, importances, densities,
            phase_names=theory.PHASES,
            title=(f"{name}: n={n_features}, m={d_hidden}, ReLU output, density of "
                   f"{'every feature' if cfg.sparse_features == 'all' else 'the extra feature'} — "
                   f"agreement {agreement:.1%} of cells"),
            panel_titles=(f"trained: best of {cfg.n_seeds} seeds, {cfg.n_steps} steps",
                          f"theory: best of {len(candidates)} candidates, expected loss"),
        ), out_dir.figures / f"{name}.png")

    folded = {k: grid.fold(v) for k, v in stats.items()}
    loss_grid = grid.fold(final_loss)
    exact_grid = grid.fold(exact)
    ok_grid = grid.fold(finite)
    cells = []
    for a, p in enumerate(densities):
        for c, r in enumerate(importances):
            k = a * shape[1] + c
            cells.append({
                "feature_probability": float(p), "relative_importance": float(r),
                "empirical_phase": int(empirical[a, c]), "theory_phase": int(theory_phase[a, c]),
                "best_seed": int(best[a, c]),
                "expected_loss": float(exact_grid[a, c, best[a, c]]),
                "theory_loss": float(theory_loss[a, c]),
                "W": _round(W_best[a, c]), "b": _round(b_best[a, c]),
                "extra_norm": float(folded["norm"][a, c, best[a, c]]),
                "extra_superposition": float(folded["superposition"][a, c, best[a, c]]),
                "seeds": {
                    "final_loss": _round(loss_grid[a, c], 8), "expected_loss": _round(exact_grid[a, c], 9),
                    "finite": ok_grid[a, c].tolist(),
                    "phase": folded["phase"][a, c].tolist(),
                    "extra_norm": _round(folded["norm"][a, c]),
                    "extra_superposition": _round(folded["superposition"][a, c]),
                },
                "theory": {
                    "best_candidate": candidates[int(th.best[k])].name,
                    "candidate_losses": _round(th.losses[k], 9),
                    "W": _round(th.W[k]), "b": _round(th.b[k]),
                },
            })
    return {
        **common.run_record(grid, result, finite),
        "phases": list(theory.PHASES),
        "candidates": [{"name": c.name, "directions": _round(c.directions), "phase": c.phase} for c in candidates],
        "agreement": agreement,
        "trained_vs_theory_loss": {
            "median_relative_gap": float(np.median(gap)),
            "min_relative_gap": float(np.min(gap)),
            "cells_beating_theory_by_1pct": int(np.sum(gap < -0.01)),
        },
        "phase_counts": {"empirical": _counts(empirical), "theory": _counts(theory_phase)},
        "empirical_phase": empirical.tolist(),
        "theory_phase": theory_phase.tolist(),
        "cells": cells,
    }
