"""Universality: do different seeds learn the same features?

Two parts, each stage one compiled, checkpointed sweep.

Toy models (Toy Models of Superposition). A ReLU-output model of n features in m < n dims,
importance profiles × feature probabilities 1 − S × seeds in ONE vmapped sweep. A toy model has
a privileged feature basis (feature i is input i), so seeds are compared feature by feature,
and the hidden space only up to rotation: for every pair of seeds of a cell, do they represent
the same set of features (‖W_i‖ > 0.5); the same geometry up to relabelling (the sorted D_i of
the represented features agree within `dimensionality_tolerance`); the same configuration (the
Gram matrices W^T W — invariant to rotations of the hidden space — agree within
`gram_tolerance` entrywise). With decaying importance a dense model keeps exactly the top m
features orthogonally, so all its seeds agree on all three; with uniform importance which m
features are kept is arbitrary, so the sets differ while the geometry recurs.

SAEs (Towards Monosemanticity, universality). A one-layer ReLU-MLP transformer on the local
corpus (as `monosemanticity`, smaller), `n_seeds` seeds vmapped in one sweep, ALL kept. Per
dictionary size (a static shape, one sweep each) TopK SAEs on `blocks.0.mlp.post` of every
LM at once: instances = LM × k × SAE seed, each instance drawing its batches from its own LM's
activations on `harvest_windows` training windows (`StackedRows`). On the same held-out
validation tokens, features are matched one to one (Hungarian, `superpos_jax.sae.matching`):

* SAE seeds on the SAME LM: by decoder cosine and by activation correlation;
* SAEs on DIFFERENT LMs (their neurons differ, so decoders are not comparable): by
  activation correlation; the LMs' neurons matched the same way are the reference;
* controls: a random-direction dictionary against an SAE and, with two or more LMs, the SAE of
  another LM (decoder cosine: MLP activations are non-negative, so even unrelated decoder
  columns share the positive cone and have cosines well above an isotropic control); an SAE
  against another with its validation rows shuffled (activation correlation).

The shared fraction at threshold t is the share of A's latents that fire on the validation rows
whose Hungarian match has similarity ≥ t (dead latents are left out; the dead fraction is in
each SAE's record), averaged over the pairs; it is reported at `thresholds` and plotted against
t for every dictionary size and k.

Size: the default (toy: 120 models × 5,000 steps; 2 LMs × 1,500 steps; 2 sizes × 12 SAEs ×
1,000 steps on 128 MLP neurons) is meant to take a few minutes on 2 cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Annotated, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from . import common, lm_common
from superpos_jax import plots
from superpos_jax.config import (PositiveFloat, PositiveInt, Probabilities, Rule, each, fail, in_range,
                                 library_errors, non_empty, one_of, positive)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm.corpus import check_corpus, eval_windows, sample_windows, unigram_cross_entropy
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.plots import universality as uplots
from superpos_jax.rundir import RunDir
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.sae import matching
from superpos_jax.sae.metrics import evaluate
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import FedSource
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task
from superpos_jax.toy import metrics as toy_metrics
from superpos_jax.toy.models import toy_hparams, toy_task
from superpos_jax.toy.samplers import geometric_importance, uniform_importance

NAME = "universality"
DESCRIPTION = "seeds of toy models and of SAEs (same LM, different LMs): features matched, shared fraction, geometry"
HOOK = "blocks.0.mlp.hook_post"
IMPORTANCES = ("decaying", "uniform")
SeedCount = Annotated[int, Rule("an integer >= 2 (pairs of seeds are compared)", lambda v: v >= 2)]
CURVE_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)
"""Thresholds of the shared-fraction curves (figure and summary)."""


@dataclass(frozen=True)
class Config(common.RunConfig):
    """`n_steps` and `chunk_steps` are the language model's; the toy sweep trains `toy_steps`
    and each SAE sweep `sae_steps`, in chunks of `chunk_steps`. `model` is the language model
    (byte tokens: d_vocab 256, one block with a ReLU MLP)."""

    STEP_FIELDS = (*common.RunConfig.STEP_FIELDS, "toy_steps", "sae_steps")
    pretrained: ClassVar[None] = None  # seeds of an LM are trained here; a checkpoint has one

    toy_n_features: PositiveInt = 20
    toy_d_hidden: PositiveInt = 5
    toy_models: common.ToyModels = ("linear", "relu")
    toy_importances: Annotated[tuple[str, ...], non_empty, each(one_of(*IMPORTANCES))] = IMPORTANCES
    toy_importance_base: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.7
    """Decaying importance is toy_importance_base**i."""
    toy_feature_probabilities: Probabilities = (1.0, 0.3, 0.1, 0.03, 0.01)
    toy_seeds: SeedCount = 6
    toy_steps: PositiveInt = 5_000
    toy_batch: PositiveInt = 1024
    toy_learning_rate: PositiveFloat = 1e-3
    dimensionality_tolerance: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.05
    gram_tolerance: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.1

    corpus_dir: str | None = None
    """A directory of text files to train on instead of the standard library's source."""
    corpus_glob: Annotated[tuple[str, ...] | None, non_empty] = None
    max_bytes: PositiveInt = 2_000_000
    model: TransformerConfig = TransformerConfig(
        n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=128, n_ctx=64, d_vocab=256, act="relu")
    n_seeds: PositiveInt = 2
    """Language models (seeds, one vmapped sweep); with 2 or more, SAEs of different LMs are compared."""
    n_steps: PositiveInt = 1_500
    lm_batch: PositiveInt = 32
    lm_learning_rate: PositiveFloat = 3e-3
    harvest_windows: PositiveInt = 512
    """Training windows whose MLP activations the SAEs train on (n_ctx rows each, per LM)."""
    eval_windows: PositiveInt = 64
    """Validation windows on which features are compared (n_ctx tokens each)."""
    sae_kind: Annotated[str, one_of(*sae_lib.hook_names())] = "topk"
    sae_expansions: Annotated[tuple[int, ...], non_empty, each(positive)] = (2, 4)
    """Dictionary sizes as multiples of d_mlp (one sweep each)."""
    sae_coefficients: Annotated[tuple[float, ...], non_empty, each(positive)] = (8.0, 16.0)
    """k (TopK family) or λ of each SAE."""
    sae_seeds: SeedCount = 3
    sae_steps: PositiveInt = 1_000
    sae_batch: PositiveInt = 256
    sae_learning_rate: PositiveFloat = 1e-3
    thresholds: Annotated[tuple[float, ...], non_empty, each(in_range(0.0, 1.0))] = (0.5, 0.7, 0.9)
    """Similarity thresholds at which the shared fraction is reported."""
    chunk_steps: PositiveInt = 1_000
    log_every: PositiveInt = 50

    def check(self) -> None:
        """Step counts are multiples of log_every; toy_d_hidden < toy_n_features; byte tokens and a
        ReLU-MLP block to read; integer k within the smallest dictionary for a TopK SAE; a readable
        corpus; the SAEs' `SAETraining` accepts the values."""
        super().check()
        if self.toy_d_hidden >= self.toy_n_features:
            fail("toy_d_hidden", self.toy_d_hidden, f"< toy_n_features={self.toy_n_features} (superposition needs "
                 "more features than dimensions)")
        if self.model.d_vocab != 256:
            fail("model.d_vocab", self.model.d_vocab, "256 (the corpus is byte tokens)")
        if self.model.attn_only:
            fail("model.attn_only", self.model.attn_only, f"false (the SAEs read {HOOK})")
        smallest = self.model.d_mlp * min(self.sae_expansions)
        if sae_lib.get(self.sae_kind).swept == "k" and any(c != int(c) or c > smallest for c in self.sae_coefficients):
            fail("sae_coefficients", self.sae_coefficients, f"integers k <= the smallest dictionary ({smallest})")
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            fail("corpus_dir", self.corpus_dir, "an existing directory of text files")
        with library_errors("corpus_dir" if self.corpus_dir is not None else "corpus_glob"):
            check_corpus(self.corpus_dir, include=self.corpus_glob, max_bytes=self.max_bytes)
        with library_errors("sae_kind"):
            for e in self.sae_expansions:
                sae_training(self, e)


