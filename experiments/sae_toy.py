"""Ground-truth recovery (Sharkey et al., 2022): SAEs of every architecture trained on synthetic
activations built from a known dictionary, scored by how well their decoders recover it.

Data: n_features = 512 random unit directions in d_in = 256 dimensions (2× overcomplete); each
feature fires independently with probability p_i ∝ base^i, Σ p_i = mean_active = 5, with
magnitude U[0, 1]. The decay base is 0.995, not the 0.99 often used: with 0.99 the rarest
feature fires with p ≈ 3e-4, i.e. a few hundred times in the ~1M training activations a CPU
budget allows, too rarely for its latent to converge. With 0.995, p_0 ≈ 0.027 and
p_511 ≈ 0.0021 (13× apart, still clearly decaying), so the rarest feature fires ~1,000 times
in the default run (n_steps × batch_size = 2,000 × 256 = 512k activations) and ~17 times in
the 8,192 held-out activations that measure densities.

Dictionary: d_sae = 1024 latents (2× the truth; `--set d_sae=512` for exactly the truth's
size). Architectures, each its own sweep (tag = its name) over its coefficient × seed:

* relu       — 2023 recipe: unit-norm decoder, ‖x − x̂‖² + λ‖f‖₁, dead latents resampled
               (every `resample_every` steps, and only before the learning-rate decay);
* relu-2024  — April-2024 recipe: unconstrained decoder, λ Σ f_i‖W_dec,i‖, input scaling,
               λ warm-up, clipped gradients;
* topk, batchtopk — k active latents (AuxK for dead latents);
* jumprelu   — λ · L0 with straight-through threshold gradients; thresholds start at
               `jumprelu_threshold` = 0.1 (the scale of U[0, 1] magnitudes) with rectangle-kernel
               bandwidth 0.05, because from the library's 0.001 Adam cannot move log θ far
               enough in 2,000 steps (the L0 then stays at ~50);
* gated      — 2023-style gated SAE (unit-norm decoder, resampling as relu; jumprelu
               resamples too).

Every architecture trains with Adam whose learning rate decays linearly to 0 over the last
`decay_fraction` of the steps: the decay is what brings decoder columns from cos ≈ 0.98 to
≥ 0.99 of their feature within a short budget.

Per instance the summary reports MMCS (mean over ground-truth features of the max cosine to
any decoder column), the Hungarian (one-to-one) matching score, L0, FVU and the dead fraction
(latents that never fire on `eval_samples` held-out activations); per architecture the
instance with the highest MMCS; at the top `best_mmcs` and `target_met` (best_mmcs ≥ target).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jax
import numpy as np

from . import common
from superpos_jax.sae import sources
from superpos_jax.sae import metrics as sae_metrics
from superpos_jax.config import (
    NonNegativeInt, PositiveFloat, PositiveInt, Probability, each, fail, in_range, library_errors, non_empty,
    non_negative, one_of,
)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.plots import base as plot_base
from superpos_jax.plots import sae as sae_plots
from superpos_jax.sae.architectures import get as get_architecture
from superpos_jax.sae.training import (
    SAETraining,
    batched_evaluate,
    recipe_optim,
    sae_hparams,
    sae_task,
)
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.trainer import Trainer, make_trainer

NAME = "sae-toy"
DESCRIPTION = "SAE ground-truth recovery: 512 features in 256 dims, MMCS of relu/2024/topk/batchtopk/jumprelu/gated"

ARCHITECTURES: tuple[str, ...] = ("relu", "relu-2024", "topk", "batchtopk", "jumprelu", "gated")
_DICTIONARY_SALT = 1
_Coefficients = Annotated[tuple[float, ...], each(non_negative)]
"""k (TopK family) or λ values of one architecture (the grid axis of its sweep)."""
_EVAL_SALT = 2


@dataclass(frozen=True)
class Config(common.RunConfig):
    """Ground truth, dictionary size, per-architecture coefficient grids and training."""

    n_features: PositiveInt = 512
    d_in: PositiveInt = 256
    mean_active: PositiveFloat = 5.0
    probability_base: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.995
    d_sae: PositiveInt = 1024
    architectures: Annotated[tuple[str, ...], non_empty, each(one_of(*ARCHITECTURES))] = ARCHITECTURES
    relu_l1: _Coefficients = (0.1, 0.3)
    relu_2024_l1: _Coefficients = (2.0, 5.0)
    topk_k: _Coefficients = (5.0,)
    batchtopk_k: _Coefficients = (5.0,)
    jumprelu_l1: _Coefficients = (0.03, 0.1)
    gated_l1: _Coefficients = (0.3, 1.0)
    jumprelu_bandwidth: PositiveFloat = 0.05
    jumprelu_threshold: PositiveFloat = 0.1
    n_seeds: PositiveInt = 1
    n_steps: PositiveInt = 2_000
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 3e-3
    decay_fraction: Probability = 0.4
    dead_steps: PositiveInt = 200
    resample_every: NonNegativeInt = 500
    target: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.99
    eval_samples: PositiveInt = 8192
    chunk_steps: PositiveInt = 500
    log_every: PositiveInt = 50

    def check(self) -> None:
        """d_sae >= n_features; the most frequent feature has p <= 1; each architecture's
        coefficients are non-empty (k in [1, d_sae] for the TopK family); every
        architecture's `SAETraining` accepts the values."""
        super().check()
        if self.d_sae < self.n_features:
            fail("d_sae", self.d_sae, f">= n_features={self.n_features} (a dictionary at least as large as the truth)")
        top = self.mean_active * _first_share(self.n_features, self.probability_base)
        if top > 1:
            fail("mean_active", self.mean_active, f"small enough that the most frequent feature has p <= 1 (got {top:.3g})")
        for arch in self.architectures:
            field = _coefficient_field(arch)
            values = getattr(self, field)
            if not values:
                fail(field, values, "at least one value")
            if coefficient_name(arch) == "k" and any(not 1 <= v <= self.d_sae for v in values):
                fail(field, values, f"values of k in [1, d_sae={self.d_sae}]")
            with library_errors(field):
                training_of(self, arch)


