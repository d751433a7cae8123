"""SAE benchmark on structured ground truth: every architecture × sparsity levels × seeds on data
with a feature hierarchy, Zipfian firing and correlated groups (`superpos_jax.sae.synthetic`),
scored on what SAEBench and Chanin et al. (2024) measure — the failure modes that independent
features cannot show.

Data (`truth`, a `SyntheticConfig`): 128 features in 64 dimensions; 8 parents with 4 mutually
exclusive children each (a child fires only with its parent, P(child | parent) = 0.2, so a firing
parent has a child 80% of the time and fires alone 20% of the time, which gives the absorption
metric the parent latent's own response), the other 88 features free, 4 correlated groups of 4
among them (copula ρ = 0.5), root firing ∝ (r + 1)^−0.5, 4 features active per example on
average, folded-normal magnitudes (mean 1, std 0.15).

SAEs: d_sae = 128 (as many latents as true features: room for every parent and child, so that
absorbing is a choice of the loss, not forced by size), one sweep per architecture over its sparsity coefficient × seed (each sweep
one compiled program; architectures differ in their loss, so they cannot share one):
relu (2023 recipe: unit-norm decoder, L1, resampling), topk, batchtopk, jumprelu, gated and
matryoshka_batchtopk (nested prefixes 1/16 … 1 of the dictionary, each prefix's reconstruction in
the loss). Adam with the learning rate decayed linearly to 0 over the last `decay_fraction`.

Per instance, on `eval_samples` held-out examples (latents in each SAE's inference form):
L0, FVU, dead fraction; MMCS and the Hungarian score of the decoder against the true directions;
absorption (`metrics.feature_absorption`: the parent's latent is the one of best decoder cosine;
the mean over parents of the share of parent-through-child inputs where that latent fails and a
latent carrying parent and child directions fires); splitting
(`metrics.feature_splitting`); precision/recall/F1 of the matched latents as detectors of their
features (`metrics.precision_recall`). The summary compares architectures at matched L0: each
metric (averaged over seeds) is interpolated in log L0 on the L0 range every architecture covers.
Transcoders and crosscoders are not here: they read pairs or stacks of activations, not one
hook's rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.config import (
    NonNegativeInt, PositiveFloat, PositiveInt, Probability, each, fail, library_errors, non_empty, non_negative,
    one_of,
)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import Trainer, make_trainer
from superpos_jax.plots import base as plot_base
from superpos_jax.plots import bench as bench_plots
from superpos_jax.plots import sae as sae_plots
from superpos_jax.rundir import RunDir
from superpos_jax.sae import metrics as sae_metrics
from superpos_jax.sae.architectures import get as get_architecture
from superpos_jax.sae.model import SAE
from superpos_jax.sae.synthetic import SyntheticConfig, SyntheticSource
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task

NAME = "sae-bench"
DESCRIPTION = "every SAE architecture × sparsity × seed on hierarchical ground truth: L0-FVU, absorption, MMCS"

ARCHITECTURES: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "gated", "matryoshka_batchtopk")
COEFFICIENT_FIELDS: dict[str, str] = {
    "relu": "relu_l1", "topk": "topk_k", "batchtopk": "batchtopk_k", "jumprelu": "jumprelu_l1",
    "gated": "gated_l1", "matryoshka_batchtopk": "matryoshka_k",
}
"""The Config field holding each architecture's sparsity levels (λ or k)."""
_Levels = Annotated[tuple[float, ...], non_empty, each(non_negative)]
_TRUTH_SALT, _EVAL_SALT = 1, 2

DEFAULT_TRUTH = SyntheticConfig(
    n_features=128, d_in=64, zipf_exponent=0.5, mean_active=4.0, n_parents=8, branching=(4,),
    child_probability=0.2, mutually_exclusive=True, n_groups=4, group_size=4, correlation=0.5,
    magnitude="folded_normal", magnitude_mean=1.0, magnitude_std=0.15,
)


