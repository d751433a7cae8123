"""An SAE on the hidden layer of a trained toy model: does it recover the model's features?

A ReLU-output toy model (n = 40 features in m = 10 dimensions, every feature present with
probability 0.1 (four active on average), uniform importance) is trained first; it stores many more features than it
has dimensions, in superposition. Its hidden activations h = W x (x drawn from the model's own
feature distribution, `sae.sources.ToyHiddenSource`) are then the data of SAEs: TopK over k and
ReLU (2023 recipe, unit-norm decoder, resampling) over λ, two seeds each, with dictionaries of
n and 2n latents (one compiled sweep per kind × size). Each SAE's decoder is compared with the
toy model's feature directions, the normalised columns W_i/‖W_i‖: MMCS (mean over features of
the best cosine to any decoder column) and the Hungarian one-to-one matching score, both over
the features the model represents (‖W_i‖ > 0.5) and over all n.

What it shows (default config): every feature is represented (40 in 10 dimensions), and sparse
TopK SAEs recover them: with 2n latents and k = 2…4 (about the number of active features) the
matched decoder columns agree with the toy directions to cosine ≈ 0.999. Even k = 1 recovers
them well here (MMCS ≈ 0.98: the latent that wins an example is pulled towards the mean of the
examples it wins, which is its feature plus a near-constant offset absorbed by b_dec). Dense
codes fail: with k = 6 or 8, close to the 10 hidden dimensions, any direction can be rebuilt
from a few latents, reconstruction (FVU) improves while MMCS drops to ≈ 0.7. ReLU SAEs reach
MMCS ≈ 0.86 at their best λ (3000 steps; ≈ 0.95 with 4000) and much worse FVU at equal L0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from . import common
from superpos_jax.config import (
    NonNegativeInt, PositiveFloat, PositiveInt, each, fail, in_range, library_errors, non_empty, non_negative, one_of,
    positive,
)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.toy.metrics import REPRESENTED_NORM
from superpos_jax.toy.models import toy_hparams
from superpos_jax.plots import sae as sae_plots
from superpos_jax.plots.base import new_figure, save
from superpos_jax.sae.sources import ToyHiddenSource
from superpos_jax.sae.architectures import get as get_architecture
from superpos_jax.sae.metrics import linear_sum_assignment, recovery
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task
from superpos_jax.engine.sweep import Grid, SweepResult
from superpos_jax.engine.trainer import Trainer, make_trainer

NAME = "sae-on-toy-model"
DESCRIPTION = "SAEs (TopK over k, ReLU over λ) on a toy model's hidden layer: do they recover its features?"
SAE_KINDS: tuple[str, ...] = ("topk", "relu")


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    STEP_FIELDS = (*common.TrainingConfig.STEP_FIELDS, "sae_steps", "sae_chunk_steps")

    n_features: PositiveInt = 40
    d_hidden: PositiveInt = 10
    feature_probability: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.1
    n_steps: PositiveInt = 10_000
    chunk_steps: PositiveInt = 5_000
    sae_kinds: Annotated[tuple[str, ...], non_empty, each(one_of(*SAE_KINDS))] = SAE_KINDS
    dictionary_multipliers: Annotated[tuple[int, ...], non_empty, each(positive)] = (1, 2)
    ks: Annotated[tuple[int, ...], each(positive)] = (1, 2, 3, 4, 6, 8)
    l1_coefficients: Annotated[tuple[float, ...], each(non_negative)] = (0.3, 0.6, 1.0, 1.5)
    sae_seeds: PositiveInt = 2
    sae_steps: PositiveInt = 3_000
    sae_chunk_steps: PositiveInt = 3_000
    sae_batch_size: PositiveInt = 256
    sae_learning_rate: PositiveFloat = 1e-3
    dead_steps: PositiveInt = 500
    resample_every: NonNegativeInt = 1_000
    """0: no resampling."""
    eval_samples: PositiveInt = 8192

    def check(self) -> None:
        """ks non-empty and <= n_features with topk; l1_coefficients non-empty with relu; every
        SAE sweep's `SAETraining` accepts its values."""
        super().check()
        if "topk" in self.sae_kinds and (not self.ks or max(self.ks) > self.n_features):
            fail("ks", self.ks, f"a non-empty list of integers in [1, n_features={self.n_features}]")
        if "relu" in self.sae_kinds and not self.l1_coefficients:
            fail("l1_coefficients", self.l1_coefficients, "a non-empty list of values >= 0")
        with library_errors("sae_kinds"):
            for kind in self.sae_kinds:
                for mult in self.dictionary_multipliers:
                    sae_training(self, kind, mult * self.n_features)