QUICK = {
    "n_features": 64, "d_in": 32, "mean_active": 3.0, "d_sae": 128, "n_steps": 1_000, "batch_size": 256,
    "chunk_steps": 1_000, "dead_steps": 100, "resample_every": 250, "eval_samples": 4096,
    "relu_l1": (0.3,), "relu_2024_l1": (3.0,), "jumprelu_l1": (0.03,), "gated_l1": (1.0,),
    "topk_k": (3.0,), "batchtopk_k": (3.0,),
}


def _first_share(n: int, base: float) -> float:
    """p_0 / Σ p_i for p_i ∝ base^i."""
    return float(1.0 / np.sum(np.power(float(base), np.arange(n, dtype=np.float64))))


def _coefficient_field(arch: str) -> str:
    return {"relu": "relu_l1", "relu-2024": "relu_2024_l1", "topk": "topk_k", "batchtopk": "batchtopk_k",
            "jumprelu": "jumprelu_l1", "gated": "gated_l1"}[arch]


def coefficient_name(arch: str) -> str:
    """The swept coefficient of an architecture: "k" (TopK family) or "l1_coefficient" (λ)."""
    return get_architecture(_kind(arch)).swept


def _kind(arch: str) -> str:
    """The registered architecture of one of `ARCHITECTURES` (relu-2024 is relu)."""
    return "relu" if arch == "relu-2024" else arch


def ground_truth(cfg: Config) -> sources.GroundTruthSource:
    """The synthetic source: `ground_truth_dictionary(n_features, d_in)` (rows, unit norm) with
    `decaying_probabilities(n_features, probability_base, mean_active)`, independent features."""
    dictionary = sources.ground_truth_dictionary(
        cfg.n_features, cfg.d_in, key=jax.random.fold_in(jax.random.key(cfg.seed), _DICTIONARY_SALT))
    p = sources.decaying_probabilities(cfg.n_features, cfg.probability_base, cfg.mean_active)
    return sources.GroundTruthSource(dictionary, p)