@dataclass(frozen=True)
class Config(common.RunConfig):
    """Ground truth, dictionary size, per-architecture sparsity levels and training."""

    truth: SyntheticConfig = DEFAULT_TRUTH
    d_sae: PositiveInt = 128
    architectures: Annotated[tuple[str, ...], non_empty, each(one_of(*ARCHITECTURES))] = ARCHITECTURES
    relu_l1: _Levels = (0.03, 0.1, 0.2, 0.4, 1.0)
    topk_k: _Levels = (2.0, 3.0, 4.0, 6.0, 8.0)
    batchtopk_k: _Levels = (2.0, 3.0, 4.0, 6.0, 8.0)
    jumprelu_l1: _Levels = (0.01, 0.03, 0.1, 0.2, 0.4)
    gated_l1: _Levels = (0.03, 0.1, 0.2, 0.4, 1.0)
    matryoshka_k: _Levels = (2.0, 3.0, 4.0, 6.0, 8.0)
    jumprelu_bandwidth: PositiveFloat = 0.05
    jumprelu_threshold: PositiveFloat = 0.1
    n_seeds: PositiveInt = 2
    n_steps: PositiveInt = 3_000
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 3e-3
    decay_fraction: Probability = 0.4
    dead_steps: PositiveInt = 300
    resample_every: NonNegativeInt = 500
    eval_samples: PositiveInt = 8192
    chunk_steps: PositiveInt = 1_000
    log_every: PositiveInt = 50

    def check(self) -> None:
        """d_sae ≥ the truth's feature count; k in [1, d_sae]; each architecture's `SAETraining`
        accepts the values."""
        super().check()
        if self.d_sae < self.truth.n_features:
            fail("d_sae", self.d_sae, f">= truth.n_features={self.truth.n_features}")
        for arch in self.architectures:
            field = COEFFICIENT_FIELDS[arch]
            if coefficient_name(arch) == "k" and any(not 1 <= v <= self.d_sae for v in getattr(self, field)):
                fail(field, getattr(self, field), f"values of k in [1, d_sae={self.d_sae}]")
            with library_errors(field):
                training_of(self, arch)


QUICK = {
    "truth.n_features": 64, "truth.d_in": 48, "truth.n_parents": 4, "truth.n_groups": 2,
    "d_sae": 64, "n_seeds": 1, "n_steps": 1_000, "chunk_steps": 1_000, "dead_steps": 100, "resample_every": 200,
    "eval_samples": 2048,
    "relu_l1": (0.1, 0.3, 1.0), "topk_k": (2.0, 4.0, 8.0), "batchtopk_k": (2.0, 4.0, 8.0),
    "jumprelu_l1": (0.03, 0.1, 0.3), "gated_l1": (0.1, 0.3, 1.0), "matryoshka_k": (2.0, 4.0, 8.0),
}


def coefficient_name(arch: str) -> str:
    """The swept coefficient: "k" (TopK family) or "l1_coefficient"."""
    return get_architecture(arch).swept


def ground_truth(cfg: Config) -> SyntheticSource:
    """The structured source drawn from `truth` with the run's seed."""
    return SyntheticSource.from_config(cfg.truth, key=jax.random.fold_in(jax.random.key(cfg.seed), _TRUTH_SALT))


def training_of(cfg: Config, arch: str) -> SAETraining:
    """The static `SAETraining` of one architecture (2023 recipe; resampling unless AuxK)."""
    resample = 0 if get_architecture(arch).auxk else cfg.resample_every
    return SAETraining(
        arch, cfg.truth.d_in, cfg.d_sae, batch_size=cfg.batch_size, dead_steps=cfg.dead_steps,
        resample_every=resample, resample_until=int(round((1.0 - cfg.decay_fraction) * cfg.n_steps)),
        jumprelu_threshold=cfg.jumprelu_threshold,
    )


def optim_of(cfg: Config, training: SAETraining) -> OptimConfig:
    """Adam with the learning rate decayed linearly to 0 over the last `decay_fraction`."""
    optim = recipe_optim(training, cfg.n_steps, cfg.learning_rate)
    decay = int(round(cfg.decay_fraction * cfg.n_steps))
    if decay == 0:
        return dataclasses.replace(optim, schedule="constant", total_steps=None, decay_steps=None)
    return dataclasses.replace(optim, schedule="linear", total_steps=cfg.n_steps, decay_steps=decay)