QUICK = {"n_steps": 4_000, "chunk_steps": 4_000, "sae_steps": 2_000, "sae_chunk_steps": 2_000, "sae_seeds": 1,
         "sae_kinds": ("topk",), "dictionary_multipliers": (1,), "ks": (1, 2, 6)}


def build(cfg: Config) -> tuple[Grid, dict[str, np.ndarray], jax.Array, Trainer]:
    """The toy model's (one-instance) grid, hparams, keys and trainer."""
    grid = Grid({"seed": (0,)})
    hparams = toy_hparams(
        np.full(grid.size, cfg.feature_probability, np.float32), np.ones(cfg.n_features, np.float32),
        ["relu"] * grid.size, cfg.learning_rate,
    )
    return grid, hparams, common.seed_keys(cfg.seed, grid), cfg.toy_trainer(cfg.n_features, cfg.d_hidden)


def sae_coefficient(kind: str) -> str:
    """The swept hparam of an SAE kind."""
    return get_architecture(kind).swept


def sae_training(cfg: Config, kind: str, d_sae: int) -> SAETraining:
    """The static `SAETraining` of the SAE sweep of `kind` with `d_sae` latents."""
    return SAETraining(
        kind, cfg.d_hidden, d_sae, batch_size=cfg.sae_batch_size, dead_steps=cfg.dead_steps,
        resample_every=0 if get_architecture(kind).auxk else cfg.resample_every,
    )


def build_sae(
    cfg: Config, kind: str, d_sae: int, W: np.ndarray
) -> tuple[SAETraining, Grid, dict[str, np.ndarray], jax.Array, Trainer]:
    """One SAE sweep (coefficient × seed) of `kind` with `d_sae` latents on h = W x; W (m, n)."""
    coef = sae_coefficient(kind)
    values = cfg.ks if coef == "k" else cfg.l1_coefficients
    grid = Grid({coef: values, "seed": range(cfg.sae_seeds)})
    training = sae_training(cfg, kind, d_sae)
    hparams = sae_hparams(training, **{coef: grid.column(coef).astype(np.float32)})
    source = ToyHiddenSource(W, np.full(cfg.n_features, cfg.feature_probability, np.float32), generator=cfg.generator)
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                           log_every=cfg.log_every)
    keys = common.seed_keys(cfg.seed + 1, grid)
    return training, grid, hparams, keys, trainer


