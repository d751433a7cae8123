"""Superposition in a privileged basis (Toy Models of Superposition, "ReLU hidden layer" figure).

The ReLU hidden layer model h = ReLU(W x), x' = ReLU(Wᵀ h + b) with n = 10 features, m = 5
neurons and importance 0.75**i, across feature probability 1 − S ∈ {1, 0.3, 0.1, 0.03, 0.01}.
These small models are hard to optimise, so the paper trains 1000 per sparsity and shows the
lowest-loss one. Here every seed of every sparsity trains in one compiled sweep, and the best
seed per sparsity is chosen on the device (`best_of_seeds`): every instance's final loss on
the same fresh evaluation batches (paired across seeds), argmin over the seed axis, gather.

The default trains 64 seeds per sparsity (about two minutes on 2 CPU cores); the paper's
1000 is `--set n_seeds=1000`. With a hidden ReLU, W maps features to neurons and can be read
directly: dense features give monosemantic neurons (one feature each, the top 5), sparse
features give polysemantic neurons carrying several features.

Neuron metrics (`neuron_metrics`, one W): a neuron is *used* when its weight norm exceeds
`alive_threshold`; it *carries* feature i when |W_ki| ≥ `carry_fraction` × max_j |W_kj|;
its monosemanticity is max_i W_ki² / Σ_i W_ki² (1 = one feature, 1/k = k equal features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import common
from .common import best_of_seeds
from superpos_jax import plots
from superpos_jax.config import NonNegativeFloat, PositiveFloat, PositiveInt, Probabilities, in_range
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.metrics import REPRESENTED_NORM
from superpos_jax.toy.models import toy_hparams
from superpos_jax.engine.sweep import Grid

NAME = "privileged-basis"
DESCRIPTION = "ReLU hidden layer n=10, m=5: monosemantic neurons when dense, polysemantic when sparse (best of many seeds)"


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 10
    d_hidden: PositiveInt = 5
    importance_base: PositiveFloat = 0.75
    feature_probabilities: Probabilities = (1.0, 0.3, 0.1, 0.03, 0.01)
    n_seeds: PositiveInt = 64
    eval_batches: PositiveInt = 16
    carry_fraction: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.25
    alive_threshold: NonNegativeFloat = 0.1


QUICK = {"n_steps": 6_000, "n_seeds": 16, "chunk_steps": 3_000, "eval_batches": 4, "learning_rate": 3e-3}


def neuron_metrics(
    W: Float[ArrayLike, "hidden feature"], *, carry_fraction: float = 0.25, alive_threshold: float = 0.1
) -> dict[str, Array]:
    """How many features each neuron (row of W) carries, for one model.

    Returns a dict of
        `norm` (hidden,): ‖W_k‖, the neuron's weight norm;
        `alive` (hidden,): norm > alive_threshold;
        `n_features` (hidden,): features with |W_ki| ≥ carry_fraction · max_j |W_kj| (0 if unused);
        `monosemanticity` (hidden,): max_i W_ki² / Σ_i W_ki² (NaN if unused);
        `dominant` (hidden,): argmax_i |W_ki|;
        `n_polysemantic` (): used neurons carrying more than one feature;
        `mean_monosemanticity` (): the mean over used neurons (NaN if none).
    """
    W = jnp.asarray(W)
    sq = jnp.square(W)
    total = jnp.sum(sq, axis=1)
    norm = jnp.sqrt(total)
    alive = norm > alive_threshold
    peak = jnp.max(jnp.abs(W), axis=1)
    carries = (jnp.abs(W) >= carry_fraction * peak[:, None]) & alive[:, None]
    n_features = jnp.sum(carries, axis=1)
    mono = jnp.where(alive, jnp.max(sq, axis=1) / jnp.maximum(total, 1e-12), jnp.nan)
    n_alive = jnp.sum(alive).astype(W.dtype)
    mean_mono = jnp.where(n_alive > 0, jnp.sum(jnp.where(alive, mono, 0.0)) / jnp.maximum(n_alive, 1.0), jnp.nan)
    return {
        "norm": norm,
        "alive": alive,
        "n_features": n_features,
        "monosemanticity": mono,
        "dominant": jnp.argmax(jnp.abs(W), axis=1),
        "n_polysemantic": jnp.sum(n_features > 1),
        "mean_monosemanticity": mean_mono,
    }


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})
    hparams = toy_hparams(
        grid.column("feature_probability"),
        geometric_importance(cfg.n_features, cfg.importance_base),
        ["relu-hidden"] * grid.size,
        cfg.learning_rate,
    )
    trainer = cfg.toy_trainer(cfg.n_features, cfg.d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def evaluate(cfg: Config, grid: Grid, hparams: Any, trainer: Any, params: Any, ok: np.ndarray) -> dict[str, Any]:
    """Best seed per sparsity (on the device) and neuron metrics of every instance, as host arrays.

    Returns `W_best` (prob, hidden, feature), `best_loss` (prob,), `best_seed` (prob,),
    `eval_loss` (instance,), and `per` / `best` dicts of `neuron_metrics` over instances / cells.
    """
    select = best_of_seeds(trainer.task, cfg.n_seeds, cfg.eval_batches)
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 1)
    best_params, best_loss, best_seed, eval_loss = select(params, hparams, ok, eval_key)
    measure = jax.jit(jax.vmap(lambda w: neuron_metrics(w, carry_fraction=cfg.carry_fraction, alive_threshold=cfg.alive_threshold)))
    to_host = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return {
        "W_best": np.asarray(best_params.W),
        "best_loss": np.asarray(best_loss),
        "best_seed": np.asarray(best_seed),
        "eval_loss": np.asarray(eval_loss),
        "per": to_host(measure(jnp.asarray(params.W))),
        "best": to_host(measure(best_params.W)),
    }


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, choose the best seed per sparsity, write the figures, return the summary."""
    grid, hparams, keys, trainer = build(cfg)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    _, ok = common.final_losses(result)
    ev = evaluate(cfg, grid, hparams, trainer, result.state.params, ok)
    W_best, best = ev["W_best"], ev["best"]
    feature_norms = np.linalg.norm(W_best, axis=1)  # (prob, feature): ‖W_i‖
    if is_primary():
        figures = out_dir.figures
        plots.save(plots.privileged_basis_figure(
            W_best, cfg.feature_probabilities,
            n_carried=best["n_features"], alive_threshold=cfg.alive_threshold,
            title=(f"ReLU hidden layer, n={cfg.n_features}, m={cfg.d_hidden}, importance {cfg.importance_base}^i "
                   f"(lowest-loss of {cfg.n_seeds} seeds per sparsity)"),
        ), figures / "privileged_basis.png")
        cells = grid.fold(np.arange(grid.size))
        shown = cells[np.arange(len(cfg.feature_probabilities)), ev["best_seed"]]
        plots.save(plots.loss_curves(
            result.losses[shown], [f"p={p:g} (seed {s})" for p, s in zip(cfg.feature_probabilities, ev["best_seed"])],
            log_every=cfg.log_every,
        ), figures / "loss.png")

    per = ev["per"]
    per_cell = grid.fold({k: per[k] for k in ("n_polysemantic", "mean_monosemanticity")})
    sparsities = []
    for c, p in enumerate(cfg.feature_probabilities):
        alive = best["alive"][c]
        sparsities.append({
            "feature_probability": p,
            "best_seed": int(ev["best_seed"][c]),
            "best_eval_loss": float(ev["best_loss"][c]),
            "W": W_best[c].round(5).tolist(),
            "feature_norms": feature_norms[c].round(5).tolist(),
            "n_represented": int(np.sum(feature_norms[c] > REPRESENTED_NORM)),
            "neurons": [
                {"neuron": k, "used": bool(alive[k]), "norm": float(best["norm"][c, k]),
                 "n_features": int(best["n_features"][c, k]), "dominant_feature": int(best["dominant"][c, k]),
                 "monosemanticity": float(best["monosemanticity"][c, k]) if alive[k] else None}
                for k in range(cfg.d_hidden)
            ],
            "n_used_neurons": int(alive.sum()),
            "n_polysemantic": int(best["n_polysemantic"][c]),
            "mean_features_per_neuron": float(best["n_features"][c][alive].mean()) if alive.any() else None,
            "mean_monosemanticity": float(best["mean_monosemanticity"][c]),
            "all_seeds": {
                "mean_monosemanticity": float(np.nanmean(per_cell["mean_monosemanticity"][c])),
                "fraction_with_polysemantic_neuron": float(np.mean(per_cell["n_polysemantic"][c] > 0)),
            },
        })
    return {
        **common.run_record(grid, result, ok),
        "best_per_sparsity": sparsities,
        "neuron_rule": {"carry_fraction": cfg.carry_fraction, "alive_threshold": cfg.alive_threshold},
        "instances": common.instance_records(grid, ev["eval_loss"], ok, {
            "n_polysemantic": per["n_polysemantic"], "mean_monosemanticity": per["mean_monosemanticity"],
            "n_features_per_neuron": per["n_features"],
        }),
    }
