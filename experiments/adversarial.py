"""Superposition and adversarial vulnerability (Toy Models of Superposition, "Relationship to
Adversarial Robustness").

The sparsity experiment's setting — n = 20 features, m = 5, importance 0.7**i, linear and
ReLU-output models, 1 − S from 1 to 0.001, several seeds — trains as one compiled sweep.
Then every model is attacked on the device (`attack_all`, vmapped over instances and inputs):
for each of `n_inputs` inputs, the L2 perturbation of norm at most ε = 0.1 × the mean input
norm that maximises the model's loss (`superpos_jax.toy.adversarial.attack_toy`: the paper's
analytic per-feature attacks ±ε (WᵀW)_i/‖(WᵀW)_i‖, the best of them and random starts
refined by projected gradient ascent).

Choices where the paper is silent:
* Attacked inputs are drawn from the training distribution conditioned on x ≠ 0
  (`sample_nonzero_features`, exact), and ε is 0.1 × their mean norm. Unconditioned, at
  1 − S = 0.001 98% of inputs are all-zero: ε would shrink with the empty inputs and the
  mean would be over inputs with nothing to attack.
* The loss under attack compares the output with the *clean* input x (`target="clean"`,
  an adversarial example: the input changed, the right answer did not); `--set
  target=perturbed` scores the output against x + δ instead.
* Vulnerability = the mean loss increase under attack per unit ε², times n: the
  importance-weighted squared output error the attack adds, in units where pushing one
  importance-1 output by ε costs 1 (so a model without superposition scores ≈ 1). In the
  linear regime an attack along (WᵀW)_i moves output i by ε ‖(WᵀW)_i‖ = ε ‖W_i‖² / √D_i,
  so vulnerability grows like 1 / D_i — the paper's "features per dimension". The summary
  also gives the relative increase, attacked / clean loss − 1.

The figure plots vulnerability against 1/(1 − S) beside features per dimension ‖W‖_F² / m,
the relative loss increase, and vulnerability against features per dimension. Measured
(default config): the linear model stays at 1 at every sparsity (it never superposes); the
ReLU model rises from 1 (dense) to ≈ 2.1 at 1 − S = 0.001 while features per dimension
rises from 1 to ≈ 3.2 — monotone with it but sublinear, because only outputs above their
(negative) bias threshold can be pushed and the attacked outputs are importance-weighted.
The relative loss increase of the ReLU model rises ≈ 3× (1.4 → 4.6), but it also falls
6× for the linear model as the clean loss shrinks, so it is not a clean measure of
superposition; it is reported beside the primary measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import common
from superpos_jax import plots
from superpos_jax.toy.adversarial import attack_toy, toy_attack_loss
from superpos_jax.config import NonNegativeInt, PositiveFloat, PositiveInt, check_power, each, in_range, non_empty
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.models import ToyParams, toy_hparams
from superpos_jax.engine.sweep import Grid

NAME = "adversarial"
DESCRIPTION = "optimal L2 attacks (0.1 x mean input norm) on n=20, m=5 toy models: vulnerability tracks features per dimension"


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 20
    d_hidden: PositiveInt = 5
    importance_base: PositiveFloat = 0.7
    feature_probabilities: Annotated[tuple[float, ...], non_empty, each(in_range(0.0, 1.0, closed="(]"))] = (
        1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
    """Each in (0, 1]: an all-zero input cannot be attacked."""
    models: common.ToyModels = ("linear", "relu")
    n_seeds: PositiveInt = 4
    attack_fraction: PositiveFloat = 0.1
    n_inputs: PositiveInt = 256
    attack_steps: PositiveInt = 100
    attack_refine: PositiveInt = 4
    attack_random: NonNegativeInt = 4
    target: Literal["clean", "perturbed"] = "clean"

    def check(self) -> None:
        """importance_base**(n_features - 1) <= 1e30 (the importances stay finite in float32)."""
        super().check()
        check_power("importance_base", self.importance_base, self.n_features - 1, "n_features - 1")


QUICK = {"n_steps": 3_000, "n_seeds": 1, "chunk_steps": 1_500, "n_inputs": 64, "attack_steps": 50}


def sample_nonzero_features(
    key: PRNGKeyArray, feature_probability: Float[ArrayLike, " feature"], n_features: int, batch_size: int
) -> Float[Array, "feature batch"]:
    """Sparse features (present with probability p_i, magnitude U[0, 1]) conditioned on at
    least one being present — exactly, with static shapes: the first present feature k is
    drawn with probability ∝ p_k Π_{j<k} (1 − p_j); features before it are absent, after it
    independent as usual. Columns are examples. Needs some p_i > 0."""
    p = jnp.broadcast_to(jnp.asarray(feature_probability, jnp.float32), (n_features,))
    k_first, k_present, k_size = jax.random.split(key, 3)
    log_absent = jnp.log1p(-p)
    logits = jnp.log(p) + jnp.concatenate([jnp.zeros(1), jnp.cumsum(log_absent)[:-1]])
    first = jax.random.categorical(k_first, logits, shape=(batch_size,))
    index = jnp.arange(n_features)[:, None]
    present = jnp.where(index == first[None, :], True,
                        (index > first[None, :]) & (jax.random.uniform(k_present, (n_features, batch_size)) < p[:, None]))
    return jnp.where(present, jax.random.uniform(k_size, (n_features, batch_size)), 0.0)


def attack_all(cfg: Config):
    """A jitted `(params, hparams, key) -> dict` attacking every instance on `n_inputs` inputs.

    The same inputs (from `key`) for every instance of equal feature probability. Returns
    per instance: `epsilon` (), `clean` and `attacked` losses (instance, input), and the
    attack norms `delta_norm` (instance, input).
    """
    n = cfg.n_features

    def one_instance(params: ToyParams, hparams: Any, key: PRNGKeyArray) -> dict[str, Array]:
        k_inputs, k_starts = jax.random.split(key)
        x = sample_nonzero_features(k_inputs, hparams["feature_probability"], n, cfg.n_inputs)
        epsilon = cfg.attack_fraction * jnp.mean(jnp.linalg.norm(x, axis=0))
        imp, flags = hparams["importance"], hparams["flags"]

        def one_input(x_b: Array, k: PRNGKeyArray) -> tuple[Array, Array, Array]:
            clean = toy_attack_loss(params, x_b, jnp.zeros(n), imp, flags, target=cfg.target)
            found = attack_toy(params, x_b, imp, flags, epsilon, key=k, n_steps=cfg.attack_steps,
                               n_refine=cfg.attack_refine, n_random=cfg.attack_random, target=cfg.target)
            return clean, found.value, jnp.linalg.norm(found.delta)

        keys = jax.random.split(k_starts, cfg.n_inputs)
        clean, attacked, norm = jax.vmap(one_input, in_axes=(1, 0))(x, keys)
        return {"epsilon": epsilon, "clean": clean, "attacked": attacked, "delta_norm": norm}

    @jax.jit
    def run(params: ToyParams, hparams: Any, key: PRNGKeyArray) -> dict[str, Array]:
        return jax.vmap(one_instance, in_axes=(0, 0, None))(params, hparams, key)

    return run


def vulnerability(clean: np.ndarray, attacked: np.ndarray, epsilon: np.ndarray, n_features: int) -> dict[str, np.ndarray]:
    """Per instance, from losses (instance, input) and ε (instance,): `vulnerability` =
    n · mean(attacked − clean) / ε², and `relative_increase` = mean(attacked) / mean(clean) − 1."""
    gain = n_features * np.mean(attacked - clean, axis=1) / np.square(epsilon)
    relative = np.mean(attacked, axis=1) / np.maximum(np.mean(clean, axis=1), 1e-30) - 1.0
    return {"vulnerability": gain, "relative_increase": relative}


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    grid = Grid({"model": cfg.models, "feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})
    hparams = toy_hparams(
        grid.column("feature_probability"), geometric_importance(cfg.n_features, cfg.importance_base),
        grid.column("model"), cfg.learning_rate,
    )
    trainer = cfg.toy_trainer(cfg.n_features, cfg.d_hidden)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, attack every model, write the figure, return the summary."""
    built = build(cfg)
    hparams = built[1]
    grid, result, W, per, final_loss, ok = common.train_toy(NAME, cfg, built, out_dir, progress=progress, execution=execution)
    attack_key = jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 2)
    found = jax.tree.map(np.asarray, attack_all(cfg)(result.state.params, hparams, attack_key))
    vul = vulnerability(found["clean"], found["attacked"], found["epsilon"], cfg.n_features)
    features_per_dim = 1.0 / per["dimensions_per_feature"]

    folded = grid.fold({**vul, "features_per_dimension": features_per_dim, "ok": ok,
                        "n_represented": per["n_represented"], "epsilon": found["epsilon"]})
    if is_primary():
        plots.save(plots.vulnerability_figure(
            cfg.feature_probabilities, cfg.models, folded["vulnerability"], folded["features_per_dimension"],
            relative_increase=folded["relative_increase"], usable=folded["ok"],
            title=(f"Optimal L2 attack, ‖δ‖ ≤ {cfg.attack_fraction:g} × mean input norm: n={cfg.n_features}, "
                   f"m={cfg.d_hidden}, importance {cfg.importance_base}^i, {cfg.n_seeds} seed(s)"),
        ), out_dir.figures / "adversarial.png")
        plots.save(common.seed_loss_curves(grid, result, lambda c: f"{c['model']} p={c['feature_probability']:g}",
                                           log_every=cfg.log_every), out_dir.figures / "loss.png")

    cells = []
    for a, model in enumerate(cfg.models):
        for b, p in enumerate(cfg.feature_probabilities):
            use = folded["ok"][a, b]
            mean = lambda key: float(np.mean(folded[key][a, b][use])) if use.any() else None  # noqa: E731
            cells.append({
                "model": model, "feature_probability": p, "epsilon": float(folded["epsilon"][a, b, 0]),
                "vulnerability": mean("vulnerability"),
                "vulnerability_per_seed": folded["vulnerability"][a, b].round(5).tolist(),
                "relative_increase": mean("relative_increase"),
                "features_per_dimension": mean("features_per_dimension"),
                "features_per_dimension_per_seed": folded["features_per_dimension"][a, b].round(5).tolist(),
                "n_represented_per_dimension": mean("n_represented") / cfg.d_hidden if use.any() else None,  # type: ignore[operator]
            })
    dense = {c["model"]: c["vulnerability"] for c in cells if c["feature_probability"] == max(cfg.feature_probabilities)}
    for c in cells:
        base = dense.get(c["model"])
        c["vulnerability_vs_dense"] = c["vulnerability"] / base if base and c["vulnerability"] is not None else None
    return {
        **common.run_record(grid, result, ok),
        "attack": {"fraction_of_mean_input_norm": cfg.attack_fraction, "n_inputs": cfg.n_inputs,
                   "steps": cfg.attack_steps, "refined_analytic_starts": cfg.attack_refine,
                   "random_starts": cfg.attack_random, "target": cfg.target,
                   "max_delta_norm_over_epsilon": float(np.max(found["delta_norm"] / found["epsilon"][:, None]))},
        "cells": cells,
        "instances": common.instance_records(grid, final_loss, ok, {
            **vul, "features_per_dimension": features_per_dim, "epsilon": found["epsilon"],
            "clean_loss": found["clean"].mean(axis=1), "attacked_loss": found["attacked"].mean(axis=1),
            "n_represented": per["n_represented"],
        }),
    }