QUICK = {
    "toy_seeds": 4, "toy_steps": 3_000, "toy_feature_probabilities": (1.0, 0.1, 0.01),
    "max_bytes": 300_000, "model.d_model": 32, "model.n_heads": 2, "model.d_head": 16, "model.d_mlp": 64,
    "model.n_ctx": 32, "n_steps": 400, "harvest_windows": 256, "eval_windows": 64, "sae_expansions": (2,), "sae_coefficients": (4.0, 8.0),
    "sae_seeds": 2, "sae_steps": 600, "chunk_steps": 600,
}


def sae_training(cfg: Config, expansion: int) -> SAETraining:
    """The SAEs of one size (the recipe of `monosemanticity`: 2024 where the kind has it)."""
    d = cfg.model.d_mlp
    return SAETraining(cfg.sae_kind, d, d * expansion, batch_size=cfg.sae_batch, dead_steps=max(cfg.sae_steps // 4, 1),
                       recipe="2024" if "2024" in sae_lib.get(cfg.sae_kind).recipes else "2023",
                       l1_warmup_steps=cfg.sae_steps // 20)


# --- toy models -----------------------------------------------------------------------------

def toy_importance(cfg: Config, kind: str) -> np.ndarray:
    """The (n,) importance of profile `kind`: toy_importance_base**i or all ones."""
    n = cfg.toy_n_features
    return np.asarray(geometric_importance(n, cfg.toy_importance_base) if kind == "decaying" else uniform_importance(n))


def build_toy(cfg: Config):
    """The toy sweep: grid model × importance × feature_probability × seed, hparams, keys, trainer."""
    grid = Grid({"model": cfg.toy_models, "importance": cfg.toy_importances,
                 "feature_probability": cfg.toy_feature_probabilities, "seed": range(cfg.toy_seeds)})
    importance = np.stack([toy_importance(cfg, k) for k in grid.column("importance")])
    hparams = toy_hparams(grid.column("feature_probability"), importance, grid.column("model"), cfg.toy_learning_rate)
    task = toy_task(cfg.toy_n_features, cfg.toy_d_hidden, cfg.toy_batch)
    optim = OptimConfig(name="adamw", learning_rate=cfg.toy_learning_rate, weight_decay=0.01)
    return grid, hparams, common.seed_keys(cfg.seed, grid), make_trainer(task, optim, log_every=cfg.log_every)


build = build_toy
"""The contract's `build`: the experiment's first sweep, the toy models."""


def toy_geometry(W: np.ndarray) -> dict[str, np.ndarray]:
    """Per instance of W (instance, hidden, feature): `represented` (instance, n) bool,
    `dimensionality` (instance, n) D_i among the represented features (0 for the others) and
    `gram` (instance, n, n) W^T W of the represented features (the others' rows and columns 0)."""
    W = jnp.asarray(W, jnp.float32)
    represented = jnp.sqrt(jnp.sum(W * W, axis=1)) > toy_metrics.REPRESENTED_NORM
    kept = jnp.where(represented[:, None, :], W, 0.0)
    return {
        "represented": np.asarray(represented),
        "dimensionality": np.asarray(jax.vmap(toy_metrics.represented_dimensionality)(W)),
        "gram": np.asarray(jnp.einsum("ihf,ihg->ifg", kept, kept)),
    }


def compare_toy_pair(a: dict[str, np.ndarray], b: dict[str, np.ndarray], *, dim_tol: float, gram_tol: float) -> dict[str, Any]:
    """Two toy models' features compared (entries of `toy_geometry` for one instance each):
    `same_set` (the same features represented), `same_dimensionalities` (sorted D_i within
    `dim_tol`), `same_gram` (W^T W within `gram_tol` entrywise: the same features in the same
    configuration, up to a rotation of the hidden space), `jaccard` of the represented sets,
    and the largest differences."""
    ra, rb = a["represented"], b["represented"]
    union = int(np.sum(ra | rb))
    dim_diff = float(np.max(np.abs(np.sort(a["dimensionality"])[::-1] - np.sort(b["dimensionality"])[::-1])))
    gram_diff = float(np.max(np.abs(a["gram"] - b["gram"])))
    return {
        "same_set": bool(np.array_equal(ra, rb)),
        "same_dimensionalities": dim_diff <= dim_tol,
        "same_gram": gram_diff <= gram_tol,
        "jaccard": float(np.sum(ra & rb) / union) if union else 1.0,
        "max_dimensionality_difference": dim_diff,
        "max_gram_difference": gram_diff,
    }


TOY_CRITERIA = ("same_set", "same_dimensionalities", "same_gram")


def toy_universality(cfg: Config, grid: Grid, W: np.ndarray, ok: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per cell (model, importance, feature probability): every pair of usable seeds compared.
    Returns the summary records and the arrays behind the figure: `fractions` (criterion ->
    (model · importance, probability)) and `sorted_dimensionality` (model · importance,
    probability, seed, feature), rows ordered model-major."""
    geo = toy_geometry(W)
    folded = {k: grid.fold(v) for k, v in geo.items()}
    usable = grid.fold(ok)
    cell_shape = grid.shape[:-1]
    fractions = {c: np.full(cell_shape, np.nan) for c in TOY_CRITERIA}
    sorted_dims = np.sort(folded["dimensionality"], axis=-1)[..., ::-1].copy()
    sorted_dims[~usable] = np.nan
    cells = []
    for cell_index in np.ndindex(*cell_shape):
        seeds = np.flatnonzero(usable[cell_index])
        at = {k: v[cell_index] for k, v in folded.items()}
        pairs = [compare_toy_pair({k: v[s] for k, v in at.items()}, {k: v[t] for k, v in at.items()},
                                  dim_tol=cfg.dimensionality_tolerance, gram_tol=cfg.gram_tolerance)
                 for s, t in combinations(seeds, 2)]
        cell: dict[str, Any] = {name: grid.axes[name][i] for name, i in zip(grid.names, cell_index)}
        cell["n_pairs"] = len(pairs)
        for c in TOY_CRITERIA:
            value = float(np.mean([q[c] for q in pairs])) if pairs else float("nan")
            fractions[c][cell_index] = value
            cell[c] = value
        cell["jaccard_mean"] = float(np.mean([q["jaccard"] for q in pairs])) if pairs else float("nan")
        cell["max_dimensionality_difference"] = max((q["max_dimensionality_difference"] for q in pairs), default=float("nan"))
        cell["max_gram_difference"] = max((q["max_gram_difference"] for q in pairs), default=float("nan"))
        cell["n_represented"] = [int(v) for v in at["represented"].sum(axis=-1)]
        cell["represented_sets"] = [np.flatnonzero(r).tolist() for r in at["represented"]]
        cell["sorted_dimensionality"] = [[round(float(d), 4) for d in row if d > 0] for row in sorted_dims[cell_index]
                                         if np.all(np.isfinite(row))]
        cells.append(cell)
    n_rows = int(np.prod(cell_shape[:-1]))
    return cells, {
        "fractions": {c: v.reshape(n_rows, -1) for c, v in fractions.items()},
        "sorted_dimensionality": np.nan_to_num(sorted_dims, nan=0.0).reshape(n_rows, *sorted_dims.shape[-3:]),
        "rows": [f"{m} model, {i}" for m in cfg.toy_models for i in cfg.toy_importances],
    }


# --- SAEs on the MLPs of several LMs --------------------------------------------------------

class StackedRows(FedSource):
    """Activations of several models stacked (model, rows, d_in): instance i draws its batches
    (uniformly, with replacement) from the rows of model `hparams["hook"][i]`, so SAEs of
    different models train in one vmapped sweep. The rows are the task's `shared` argument."""

    def __init__(self, x: np.ndarray):
        if np.ndim(x) != 3:
            raise ValueError(f"x must be (model, rows, d_in), got shape {np.shape(x)}")
        self.d_in = int(x.shape[2])
        self.n_models, self.n_rows = int(x.shape[0]), int(x.shape[1])
        self.shared = {"x": jnp.asarray(x, jnp.float32).reshape(-1, self.d_in)}
        self.stream = None

    def hook_hparam(self, models: Any) -> np.ndarray:
        """The float32 `hparams["hook"]` column for instances training on `models` (indices)."""
        models = np.asarray(models)
        if models.size and (models.min() < 0 or models.max() >= self.n_models):
            raise ValueError(f"model indices must lie in [0, {self.n_models}), got {models.tolist()}")
        return models.astype(np.float32)

    def take(self, data: Any, key: jax.Array, batch_size: int, hparams: Any, shared: Any) -> jax.Array:
        # gather rows of the flat (model · rows, d) array: never a per-instance copy of a model's block
        rows = jax.random.randint(key, (batch_size,), 0, self.n_rows)
        return shared["x"][hparams["hook"].astype(jnp.int32) * self.n_rows + rows]

    def stats(self, key: jax.Array, n: int, hparams: Any, shared: Any) -> jax.Array:
        return self.take(None, key, n, hparams, shared)


def _take(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a[i]), tree)


_evaluate = jax.jit(evaluate)
_encode = jax.jit(lambda sae, x: sae.encode(x))


def _matched(similarity: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """The Hungarian-matched similarity of each of A's latents alive on the validation rows."""
    return matching.hungarian_match(similarity).similarity[alive]


def _curve(matched: list[np.ndarray]) -> np.ndarray:
    """Mean over pairs of the shared fraction at every `CURVE_THRESHOLDS`."""
    return np.mean([matching.shared_fraction(m, CURVE_THRESHOLDS) for m in matched], axis=0)


def _report(matched: list[np.ndarray], thresholds: tuple[float, ...]) -> dict[str, Any]:
    """Shared fractions (mean over pairs and per pair) and the median matched similarity."""
    per_pair = [matching.shared_fraction(m, np.asarray(thresholds, np.float64)) for m in matched]
    return {
        "n_pairs": len(matched),
        "shared": {f"{t:g}": float(np.mean([p[j] for p in per_pair])) for j, t in enumerate(thresholds)},
        "shared_per_pair": [[round(float(v), 4) for v in p] for p in per_pair],
        "median_similarity": float(np.nanmedian(np.concatenate(matched))),
        "curve": [round(float(v), 4) for v in _curve(matched)],
    }


def compare_saes(
    cfg: Config, grid: Grid, decoders: list[np.ndarray], codes: list[np.ndarray], coef: str, *, seed: int,
) -> list[dict[str, Any]]:
    """For every coefficient value: SAE seeds on the same LM (decoder cosine and activation
    correlation), SAEs on different LMs (activation correlation; decoder cosine of seed 0 for
    contrast), and the controls. `decoders[i]` (d_mlp, d_sae) and `codes[i]` (rows, d_sae) are
    instance i's decoder and its codes on its LM's validation rows."""
    lms, coefs, seeds = grid.column("lm"), grid.column(coef), grid.column("seed")

    def index(lm: int, c: float, s: int) -> int:
        return int(np.flatnonzero((lms == lm) & (coefs == c) & (seeds == s))[0])

    rng = np.random.default_rng(seed)
    alive = [c.max(axis=0) > 0 for c in codes]
    out = []
    for c in grid.axes[coef]:
        same_cos, same_corr, cross_corr, cross_cos = [], [], [], []
        for lm in range(cfg.n_seeds):
            for s, t in combinations(range(cfg.sae_seeds), 2):
                a, b = index(lm, c, s), index(lm, c, t)
                same_cos.append(_matched(matching.decoder_cosines(decoders[a], decoders[b]), alive[a]))
                same_corr.append(_matched(matching.activation_correlations(codes[a], codes[b]), alive[a]))
        for la, lb in combinations(range(cfg.n_seeds), 2):
            for s in range(cfg.sae_seeds):
                a, b = index(la, c, s), index(lb, c, s)
                cross_corr.append(_matched(matching.activation_correlations(codes[a], codes[b]), alive[a]))
            a, b = index(la, c, 0), index(lb, c, 0)
            cross_cos.append(_matched(matching.decoder_cosines(decoders[a], decoders[b]), alive[a]))
        a, b = index(0, c, 0), index(0, c, 1)
        d_in, d_sae = decoders[a].shape
        random_dict = matching.random_directions(d_in, d_sae, seed=int(rng.integers(2**31)))
        control_cos = _matched(matching.decoder_cosines(decoders[a], random_dict), alive[a])
        shuffled = codes[b][rng.permutation(codes[b].shape[0])]
        control_corr = _matched(matching.activation_correlations(codes[a], shuffled), alive[a])
        record: dict[str, Any] = {
            coef: float(c),
            "same_lm": {"decoder_cosine": _report(same_cos, cfg.thresholds),
                        "activation_correlation": _report(same_corr, cfg.thresholds)},
            "controls": {"random_dictionary_cosine": _report([control_cos], cfg.thresholds),
                         "shuffled_rows_correlation": _report([control_corr], cfg.thresholds)},
            "_matched": {"same_lm_cosine": same_cos, "same_lm_correlation": same_corr, "cross_lm_correlation": cross_corr,
                         "random_dictionary_cosine": [control_cos], "shuffled_rows_correlation": [control_corr],
                         "cross_lm_cosine": cross_cos},
        }
        if cross_corr:
            record["cross_lm"] = {"activation_correlation": _report(cross_corr, cfg.thresholds),
                                  "decoder_cosine": _report(cross_cos, cfg.thresholds)}
        out.append(record)
    return out


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the toy sweep, the LMs and the SAE sweeps; match; write the figures (process 0);
    return the summary (written by the caller)."""
    # 1. toy models: importance × sparsity × seed, one sweep
    toy_grid, toy_hp, toy_keys, toy_trainer = build_toy(cfg)
    toy = common.train(NAME, cfg, toy_grid, toy_hp, toy_keys, toy_trainer, out_dir, progress=progress,
                       execution=execution, tag="toy", n_steps=cfg.toy_steps, chunk_steps=min(cfg.chunk_steps, cfg.toy_steps))
    toy_final, toy_ok = common.final_losses(toy)
    toy_cells, toy_arrays = toy_universality(cfg, toy_grid, np.asarray(toy.state.params.W), toy_ok)

    # 2. the language models: seeds vmapped, every one kept
    corpus = lm_common.load_config_corpus(cfg)
    fingerprint = {"corpus": corpus.fingerprint}
    lm_grid, lm_hp, lm_keys, lm_trainer = lm_common.build(cfg, corpus)
    lm = common.train(NAME, cfg, lm_grid, lm_hp, lm_keys, lm_trainer, out_dir, progress=progress, execution=execution,
                      tag="lm", fingerprint=fingerprint, chunk_steps=min(cfg.chunk_steps, cfg.n_steps))
    n_ctx, d_mlp = cfg.model.n_ctx, cfg.model.d_mlp
    val = eval_windows(corpus.val, min(cfg.eval_windows, corpus.val.size // n_ctx), n_ctx)
    models = [_take(lm.state.params, i) for i in range(cfg.n_seeds)]
    val_losses = [activations.loss_under_hooks(m, val) for m in models]
    neurons = [activations.harvest(m, val, HOOK).reshape(-1, d_mlp) for m in models]  # (rows, d_mlp) each
    train_windows = sample_windows(corpus.train, key=jax.random.key(cfg.seed + 1), batch_size=cfg.harvest_windows,
                                   seq_len=n_ctx)
    source = StackedRows(np.stack([activations.harvest(m, train_windows, HOOK).reshape(-1, d_mlp) for m in models]))

    # 3. SAEs: per size, LM × coefficient × seed in one sweep
    sizes, sae_losses, sae_labels, instances = [], [], [], []
    sweeps = [{"sweep": "toy", "n_instances": toy_grid.size, "n_steps": cfg.toy_steps, "train_seconds": toy.seconds},
              {"sweep": "lm", "n_instances": cfg.n_seeds, "n_steps": cfg.n_steps, "train_seconds": lm.seconds}]
    for expansion in cfg.sae_expansions:
        training = sae_training(cfg, expansion)
        coef = training.arch.swept
        grid = Grid({"lm": range(cfg.n_seeds), coef: cfg.sae_coefficients, "seed": range(cfg.sae_seeds)})
        hp = sae_hparams(training, **{coef: grid.column(coef).astype(np.float32)},
                         hook=source.hook_hparam(grid.column("lm").tolist()))
        trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                               log_every=cfg.log_every)
        # every (LM, seed) its own initialisation; k values share it (common random numbers)
        init_id = (grid.column("lm") * cfg.sae_seeds + grid.column("seed")).astype(np.uint32)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(cfg.seed + 2), i))(jnp.asarray(init_id))
        saes = common.train(NAME, cfg, grid, hp, keys, trainer, out_dir,
                            progress=progress, execution=execution, tag=f"sae_x{expansion}", n_steps=cfg.sae_steps,
                            chunk_steps=min(cfg.chunk_steps, cfg.sae_steps), fingerprint=fingerprint)
        decoders, codes = [], []
        for i in range(grid.size):
            sae = SAE.from_sweep(training, saes.state, hp, i).inference()
            x = jnp.asarray(neurons[int(grid.column("lm")[i])])
            ev = _evaluate(sae, x)
            decoders.append(np.asarray(sae.decoder))
            codes.append(np.asarray(_encode(sae, x)))
            instances.append({"coords": {"d_sae": training.d_sae, **grid.coords(i)}, "l0": float(ev["l0"]),
                              "fvu": float(ev["fvu"]), "dead_fraction": float(ev["dead_fraction"]),
                              "final_train_loss": float(np.nanmean(saes.losses[i, -5:]))})
            sae_labels.append(f"d_sae={training.d_sae} " + " ".join(f"{k}={v:g}" for k, v in grid.coords(i).items()))
        sae_losses.append(saes.losses)
        sweeps.append({"sweep": f"sae_x{expansion}", "d_sae": training.d_sae, "n_instances": grid.size,
                       "n_steps": cfg.sae_steps, "train_seconds": saes.seconds})
        for record in compare_saes(cfg, grid, decoders, codes, coef, seed=cfg.seed + expansion):
            sizes.append({"d_sae": training.d_sae, "expansion": expansion, **record})
        del decoders, codes

    neuron_match = None
    if cfg.n_seeds >= 2:
        neuron_match = [matching.hungarian_match(matching.activation_correlations(neurons[a], neurons[b])).similarity
                        for a, b in combinations(range(cfg.n_seeds), 2)]

    if is_primary():
        _figures(cfg, out_dir.figures, toy_arrays, sizes, neuron_match, lm.losses, np.concatenate(sae_losses), sae_labels)
    for s in sizes:
        s.pop("_matched")
    coef = sae_lib.get(cfg.sae_kind).swept
    return {
        "n_instances": sum(s["n_instances"] for s in sweeps),
        "train_seconds": sum(s["train_seconds"] for s in sweeps),
        "sweeps": sweeps,
        "toy_sweep": common.run_record(toy_grid, toy, toy_ok),
        "toy": {
            "n_features": cfg.toy_n_features, "d_hidden": cfg.toy_d_hidden, "criteria": list(TOY_CRITERIA),
            "dimensionality_tolerance": cfg.dimensionality_tolerance, "gram_tolerance": cfg.gram_tolerance,
            "cells": toy_cells, "final_loss": [float(v) for v in toy_final],
        },
        "lm": {"n_seeds": cfg.n_seeds, "val_loss_per_seed": val_losses,
               "unigram_baseline": unigram_cross_entropy(corpus.train, corpus.val, cfg.model.d_vocab),
               "train_seconds": lm.seconds, "val_rows": int(neurons[0].shape[0]),
               "final_train_loss": [float(np.nanmean(lm.losses[i, -5:])) for i in range(cfg.n_seeds)]},
        "sae": {
            "kind": cfg.sae_kind, "hook": HOOK, "coefficient": coef, "thresholds": list(cfg.thresholds),
            "curve_thresholds": CURVE_THRESHOLDS.tolist(), "instances": instances, "comparisons": sizes,
            "neurons_cross_lm": None if neuron_match is None else _report(neuron_match, cfg.thresholds),
        },
    }


def _figures(cfg: Config, figures: Path, toy_arrays: dict[str, Any], sizes: list[dict[str, Any]],
             neuron_match: list[np.ndarray] | None, lm_losses: np.ndarray, sae_losses: np.ndarray,
             sae_labels: list[str]) -> None:
    coef = sae_lib.get(cfg.sae_kind).swept
    names = {"same_set": "same represented features", "same_dimensionalities": "same sorted D_i (geometry)",
             "same_gram": "same W^T W (configuration)"}
    plots.save(uplots.toy_universality_figure(
        np.asarray(cfg.toy_feature_probabilities), toy_arrays["rows"],
        {names[c]: v for c, v in toy_arrays["fractions"].items()}, toy_arrays["sorted_dimensionality"],
        title=f"toy models: n={cfg.toy_n_features} features in m={cfg.toy_d_hidden} dims, "
              f"{cfg.toy_seeds} seeds per cell ({cfg.toy_steps} steps)"), figures / "toy_geometry.png")

    def label(s: dict[str, Any]) -> str:
        return f"d_sae={s['d_sae']}, {coef}={s[coef]:g}"

    first = sizes[0]
    panels = [
        uplots.SharedPanel("same LM, SAE seeds: decoder cosine",
                           {label(s): _curve(s["_matched"]["same_lm_cosine"]) for s in sizes},
                           {"control: random dictionary": _curve(first["_matched"]["random_dictionary_cosine"]),
                            **({"control: SAE of another LM": _curve(first["_matched"]["cross_lm_cosine"])}
                               if first["_matched"]["cross_lm_cosine"] else {})}),
        uplots.SharedPanel("same LM, SAE seeds: activation correlation",
                           {label(s): _curve(s["_matched"]["same_lm_correlation"]) for s in sizes},
                           {"control: shuffled tokens": _curve(first["_matched"]["shuffled_rows_correlation"])}),
    ]
    if cfg.n_seeds >= 2 and neuron_match is not None:
        panels.append(uplots.SharedPanel(
            "different LMs: activation correlation",
            {label(s): _curve(s["_matched"]["cross_lm_correlation"]) for s in sizes},
            {"MLP neurons of the LMs": _curve(neuron_match)}))
    plots.save(uplots.shared_fraction_figure(
        CURVE_THRESHOLDS, panels,
        title=f"{cfg.sae_kind} SAEs on {HOOK} ({cfg.model.d_mlp} neurons) of {cfg.n_seeds} LM seed(s), "
              f"{cfg.sae_seeds} SAE seeds each, Hungarian matching on {cfg.eval_windows} validation windows"),
        figures / "shared_fraction.png")

    big = max(sizes, key=lambda s: (s["d_sae"], -s[coef]))
    groups = {"same LM: decoder cosine": np.concatenate(big["_matched"]["same_lm_cosine"]),
              "same LM: activation correlation": np.concatenate(big["_matched"]["same_lm_correlation"])}
    if big["_matched"]["cross_lm_correlation"]:
        groups["different LMs: activation correlation"] = np.concatenate(big["_matched"]["cross_lm_correlation"])
    if neuron_match is not None:
        groups["LM neurons: activation correlation"] = np.concatenate(neuron_match)
    groups["control: random dictionary (cosine)"] = big["_matched"]["random_dictionary_cosine"][0]
    groups["control: shuffled tokens (correlation)"] = big["_matched"]["shuffled_rows_correlation"][0]
    plots.save(uplots.similarity_histograms(groups, title=f"matched similarities, {label(big)}"),
               figures / "similarity_histogram.png")
    plots.save(plots.loss_curves(lm_losses, [f"LM seed {s}" for s in range(lm_losses.shape[0])], log_every=cfg.log_every),
               figures / "lm_loss.png")
    plots.save(plots.loss_curves(sae_losses, sae_labels, log_every=cfg.log_every), figures / "sae_loss.png")
