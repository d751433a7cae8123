"""Computation in superposition: the absolute-value model (Toy Models of Superposition).

x_i ~ U[−1, 1] when present (probability 1 − S), target |x|; h = ReLU(W₁ x),
y = ReLU(W₂ h + b), untied W₁ (m, n) and W₂ (n, m), importance 0.8**i. Two sizes, each its
own compiled sweep over sparsity × seed (static shapes; checkpoints under `<n>x<m>/`):
n=3, m=6 (room for a pair of neurons per feature) and the paper's n=100, m=40. The
lowest-loss seed per sparsity is chosen on the device (`common.best_of_seeds`).

Dense features: every feature gets two monosemantic neurons, ReLU(x_i) and ReLU(−x_i),
summed by W₂ to |x_i|. Sparse features: more features than m/2 are computed, neurons become
polysemantic — computation in superposition.

Analysis of one model (`abs_structure`). Each neuron is first rescaled so its largest |W₁|
entry is 1 (its W₂ column inversely; the model is unchanged — the paper's convention).
* used neuron: max_i |W₂'_ik| ≥ `gain_threshold` (it passes something to the output);
  it *carries* feature i when |W₁'_ki| ≥ `carry_fraction`; neurons per feature count those.
* clean ±pair for feature i: two used monosemantic neurons with dominant feature i, input
  weights of opposite signs and output gains W₂'_ik in [0.5, 1.5] — ReLU(x_i) and ReLU(−x_i).
* computed feature (behavioural): alone in the input, the model gets it right — y_i at
  x = ±e_i lies in [0.75, 1.25] for both signs and y_i at x = 0 is at most 0.25; *half
  computed* when exactly one sign is right (ReLU(±x_i) instead of |x_i|).
* asymmetric superposition motif — the detector: a used neuron k with primary feature p
  (|W₁'_kp| = 1) stores a secondary feature j ≠ p with a weight at least `asymmetry` times
  smaller, `min_secondary` ≤ |W₁'_kj| ≤ 1/asymmetry, while reading j out at least
  `asymmetry` times more strongly, W₂'_jk ≥ asymmetry · W₂'_pk > 0, both paths carrying
  a gain ≥ 0.2 (W₂'_pk ≥ 0.2 and |W₁'_kj| W₂'_jk ≥ 0.2). That is the paper's W₁ = [2, −½],
  W₂ = [½, 2] pattern: p interferes strongly with j, not j with p. The motif is *complete*
  when another used neuron k' fires on the same side of p (sign W₁'_k'p = sign W₁'_kp) and
  inhibits j at least half as strongly as k interferes, |W₁'_k'p| W₂'_jk' ≤ −½ W₂'_jk,
  and the inhibition works: with only p present (on k's side, |x_p| = 1), y_j ≤ 0.25.
  The signs of p and j in W₁ are not constrained (either side of a feature can be stored).

The default (n=100, m=40: 2 seeds × 5 sparsities × 10k steps at ~1k model-steps/s) keeps the
run near 3 minutes on 2 CPU cores; more seeds with `--set seeds=16,8`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from . import common
from .common import best_of_seeds
from superpos_jax import plots
from superpos_jax.config import (
    NonNegativeFloat, PositiveFloat, PositiveInt, Probabilities, Rule, check_power, distinct, each, fail, in_range, non_empty,
    positive,
)
from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.models import AbsParams, abs_forward, abs_task, toy_hparams
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer

NAME = "abs-computation"
DESCRIPTION = "computing |x| with ReLU neurons, n=3/m=6 and n=100/m=40: ±pairs when dense, computation in superposition when sparse"

_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NXM = Rule("NxM sizes with positive integers (n_features x d_hidden), e.g. 3x6",
            lambda s: (m := _SIZE.match(s)) is not None and int(m.group(1)) > 0 and int(m.group(2)) > 0)


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    sizes: Annotated[tuple[str, ...], non_empty, each(_NXM), distinct] = ("3x6", "100x40")
    seeds: Annotated[tuple[int, ...], each(positive)] = (16, 2)
    importance_base: PositiveFloat = 0.8
    feature_probabilities: Probabilities = (1.0, 0.3, 0.1, 0.03, 0.01)
    eval_batches: PositiveInt = 8
    carry_fraction: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.25
    gain_threshold: NonNegativeFloat = 0.1
    asymmetry: Annotated[float, Rule("> 1", lambda v: v > 1)] = 2.0
    min_secondary: NonNegativeFloat = 0.1

    def check(self) -> None:
        """One seed count per size; min_secondary <= 1 / asymmetry; importance_base**(n - 1) <= 1e30
        for the largest size n x m (the importances stay finite in float32)."""
        super().check()
        if len(self.seeds) != len(self.sizes):
            fail("seeds", self.seeds, f"one positive seed count per size ({len(self.sizes)} values)")
        n = max(parse_size(size)[0] for size in self.sizes)
        check_power("importance_base", self.importance_base, n - 1, "n_features - 1 of the largest size")
        if not self.min_secondary <= 1 / self.asymmetry:
            fail("min_secondary", self.min_secondary, f"in [0, 1/asymmetry = {1 / self.asymmetry:g}]")


QUICK = {"n_steps": 2_000, "seeds": (8, 1), "chunk_steps": 1_000, "eval_batches": 2}


def parse_size(size: str) -> tuple[int, int]:
    """"100x40" -> (n_features=100, d_hidden=40)."""
    m = _SIZE.match(size)
    if m is None:
        raise ValueError(f"size {size!r} is not of the form NxM")
    return int(m.group(1)), int(m.group(2))


def rescale_neurons(
    W1: Float[ArrayLike, "hidden feature"], W2: Float[ArrayLike, "feature hidden"]
) -> tuple[Float[Array, "hidden feature"], Float[Array, "feature hidden"]]:
    """Scale every neuron so its largest |W₁| entry is 1 and its W₂ column inversely (the
    model's function is unchanged: ReLU is positively homogeneous). Zero rows stay zero."""
    W1, W2 = jnp.asarray(W1), jnp.asarray(W2)
    scale = jnp.max(jnp.abs(W1), axis=1)
    safe = jnp.where(scale > 1e-12, scale, 1.0)
    return W1 / safe[:, None], W2 * safe[None, :]


def abs_structure(
    params: AbsParams,
    *,
    carry_fraction: float = 0.25,
    gain_threshold: float = 0.1,
    asymmetry: float = 2.0,
    min_secondary: float = 0.1,
) -> dict[str, Array]:
    """Neuron-level structure of one absolute-value model (see the module docstring).

    Returns a dict of
        `W1` (hidden, feature), `W2` (feature, hidden): the rescaled weights;
        `used` (hidden,), `n_features` (hidden,): features carried per used neuron;
        `neurons_per_feature` (feature,); `clean_pair` (feature,) bool;
        `computed`, `half_computed` (feature,) bool, `response` (3, feature): y_i at x = +e_i, −e_i, 0;
        `asymmetric` (hidden, feature) bool: neuron k stores feature j asymmetrically;
        `inhibitor` (hidden, feature, hidden) bool: k' completes the motif of (k, j);
        `motif` (hidden, feature) bool: asymmetric, inhibited, and y_j ≤ 0.25 when p fires alone;
        counts `n_used`, `n_polysemantic`, `n_clean_pairs`, `n_computed`, `n_half_computed`,
        `n_asymmetric` (neurons) and `n_motifs` (neuron, secondary feature pairs) ().
    """
    W1, W2 = rescale_neurons(params.W1, params.W2)
    n_hidden, n_features = W1.shape
    absW1 = jnp.abs(W1)
    used = jnp.max(jnp.abs(W2), axis=0) >= gain_threshold
    carries = (absW1 >= carry_fraction) & used[:, None]
    n_carried = jnp.sum(carries, axis=1)
    primary = jnp.argmax(absW1, axis=1)
    primary_onehot = jax.nn.one_hot(primary, n_features, dtype=jnp.bool_)
    gain = jnp.take_along_axis(W2.T, primary[:, None], axis=1)[:, 0]  # W₂'_{p(k), k}

    mono = used & (n_carried == 1)
    good_gain = (gain >= 0.5) & (gain <= 1.5)
    pos = mono[:, None] & primary_onehot & (W1 > 0) & good_gain[:, None]
    neg = mono[:, None] & primary_onehot & (W1 < 0) & good_gain[:, None]
    clean_pair = jnp.any(pos, axis=0) & jnp.any(neg, axis=0)

    probe = jnp.eye(n_features)
    params_b = AbsParams(W1=W1, W2=W2, b=jnp.asarray(params.b))
    response = jnp.stack([
        jnp.diagonal(abs_forward(params_b, probe)), jnp.diagonal(abs_forward(params_b, -probe)),
        abs_forward(params_b, jnp.zeros((n_features, 1)))[:, 0],
    ])
    right = jnp.abs(response[:2] - 1.0) <= 0.25  # (sign, feature)
    quiet = response[2] <= 0.25
    computed = right[0] & right[1] & quiet
    half_computed = (right[0] != right[1]) & quiet

    W2T = W2.T  # (hidden, feature): W₂'_{j k} at [k, j]
    secondary = (absW1 >= min_secondary) & (absW1 <= 1.0 / asymmetry) & ~primary_onehot
    asymmetric = (
        used[:, None] & secondary & (gain[:, None] >= 0.2) & (W2T >= asymmetry * gain[:, None])
        & (absW1 * W2T >= 0.2)
    )
    side = jnp.sign(jnp.take_along_axis(W1, primary[:, None], axis=1)[:, 0])  # (hidden,)
    W1_on_primary = W1[:, primary].T  # [k, k'] = W₁'_{k', p(k)}
    same_side = side[:, None] * W1_on_primary > 0
    inhibition = jnp.abs(W1_on_primary)[:, None, :] * W2T.T[None, :, :]  # [k, j, k'] = |W₁'_{k'p}| W₂'_{jk'}
    inhibitor = (
        asymmetric[:, :, None] & (same_side & used[None, :] & ~jnp.eye(n_hidden, dtype=jnp.bool_))[:, None, :]
        & (inhibition <= -0.5 * W2T[:, :, None])
    )
    # The inhibition must work: with only the primary feature present, on the neuron's side,
    # output j stays near zero. Columns of `alone` are the outputs for x = +e_p and −e_p.
    alone = jnp.stack([abs_forward(params_b, probe), abs_forward(params_b, -probe)])  # (sign, j, p)
    on_side = jnp.where(side[:, None] > 0, alone[0][:, primary].T, alone[1][:, primary].T)  # [k, j]
    motif = asymmetric & jnp.any(inhibitor, axis=2) & (on_side <= 0.25)
    return {
        "W1": W1, "W2": W2, "used": used, "n_features": n_carried,
        "neurons_per_feature": jnp.sum(carries, axis=0), "clean_pair": clean_pair,
        "computed": computed, "half_computed": half_computed, "response": response,
        "asymmetric": asymmetric, "inhibitor": inhibitor, "motif": motif,
        "n_used": jnp.sum(used), "n_polysemantic": jnp.sum(n_carried > 1),
        "n_clean_pairs": jnp.sum(clean_pair), "n_computed": jnp.sum(computed),
        "n_half_computed": jnp.sum(half_computed),
        "n_asymmetric": jnp.sum(jnp.any(asymmetric, axis=1)), "n_motifs": jnp.sum(motif),
    }


def build(cfg: Config, size: str, n_seeds: int):
    """Grid, hparams, keys and trainer of the sweep of one model size."""
    n, m = parse_size(size)
    grid = Grid({"feature_probability": cfg.feature_probabilities, "seed": range(n_seeds)})
    hparams = toy_hparams(
        grid.column("feature_probability"), geometric_importance(n, cfg.importance_base),
        ["relu"] * grid.size, cfg.learning_rate,
    )
    hparams.pop("flags")  # the abs task has no model-kind switch
    task = abs_task(n, m, cfg.batch_size, generator=cfg.generator)  # type: ignore[arg-type]
    optim = cfg.optim()
    trainer = make_trainer(task, optim, log_every=cfg.log_every)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def _motif_list(st: dict[str, np.ndarray]) -> list[dict[str, int]]:
    """The detected motifs of one model: neuron, primary and secondary feature, inhibitors."""
    primary = np.argmax(np.abs(st["W1"]), axis=1)
    return [
        {"neuron": int(k), "primary_feature": int(primary[k]), "secondary_feature": int(j),
         "inhibitors": np.flatnonzero(st["inhibitor"][k, j]).tolist()}
        for k, j in zip(*np.nonzero(st["motif"]))
    ]


def run_size(cfg: Config, size: str, n_seeds: int, out_dir: RunDir, *, progress: bool, execution: Execution) -> dict[str, Any]:
    """Train and analyse one model size; writes its figure; returns its summary block."""
    n, m = parse_size(size)
    grid, hparams, keys, trainer = build(cfg, size, n_seeds)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution, tag=size)
    _, ok = common.final_losses(result)
    select = best_of_seeds(trainer.task, n_seeds, cfg.eval_batches)
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 1)
    best_params, best_loss, best_seed, eval_loss = select(result.state.params, hparams, ok, eval_key)
    measure = jax.jit(jax.vmap(lambda p: abs_structure(
        p, carry_fraction=cfg.carry_fraction, gain_threshold=cfg.gain_threshold,
        asymmetry=cfg.asymmetry, min_secondary=cfg.min_secondary,
    )))
    best = jax.tree.map(np.asarray, measure(best_params))
    every = jax.tree.map(np.asarray, measure(jax.tree.map(jnp.asarray, result.state.params)))
    best_seed, best_loss, eval_loss = np.asarray(best_seed), np.asarray(best_loss), np.asarray(eval_loss)

    motifs = [_motif_list(jax.tree.map(lambda a: a[c], best)) for c in range(len(cfg.feature_probabilities))]
    if is_primary():
        markers = []
        for found in motifs:
            labels: dict[int, str] = {}
            for mo in found:
                labels[mo["neuron"]] = "A"
                for k in mo["inhibitors"]:
                    labels.setdefault(k, "I")
            markers.append(labels)
        figures = out_dir.figures
        plots.save(plots.abs_computation_figure(
            best["W1"], best["W2"], cfg.feature_probabilities,
            n_carried=best["n_features"], neurons_per_feature=best["neurons_per_feature"], markers=markers,
            title=(f"|x| in superposition: n={n} features, m={m} neurons, importance {cfg.importance_base}^i, "
                   f"lowest-loss of {n_seeds} seed(s); A = asymmetric-superposition neuron, I = its inhibitor"),
        ), figures / f"abs_{size}.png")
        shown = grid.fold(np.arange(grid.size))[np.arange(len(cfg.feature_probabilities)), best_seed]
        plots.save(plots.loss_curves(
            result.losses[shown], [f"p={p:g}" for p in cfg.feature_probabilities], log_every=cfg.log_every,
        ), figures / f"loss_{size}.png")

    folded = grid.fold({k: every[k] for k in ("n_clean_pairs", "n_computed", "n_half_computed", "n_motifs", "n_asymmetric")})
    cells = []
    for c, p in enumerate(cfg.feature_probabilities):
        cells.append({
            "feature_probability": p,
            "best_seed": int(best_seed[c]),
            "best_eval_loss": float(best_loss[c]),
            "n_used_neurons": int(best["n_used"][c]),
            "n_polysemantic_neurons": int(best["n_polysemantic"][c]),
            "neurons_per_feature": best["neurons_per_feature"][c].tolist(),
            "features_per_neuron": best["n_features"][c].tolist(),
            "n_features_with_neurons": int(np.sum(best["neurons_per_feature"][c] > 0)),
            "n_clean_pairs": int(best["n_clean_pairs"][c]),
            "clean_pair_features": np.flatnonzero(best["clean_pair"][c]).tolist(),
            "n_computed": int(best["n_computed"][c]),
            "n_half_computed": int(best["n_half_computed"][c]),
            "response_plus_one": best["response"][c, 0].round(4).tolist(),
            "response_minus_one": best["response"][c, 1].round(4).tolist(),
            "response_zero": best["response"][c, 2].round(4).tolist(),
            "n_asymmetric_neurons": int(best["n_asymmetric"][c]),
            "n_motifs": int(best["n_motifs"][c]),
            "motifs": motifs[c],
            "W1_rescaled": best["W1"][c].round(4).tolist() if n * m <= 400 else None,
            "W2_rescaled": best["W2"][c].round(4).tolist() if n * m <= 400 else None,
            "all_seeds": {k: folded[k][c].tolist() for k in folded},
        })
    return {
        "size": size, "n_features": n, "d_hidden": m, "n_seeds": n_seeds,
        **common.run_record(grid, result, ok),
        "best_per_sparsity": cells,
        "instances": common.instance_records(grid, eval_loss, ok, {
            "n_clean_pairs": every["n_clean_pairs"], "n_computed": every["n_computed"],
            "n_polysemantic": every["n_polysemantic"], "n_motifs": every["n_motifs"],
        }),
    }


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train each size's sweep in turn, analyse the best seeds, write the figures, return the summary."""
    blocks = [run_size(cfg, size, s, out_dir, progress=progress, execution=execution) for size, s in zip(cfg.sizes, cfg.seeds)]
    return {
        "n_instances": sum(b["n_instances"] for b in blocks),
        "train_seconds": sum(b["train_seconds"] for b in blocks),
        "detector": {"carry_fraction": cfg.carry_fraction, "gain_threshold": cfg.gain_threshold,
                     "asymmetry": cfg.asymmetry, "min_secondary": cfg.min_secondary},
        "sizes": blocks,
    }