def matched_figure(features: np.ndarray, decoder: np.ndarray, *, title: str) -> Figure:
    """Toy feature directions vs the SAE's one-to-one matched decoder directions.

    Args:
        features: (r, d) unit feature directions of the toy model (represented features).
        decoder: (d, d_sae) SAE decoder (columns are latents; normalised here).
        title: figure title.

    Panels: Gram matrix of the features, Gram matrix of their matched latents (same order), and
    the cosine between feature i and matched latent j (a unit diagonal = exact recovery).
    """
    dec = decoder / np.maximum(np.linalg.norm(decoder, axis=0, keepdims=True), 1e-12)
    cos = features @ dec
    rows, cols = linear_sum_assignment(cos, maximize=True)
    matched = dec[:, cols]
    panels = (
        ("toy model: cos(W_i, W_j)", features[rows] @ features[rows].T),
        ("SAE: cos(d_σ(i), d_σ(j)), matched latents", matched.T @ matched),
        ("cos(W_i, d_σ(j)): feature vs matched latent", features[rows] @ matched),
    )
    fig = new_figure((14.0, 4.6), constrained=True)
    axes = fig.subplots(1, 3)
    for ax, (name, m) in zip(axes, panels):
        image = ax.imshow(m, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("feature i (represented)" if "SAE" not in name else "matched latent σ(i)")
        ax.set_ylabel("feature i")
    fig.colorbar(image, ax=axes, shrink=0.85, label="cosine")
    diag = np.diag(panels[2][1])
    axes[2].text(0.02, -0.16, f"diagonal: mean {diag.mean():.3f}, min {diag.min():.3f}", transform=axes[2].transAxes,
                 fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the toy model, then the SAE sweeps on its hidden layer; figures (process 0); summary."""
    grid, hparams, keys, trainer = build(cfg)
    toy = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution, tag="toy")
    toy_loss, toy_ok = common.final_losses(toy)
    W = np.asarray(toy.state.params.W[0], np.float32)  # (m, n): columns are the feature embeddings
    norms = np.linalg.norm(W, axis=0)
    represented = norms > REPRESENTED_NORM
    directions = (W / np.maximum(norms, 1e-12)).T  # (n, m)
    source = ToyHiddenSource(W, np.full(cfg.n_features, cfg.feature_probability, np.float32), generator=cfg.generator)
    x_eval = np.asarray(source.sample(jax.random.key(cfg.seed + 12345), cfg.eval_samples))

    records: list[dict[str, Any]] = []
    decoders: list[np.ndarray] = []
    sweeps: dict[str, SweepResult] = {}
    for kind in cfg.sae_kinds:
        for mult in cfg.dictionary_multipliers:
            d_sae = mult * cfg.n_features
            training, sgrid, shp, skeys, strainer = build_sae(cfg, kind, d_sae, W)
            tag = f"{kind}-{d_sae}"
            result = common.train(NAME, cfg, sgrid, shp, skeys, strainer, out_dir, progress=progress,
                                  execution=execution, tag=tag, n_steps=cfg.sae_steps, chunk_steps=cfg.sae_chunk_steps)
            sweeps[tag] = result
            final, ok = common.final_losses(result)
            ev = batched_evaluate(training, result.state, jnp.asarray(x_eval, jnp.float32), shp)
            W_dec = np.asarray(result.state.params.W_dec)
            coef = sae_coefficient(kind)
            for i in range(sgrid.size):
                rep = recovery(W_dec[i], directions[represented]) if represented.any() else None
                full = recovery(W_dec[i], directions)
                c = sgrid.coords(i)
                records.append({
                    "kind": kind, "d_sae": d_sae, "coefficient": coef, "value": float(c[coef]), "seed": int(c["seed"]),
                    "finite": bool(ok[i]), "final_loss": float(final[i]),
                    "l0": float(ev["l0"][i]), "mse": float(ev["mse"][i]), "fvu": float(ev["fvu"][i]),
                    "dead_fraction": float(np.mean(ev["fired"][i] == 0)),
                    "mmcs_represented": rep["mmcs"] if rep else float("nan"),
                    "hungarian_represented": rep["hungarian"] if rep else float("nan"),
                    "mmcs_all": full["mmcs"], "hungarian_all": full["hungarian"],
                    "max_cosine_represented": (rep["max_cosine"].round(5).tolist() if rep else []),
                })
                decoders.append(W_dec[i])

    def score(r: dict[str, Any]) -> tuple[float, float]:
        return (r["mmcs_represented"], r["hungarian_represented"]) if r["finite"] else (-np.inf, -np.inf)

    best = max(range(len(records)), key=lambda j: score(records[j]))
    groups = [f"{r['kind']} N={r['d_sae']}" for r in records]
    best_per_group: dict[str, int] = {}
    for j, g in enumerate(groups):
        if g not in best_per_group or score(records[j]) > score(records[best_per_group[g]]):
            best_per_group[g] = j
    if is_primary():
        figures = out_dir.figures
        tags = [("k=" if r["coefficient"] == "k" else "λ=") + f"{r['value']:g}" for r in records]
        short = [f"{r['kind'][0].upper()}{r['d_sae']} {t}" for r, t in zip(records, tags)]
        save(sae_plots.pareto(
            [r["l0"] for r in records], [r["fvu"] for r in records], groups=groups, annotate=tags,
            title=f"SAEs on the hidden layer of a toy model (n={cfg.n_features}, m={cfg.d_hidden}, "
                  f"p={cfg.feature_probability:g})",
        ), figures / "pareto.png")
        if represented.any():
            save(sae_plots.recovery(
                {short[j]: records[j]["max_cosine_represented"] for j in best_per_group.values()},
                hungarian={short[j]: records[j]["hungarian_represented"] for j in best_per_group.values()},
                target=0.9, title=f"recovery of the {int(represented.sum())} represented toy features, best SAE of "
                                  "each kind and size (T = TopK, R = ReLU; number = dictionary size)",
            ), figures / "recovery.png")
            b = records[best]
            save(matched_figure(
                directions[represented], decoders[best],
                title=f"toy features vs matched SAE latents: best SAE = {groups[best]}, {tags[best]}, seed {b['seed']} "
                      f"(MMCS {b['mmcs_represented']:.3f})",
            ), figures / "matched.png")
        save(sae_plots.pareto(
            [r["l0"] for r in records], [max(1.0 - r["mmcs_represented"], 1e-6) for r in records], groups=groups,
            annotate=tags, ylabel="1 − MMCS over represented features", title="recovery vs sparsity (lower is better)",
        ), figures / "recovery_vs_l0.png")

    summary_best = {k: v for k, v in records[best].items() if k != "max_cosine_represented"}
    return {
        **common.run_record(grid, toy, toy_ok),
        "toy": {
            "final_loss": float(toy_loss[0]), "feature_norms": norms.round(5).tolist(),
            "n_represented": int(represented.sum()), "represented_threshold": REPRESENTED_NORM,
        },
        "sae_train_seconds": float(sum(s.seconds for s in sweeps.values())),
        "best": summary_best,
        "best_per_group": {g: {k: v for k, v in records[j].items() if k != "max_cosine_represented"}
                           for g, j in best_per_group.items()},
        "saes": records,
    }