def build(cfg: Config, arch: str, source: SyntheticSource) -> tuple[Grid, dict[str, np.ndarray], jax.Array, Trainer, SAETraining]:
    """Grid (level × seed), hparams, keys, trainer and `SAETraining` of one architecture's sweep."""
    name = coefficient_name(arch)
    grid = Grid({name: getattr(cfg, COEFFICIENT_FIELDS[arch]), "seed": range(cfg.n_seeds)})
    training = training_of(cfg, arch)
    extra = {"bandwidth": cfg.jumprelu_bandwidth} if arch == "jumprelu" else {}
    hparams = sae_hparams(training, **{name: grid.column(name)}, **extra)
    trainer = make_trainer(sae_task(training, source), optim_of(cfg, training), log_every=cfg.log_every)
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer, training


def score(sae: SAE, x: np.ndarray, s: np.ndarray, source: SyntheticSource) -> dict[str, float]:
    """Structure-aware scores of one SAE on held-out examples x (n, d_in) with true features s
    (`metrics.ground_truth_scores`)."""
    f = np.asarray(sae.encode(jnp.asarray(x)))
    return sae_metrics.ground_truth_scores(np.asarray(sae.decoder), f, s, np.asarray(source.directions),
                                           np.asarray(source.parent))


def run_architecture(
    cfg: Config, arch: str, source: SyntheticSource, x_eval: np.ndarray, s_eval: np.ndarray, out_dir: RunDir, *,
    progress: bool, execution: Execution,
) -> dict[str, Any]:
    """Train one architecture's sweep (one compiled program) and score every instance."""
    grid, hparams, keys, trainer, training = build(cfg, arch, source)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress,
                          execution=execution, tag=arch)
    final, ok = common.final_losses(result)
    measured = batched_evaluate(training, result.state, x_eval, hparams)
    scores = [score(SAE.from_sweep(training, result.state, hparams, i), x_eval, s_eval, source)
              for i in range(grid.size)]
    per = {"l0": measured["l0"], "fvu": measured["fvu"], "dead_fraction": np.mean(measured["fired"] == 0, axis=1),
           **{k: np.asarray([sc[k] for sc in scores]) for k in scores[0]}}
    return {"grid": grid, "result": result, "ok": ok, "per": per,
            "records": common.instance_records(grid, final, ok, per)}