def training_of(cfg: Config, arch: str) -> SAETraining:
    """The static `SAETraining` of one architecture (kind, recipe, resampling, warm-up)."""
    kind = _kind(arch)
    recipe = "2024" if arch == "relu-2024" else "2023"
    resample = 0 if (get_architecture(kind).auxk or recipe == "2024") else cfg.resample_every
    return SAETraining(
        kind, cfg.d_in, cfg.d_sae, batch_size=cfg.batch_size, recipe=recipe, dead_steps=cfg.dead_steps,
        resample_every=resample, resample_until=int(round((1.0 - cfg.decay_fraction) * cfg.n_steps)),
        l1_warmup_steps=cfg.n_steps // 20 if recipe == "2024" else 0, jumprelu_threshold=cfg.jumprelu_threshold,
    )


def optim_of(cfg: Config, training: SAETraining) -> OptimConfig:
    """The recipe's optimizer with the learning rate decayed linearly to 0 over the last
    `decay_fraction` of the steps (April 2024 keeps its gradient clipping)."""
    optim = recipe_optim(training, cfg.n_steps, cfg.learning_rate)
    decay = int(round(cfg.decay_fraction * cfg.n_steps))
    if decay == 0:
        return dataclasses.replace(optim, schedule="constant", total_steps=None, decay_steps=None)
    return dataclasses.replace(optim, schedule="linear", total_steps=cfg.n_steps, decay_steps=decay)


def build(cfg: Config, arch: str) -> tuple[Grid, dict[str, np.ndarray], jax.Array, Trainer, SAETraining]:
    """Grid (coefficient × seed), per-instance hparams, keys, trainer and `SAETraining` of the
    sweep of one architecture."""
    name = coefficient_name(arch)
    grid = Grid({name: getattr(cfg, _coefficient_field(arch)), "seed": range(cfg.n_seeds)})
    training = training_of(cfg, arch)
    extra = {"bandwidth": cfg.jumprelu_bandwidth} if arch == "jumprelu" else {}
    hparams = sae_hparams(training, **{name: grid.column(name)}, **extra)
    trainer = make_trainer(sae_task(training, ground_truth(cfg)), optim_of(cfg, training), log_every=cfg.log_every)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer, training


def recovery_scores(decoders: np.ndarray, dictionary: np.ndarray) -> dict[str, np.ndarray]:
    """Recovery of a ground-truth dictionary by each of a stack of decoders.

    Args:
        decoders: (instance, d_in, d_sae) decoder columns.
        dictionary: (n_gt, d_in) ground-truth rows.

    Returns:
        `max_cosine` (instance, n_gt): max_j cos(g_i, d_j); `mmcs` (instance,) its mean;
        `hungarian` (instance,) the one-to-one matching score.
    """
    per = [sae_metrics.recovery(d, dictionary) for d in decoders]
    return {"max_cosine": np.stack([p["max_cosine"] for p in per]),
            "mmcs": np.asarray([p["mmcs"] for p in per]), "hungarian": np.asarray([p["hungarian"] for p in per])}


def run_architecture(
    cfg: Config, arch: str, source: sources.GroundTruthSource, x_eval: jax.Array, out_dir: RunDir, *,
    progress: bool, execution: Execution,
) -> dict[str, Any]:
    """Train one architecture's sweep and score every instance; host arrays and records."""
    grid, hparams, keys, trainer, training = build(cfg, arch)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress,
                          execution=execution, tag=arch)
    final, ok = common.final_losses(result)
    measured = batched_evaluate(training, result.state, x_eval, hparams)
    scores = recovery_scores(np.asarray(result.state.params.W_dec), np.asarray(source.dictionary))
    density = measured["fired"].astype(np.float64) / cfg.eval_samples
    per = {
        "mmcs": scores["mmcs"], "hungarian": scores["hungarian"], "l0": measured["l0"], "fvu": measured["fvu"],
        "dead_fraction": np.mean(measured["fired"] == 0, axis=1),
        "recovered_fraction": np.mean(scores["max_cosine"] >= cfg.target, axis=1),
    }
    usable = np.where(ok & np.isfinite(per["mmcs"]), per["mmcs"], -np.inf)
    best = int(np.argmax(usable))
    records = common.instance_records(grid, final, ok, per)
    return {
        "grid": grid, "result": result, "ok": ok, "per": per, "best": best, "density": density,
        "max_cosine": scores["max_cosine"], "records": records,
    }


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train every architecture's sweep, write the figures (process 0), return the summary."""
    source = ground_truth(cfg)
    x_eval = source.sample(jax.random.fold_in(jax.random.key(cfg.seed), _EVAL_SALT), cfg.eval_samples)
    runs = {arch: run_architecture(cfg, arch, source, x_eval, out_dir, progress=progress, execution=execution)
            for arch in cfg.architectures}

    per_arch: dict[str, Any] = {}
    for arch, r in runs.items():
        b = r["best"]
        per_arch[arch] = {
            "coefficient": coefficient_name(arch),
            **common.run_record(r["grid"], r["result"], r["ok"]),
            "best": {"instance": b, "coords": r["grid"].coords(b),
                     **{k: float(v[b]) for k, v in r["per"].items()},
                     "max_cosine_min": float(r["max_cosine"][b].min())},
            "instances": r["records"],
        }
    best_arch = max(per_arch, key=lambda a: per_arch[a]["best"]["mmcs"])
    best_mmcs = per_arch[best_arch]["best"]["mmcs"]
    if is_primary():
        _figures(cfg, runs, out_dir.figures)
    return {
        "ground_truth": {
            "n_features": cfg.n_features, "d_in": cfg.d_in, "mean_active": cfg.mean_active,
            "probability_base": cfg.probability_base,
            "firing_probability_range": [float(source.firing_probability.min()), float(source.firing_probability.max())],
            "training_activations": cfg.n_steps * cfg.batch_size,
        },
        "d_sae": cfg.d_sae,
        "target": cfg.target,
        "best_mmcs": best_mmcs,
        "best_architecture": best_arch,
        "target_met": bool(best_mmcs >= cfg.target),
        "mmcs_by_architecture": {a: v["best"]["mmcs"] for a, v in per_arch.items()},
        "hungarian_by_architecture": {a: v["best"]["hungarian"] for a, v in per_arch.items()},
        "architectures": per_arch,
        "train_seconds": float(sum(r["result"].seconds for r in runs.values())),
    }


def _label(arch: str, coords: dict[str, Any]) -> str:
    value = coords[coefficient_name(arch)]
    return f"{'k' if coefficient_name(arch) == 'k' else 'λ'}={value:g}"


def _figures(cfg: Config, runs: dict[str, dict[str, Any]], figures: Path) -> None:
    title = (f"{cfg.n_features} features in {cfg.d_in} dims (p ∝ {cfg.probability_base:g}^i, "
             f"{cfg.mean_active:g} active), d_sae={cfg.d_sae}")
    l0 = np.concatenate([r["per"]["l0"] for r in runs.values()])
    fvu = np.concatenate([r["per"]["fvu"] for r in runs.values()])
    groups = [a for a, r in runs.items() for _ in range(r["grid"].size)]
    notes = [_label(a, r["grid"].coords(i)) for a, r in runs.items() for i in range(r["grid"].size)]
    plot_base.save(sae_plots.pareto(l0, fvu, groups=groups, annotate=notes, title=f"sparsity vs FVU — {title}"),
                   figures / "pareto.png")
    best_cos = {a: r["max_cosine"][r["best"]] for a, r in runs.items()}
    best_hung = {a: float(r["per"]["hungarian"][r["best"]]) for a, r in runs.items()}
    plot_base.save(sae_plots.recovery(best_cos, hungarian=best_hung, target=cfg.target,
                                      title=f"best instance per architecture — {title}"),
                   figures / "recovery.png")
    densities = {f"{a} ({_label(a, r['grid'].coords(r['best']))})": r["density"][r["best"]] for a, r in runs.items()}
    plot_base.save(sae_plots.density_histograms(densities, title=f"feature density, best instance per architecture (d_sae={cfg.d_sae})"),
                   figures / "density.png")
    losses = np.stack([r["result"].losses[r["best"]] for r in runs.values()])
    labels = [f"{a} ({_label(a, r['grid'].coords(r['best']))}{', scaled inputs' if a == 'relu-2024' else ''})"
              for a, r in runs.items()]
    plot_base.save(plot_base.loss_curves(losses, labels, log_every=cfg.log_every), figures / "loss.png")