def level_means(grid: Grid, per: dict[str, np.ndarray], ok: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric averaged over seeds per sparsity level (finite instances only): (n_levels,)."""
    name = next(a for a in grid.axes if a != "seed")
    levels = np.asarray(grid.column(name), np.float64)
    out: dict[str, np.ndarray] = {name: np.unique(levels)}
    for key, values in per.items():
        v = np.where(ok, np.asarray(values, np.float64), np.nan)
        out[key] = np.asarray([np.nanmean(v[levels == lv]) if np.any(np.isfinite(v[levels == lv])) else np.nan
                               for lv in out[name]])
    return out


def matched_l0(means: dict[str, dict[str, np.ndarray]], metric: str, n_points: int = 5) -> dict[str, Any]:
    """`metric` of every architecture interpolated (in log L0) at `n_points` L0 values spread
    over the range every architecture covers; empty lists when the ranges do not overlap."""
    ranges = []
    for m in means.values():
        l0 = m["l0"][np.isfinite(m["l0"]) & np.isfinite(m[metric]) & (m["l0"] > 0)]
        ranges.append((l0.min(), l0.max()) if l0.size else (np.inf, -np.inf))
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if not lo < hi:
        return {"l0": [], **{arch: [] for arch in means}}
    grid = np.geomspace(lo, hi, n_points)
    out: dict[str, Any] = {"l0": grid.tolist()}
    for arch, m in means.items():
        keep = np.isfinite(m["l0"]) & np.isfinite(m[metric]) & (m["l0"] > 0)
        order = np.argsort(m["l0"][keep])
        out[arch] = np.interp(np.log(grid), np.log(m["l0"][keep][order]), m[metric][keep][order]).tolist()
    return out


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train every architecture's sweep, score, write the figures (process 0), return the summary."""
    source = ground_truth(cfg)
    x, s = source.sample_with_features(jax.random.fold_in(jax.random.key(cfg.seed), _EVAL_SALT), cfg.eval_samples)
    x_eval, s_eval = np.asarray(x), np.asarray(s)
    runs = {arch: run_architecture(cfg, arch, source, x_eval, s_eval, out_dir, progress=progress, execution=execution)
            for arch in cfg.architectures}
    means = {arch: level_means(r["grid"], r["per"], r["ok"]) for arch, r in runs.items()}
    matched = {metric: matched_l0(means, metric) for metric in ("absorption", "fvu", "mmcs", "f1")}
    per_arch = {
        arch: {"coefficient": coefficient_name(arch), **common.run_record(r["grid"], r["result"], r["ok"]),
               "by_level": {k: v.tolist() for k, v in means[arch].items()}, "instances": r["records"]}
        for arch, r in runs.items()
    }
    comparison = _absorption_comparison(matched["absorption"])
    if is_primary():
        _figures(cfg, runs, means, out_dir.figures)
    return {
        "ground_truth": {
            **dataclasses.asdict(cfg.truth), "n_hierarchy": cfg.truth.n_hierarchy,
            "firing_probability_range": [float(np.min(source.firing_probability)), float(np.max(source.firing_probability))],
            "training_examples": cfg.n_steps * cfg.batch_size,
        },
        "d_sae": cfg.d_sae,
        "architectures": per_arch,
        "matched_l0": matched,
        "absorption_comparison": comparison,
        "table": _table(means),
        "train_seconds": float(sum(r["result"].seconds for r in runs.values())),
        "n_compiled_sweeps": len(runs),
    }


def _absorption_comparison(matched: dict[str, Any]) -> dict[str, Any]:
    """relu vs matryoshka absorption at matched L0 (the literature: ReLU/L1 absorbs more)."""
    if "relu" not in matched or "matryoshka_batchtopk" not in matched or not matched["l0"]:
        return {"available": False}
    relu, matryoshka = np.asarray(matched["relu"]), np.asarray(matched["matryoshka_batchtopk"])
    return {
        "available": True, "l0": matched["l0"], "relu": relu.tolist(), "matryoshka_batchtopk": matryoshka.tolist(),
        "mean_difference": float(np.mean(relu - matryoshka)),
        "relu_absorbs_more_at_every_l0": bool(np.all(relu > matryoshka)),
        "agrees_with_literature": bool(np.mean(relu - matryoshka) > 0),
    }


def _table(means: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """One row per architecture and level: the seed-averaged metrics."""
    rows = []
    for arch, m in means.items():
        name = next(k for k in m if k in ("k", "l1_coefficient"))
        for i, level in enumerate(m[name]):
            rows.append({"architecture": arch, name: float(level),
                         **{k: float(v[i]) for k, v in m.items() if k != name}})
    return rows


def _figures(cfg: Config, runs: dict[str, dict[str, Any]], means: dict[str, dict[str, np.ndarray]],
             figures: Path) -> None:
    t = cfg.truth
    title = (f"{t.n_features} features in {t.d_in} dims ({t.n_parents} parents × {t.branching[0]} children, "
             f"{t.n_groups} correlated groups), d_sae={cfg.d_sae}")
    l0 = np.concatenate([r["per"]["l0"] for r in runs.values()])
    fvu = np.concatenate([r["per"]["fvu"] for r in runs.values()])
    groups = [a for a, r in runs.items() for _ in range(r["grid"].size)]
    plot_base.save(sae_plots.pareto(l0, fvu, groups=groups, title=f"L0 vs FVU\n{title}"), figures / "pareto.png")
    for metric, label, ylim in (("absorption", "absorption rate (mean over parents)", (0.0, 1.0)),
                                ("mmcs", "MMCS (mean max cosine to the true directions)", (0.0, 1.02)),
                                ("f1", "F1 of matched latents as feature detectors", (0.0, 1.02))):
        points = {arch: (m["l0"], m[metric]) for arch, m in means.items()}
        fig = bench_plots.metric_vs_l0(points, ylabel=label, ylim=ylim, title=f"{metric} vs L0 (mean over seeds)\n{title}")
        plot_base.save(fig, figures / f"{metric}.png")
