"""Sparse-autoencoder metrics: reconstruction, sparsity, feature density, dictionary recovery,
and absorption, splitting and precision/recall against structured ground truth.

Shapes: x and x̂ are (batch, d_in); feature activations f are (batch, d_sae); firing counts
are (d_sae,) over a window of n_tokens inputs; a decoder is (d_in, d_sae) with one column per
latent; a ground-truth dictionary is (n_gt, d_in) with one row per feature.

Definitions:

* L0 = mean over inputs of the number of non-zero latents.
* MSE = mean over all elements of (x − x̂)² (per-input squared error divided by d_in).
* FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖², the mean taken over the batch; 0 for a perfect
  reconstruction, 1 for x̂ = mean(x).
* dead fraction: share of latents with a zero firing count; dense fraction: share with
  firing frequency count / n_tokens > threshold (default 0.1).
* MMCS (Sharkey et al., 2022) = mean over ground-truth features of the max cosine similarity
  to any decoder column. Signed cosine by default, as in the paper (a decoder column pointing
  opposite to a feature does not recover it); `absolute=True` uses |cosine|.
* Hungarian matching score: the same mean, but under a one-to-one assignment of decoder
  columns to ground-truth features that maximises the total cosine (`linear_sum_assignment`,
  `scipy.optimize`). Ground-truth features left unmatched (d_sae < n_gt) count 0.

Against structured ground truth (`superpos_jax.sae.synthetic`; latents f (n, d_sae), true
activations s (n, n_features), directions (n_features, d_in), the hierarchy as a parent index per
feature), host-side NumPy, vectorised over inputs:

* `match_features`: the one-to-one latent of each feature (the Hungarian matching above).
* `precision_recall`: per matched pair, P(feature active | latent fires), P(latent fires |
  feature active), F1, and their means.
* `feature_splitting`: per feature, the number of latents with decoder cosine ≥ a threshold
  that fire on its inputs (> 1: split).
* `feature_absorption` (Chanin et al., 2024): per parent, the share of its child-carried inputs
  on which the parent's latent fails while a latent aligned with the child, whose decoder
  carries the parent's direction, fires (thresholds in its docstring).

A padded dictionary (an SAE of a dictionary-size sweep with hyperparameter `n_latents`, see
`superpos_jax.sae.training`) is scored over its existing latents only: its masked latents are
0, so L0 is unchanged, and the dead and dense fractions and the density histogram take
`n_latents` (the first n_latents latents exist; None: all).

The reconstruction and sparsity metrics are jnp functions of one instance (vmap for a sweep);
`evaluate` scores one trained `SAE` on raw activations; the density histogram and the matching
are host-side NumPy analysis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import scipy.optimize
from jaxtyping import Array, ArrayLike, Float, Int, Real, Scalar

if TYPE_CHECKING:
    from superpos_jax.sae.model import SAE

_TINY = 1e-12


def evaluate(sae: SAE, x: Float[ArrayLike, "batch d_in"]) -> dict[str, Array]:
    """Held-out metrics of one SAE on raw activations x, as used after training
    (`sae.encode`): `l0` (mean number of positive latents), `mse` (mean over examples of the
    squared error summed over d_in, in raw units), `fvu`, per-latent `fired` counts (d_sae,)
    and `dead_fraction` (the share of existing latents that never fired on x). A transcoder's
    rows are [x_in | y] (wider than its `d_in`): it is scored on its prediction of y."""
    x = jnp.asarray(x)
    if x.shape[-1] != sae.d_in:
        x_in, x = x[..., : sae.d_in], x[..., sae.d_in :]
    else:
        x_in = x
    f = sae.encode(x_in)
    fired = jnp.sum((f > 0).astype(jnp.int32), axis=0)
    x_hat = sae.reconstruct(x_in)
    err = jnp.sum(jnp.square(x - x_hat), axis=-1)
    var = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return {
        "l0": jnp.mean(jnp.sum((f > 0).astype(jnp.float32), axis=-1)),
        "mse": jnp.mean(err),
        "fvu": jnp.sum(err) / jnp.maximum(var, _TINY),
        "fired": fired,
        "dead_fraction": dead_fraction(fired, sae.hparams.get("n_latents")),
    }


def l0(f: Float[ArrayLike, "batch d_sae"]) -> Scalar:
    """Mean number of non-zero latents per input."""
    f = jnp.asarray(f)
    return jnp.mean(jnp.sum((f != 0).astype(jnp.float32), axis=1))


def mse(x: Float[ArrayLike, "batch d_in"], x_hat: Float[ArrayLike, "batch d_in"]) -> Scalar:
    """Mean over all elements of (x − x̂)²."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    return jnp.mean(jnp.square(x - x_hat))


def fraction_of_variance_unexplained(
    x: Float[ArrayLike, "batch d_in"], x_hat: Float[ArrayLike, "batch d_in"]
) -> Scalar:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (mean over the batch; denominator floored at 1e-12)."""
    x, x_hat = jnp.asarray(x), jnp.asarray(x_hat)
    residual = jnp.sum(jnp.square(x - x_hat))
    total = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return residual / jnp.maximum(total, _TINY)


def firing_counts(f: Float[ArrayLike, "batch d_sae"]) -> Int[Array, " d_sae"]:
    """Number of inputs on which each latent is non-zero (sum these over a window)."""
    return jnp.sum((jnp.asarray(f) != 0).astype(jnp.int32), axis=0)


def _existing(d_sae: int, n_latents: Real[ArrayLike, ""] | int | float | None) -> Array:
    """(d_sae,) float32 weights: 1 for the first `n_latents` latents, 0 after (all 1 for None)."""
    if n_latents is None:
        return jnp.ones(d_sae, jnp.float32)
    index = jnp.arange(d_sae, dtype=jnp.float32)
    return (index < jnp.asarray(n_latents).astype(jnp.float32)).astype(jnp.float32)


def _share(flags: Array, n_latents: Real[ArrayLike, ""] | int | float | None) -> Scalar:
    weight = _existing(flags.shape[-1], n_latents)
    return jnp.sum(flags.astype(jnp.float32) * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def dead_fraction(
    counts: Real[ArrayLike, " d_sae"], n_latents: Real[ArrayLike, ""] | int | float | None = None
) -> Scalar:
    """Share of the existing latents (the first `n_latents`; None: all) that never fired over
    the window (count == 0)."""
    return _share(jnp.asarray(counts) == 0, n_latents)


def dense_fraction(
    counts: Real[ArrayLike, " d_sae"],
    n_tokens: int | float,
    threshold: float | int = 0.1,
    n_latents: Real[ArrayLike, ""] | int | float | None = None,
) -> Scalar:
    """Share of the existing latents (the first `n_latents`; None: all) whose firing frequency
    count / n_tokens exceeds `threshold`."""
    if not n_tokens > 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    counts = jnp.asarray(counts).astype(jnp.float32)
    return _share(counts > np.float32(threshold) * np.float32(n_tokens), n_latents)


def feature_density_histogram(
    counts: npt.ArrayLike, n_tokens: int | float, bins: int | npt.ArrayLike = 50, n_latents: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Histogram of log10 firing frequency over the latents that fired at least once.

    Args:
        counts: (d_sae,) firing counts over a window of `n_tokens` inputs.
        n_tokens: window length.
        bins: number of bins (spanning [log10(1 / n_tokens), 0]) or explicit bin edges.
        n_latents: only the first `n_latents` latents exist (a padded dictionary); None: all.

    Returns:
        (hist, edges, n_dead): counts per bin (int64, len(edges) − 1), the bin edges in log10
        frequency, and the number of existing latents with count 0 (log10 0 = −∞ is not binned).
    """
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D (d_sae,), got shape {counts.shape}")
    if n_latents is not None:
        if n_latents != int(n_latents) or not 1 <= n_latents <= counts.shape[0]:
            raise ValueError(f"n_latents must be an integer in [1, d_sae={counts.shape[0]}], got {n_latents}")
        counts = counts[: int(n_latents)]
    if not n_tokens > 0:
        raise ValueError(f"n_tokens must be > 0, got {n_tokens}")
    if np.any(counts < 0) or np.any(counts > n_tokens):
        raise ValueError("counts must lie in [0, n_tokens]")
    alive = counts > 0
    log_freq = np.log10(counts[alive] / float(n_tokens))
    if np.ndim(bins) == 0:
        edges = np.linspace(np.log10(1.0 / float(n_tokens)), 0.0, int(bins) + 1)
    else:
        edges = np.asarray(bins, np.float64)
    hist, edges = np.histogram(log_freq, bins=edges)
    return hist.astype(np.int64), edges, int(np.sum(~alive))


def cosine_matrix(
    decoder: Float[ArrayLike, "d_in d_sae"], ground_truth: Float[ArrayLike, "n_gt d_in"]
) -> Float[Array, "n_gt d_sae"]:
    """cos(g_i, d_j) between ground-truth row i and decoder column j (zero vectors give 0)."""
    dec = jnp.asarray(decoder)
    gt = jnp.asarray(ground_truth)
    dec = dec / jnp.maximum(jnp.linalg.norm(dec, axis=0, keepdims=True), _TINY)
    gt = gt / jnp.maximum(jnp.linalg.norm(gt, axis=1, keepdims=True), _TINY)
    return gt @ dec


def mmcs(
    decoder: Float[ArrayLike, "d_in d_sae"],
    ground_truth: Float[ArrayLike, "n_gt d_in"],
    *,
    absolute: bool = False,
) -> Scalar:
    """Mean max cosine similarity: mean_i max_j cos(g_i, d_j) (|cos| with `absolute=True`)."""
    cos = cosine_matrix(decoder, ground_truth)
    if absolute:
        cos = jnp.abs(cos)
    return jnp.mean(jnp.max(cos, axis=1))


def hungarian_matching_score(
    decoder: npt.ArrayLike, ground_truth: npt.ArrayLike, *, absolute: bool = False
) -> float:
    """Mean cosine over ground-truth features under the best one-to-one matching.

    Args:
        decoder: (d_in, d_sae) decoder, one column per latent.
        ground_truth: (n_gt, d_in) ground-truth directions.
        absolute: match on |cosine| instead of cosine.

    Returns:
        Σ_matched cos / n_gt (float); unmatched ground-truth features (when d_sae < n_gt) count 0.
    """
    dec = np.asarray(decoder, np.float64)
    gt = np.asarray(ground_truth, np.float64)
    if dec.ndim != 2 or gt.ndim != 2 or dec.shape[0] != gt.shape[1]:
        raise ValueError(
            f"need decoder (d_in, d_sae) and ground_truth (n_gt, d_in); got {dec.shape} and {gt.shape}"
        )
    dec = dec / np.maximum(np.linalg.norm(dec, axis=0, keepdims=True), _TINY)
    gt = gt / np.maximum(np.linalg.norm(gt, axis=1, keepdims=True), _TINY)
    cos = gt @ dec
    if absolute:
        cos = np.abs(cos)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(np.sum(cos[rows, cols]) / gt.shape[0])


def linear_sum_assignment(
    cost: npt.ArrayLike, *, maximize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one assignment for a rectangular cost matrix.

    `scipy.optimize.linear_sum_assignment` (the shortest-augmenting-path Hungarian method),
    after checking the input.

    Args:
        cost: (n, m) finite matrix.
        maximize: maximise the total instead of minimising it.

    Returns:
        (rows, cols): int64 arrays of length min(n, m), rows ascending; cost[rows, cols].sum()
        is optimal over all assignments that match min(n, m) pairs.
    """
    c = np.asarray(cost, np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost must be finite")
    if c.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = scipy.optimize.linear_sum_assignment(c, maximize=maximize)
    order = np.argsort(rows, kind="stable")
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def recovery(decoder: npt.ArrayLike, ground_truth: npt.ArrayLike) -> dict[str, Any]:
    """How well one decoder (d_in, d_sae) recovers ground-truth directions (n_gt, d_in):
    `max_cosine` (n_gt,) numpy, each feature's best cosine to any latent; `mmcs` (float) its
    mean; `hungarian` (float) the one-to-one matching score."""
    dec, gt = np.asarray(decoder, np.float32), np.asarray(ground_truth, np.float32)
    best = np.asarray(cosine_matrix(dec, gt)).max(axis=1)
    return {"max_cosine": best, "mmcs": float(best.mean()), "hungarian": hungarian_matching_score(dec, gt)}


# ---------------------------------------------------------------------------------------------
# Against structured ground truth (`superpos_jax.sae.synthetic`): latents f (n, d_sae), true
# feature activations s (n, n_features), decoder (d_in, d_sae), directions (n_features, d_in).


def _fires(a: npt.ArrayLike, threshold: float, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, ...), got shape {a.shape}")
    return a > threshold


def _cosines(decoder: npt.ArrayLike, directions: npt.ArrayLike) -> np.ndarray:
    """(n_features, d_sae) float64 cos(d_i, W_dec[:, j])."""
    dec = np.asarray(decoder, np.float64)
    gt = np.asarray(directions, np.float64)
    if dec.ndim != 2 or gt.ndim != 2 or dec.shape[0] != gt.shape[1]:
        raise ValueError(f"need decoder (d_in, d_sae) and directions (n_features, d_in); got {dec.shape} and {gt.shape}")
    dec = dec / np.maximum(np.linalg.norm(dec, axis=0, keepdims=True), _TINY)
    gt = gt / np.maximum(np.linalg.norm(gt, axis=1, keepdims=True), _TINY)
    return gt @ dec


def match_features(decoder: npt.ArrayLike, directions: npt.ArrayLike, *, absolute: bool = False) -> np.ndarray:
    """The latent matched to each true feature by the one-to-one assignment that maximises the
    total decoder cosine (`linear_sum_assignment`), as for `hungarian_matching_score`.

    Returns:
        (n_features,) int64 latent index per feature, −1 for features left unmatched
        (d_sae < n_features).
    """
    cos = _cosines(decoder, directions)
    if absolute:
        cos = np.abs(cos)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    latent_of = np.full(cos.shape[0], -1, np.int64)
    latent_of[rows] = cols
    return latent_of


def precision_recall(
    f: npt.ArrayLike, s: npt.ArrayLike, latent_of: npt.ArrayLike, *, threshold: float = 0.0
) -> dict[str, Any]:
    """Precision and recall of matched latents as detectors of their true features.

    For feature i and its latent j = latent_of[i] ("fires": f > threshold; "active": s > 0):
    precision_i = P(feature i active | latent j fires), recall_i = P(latent j fires | feature i
    active), F1_i = 2·P·R / (P + R) (0 when P = R = 0). A latent that never fires has
    precision 0; a feature never active in the sample has recall (and F1) nan; unmatched
    features (latent −1) are nan throughout. Means skip nan.

    Args:
        f: (n, d_sae) latent activations.
        s: (n, n_features) true feature activations on the same inputs.
        latent_of: (n_features,) matched latent per feature (e.g. `match_features`), −1 for none.
        threshold: a latent fires where f > threshold.

    Returns:
        dict of numpy (n_features,) `precision`, `recall`, `f1`, and floats `mean_precision`,
        `mean_recall`, `mean_f1`.
    """
    fires = _fires(f, threshold, "f")
    active = _fires(s, 0.0, "s")
    latent_of = np.asarray(latent_of, np.int64)
    if fires.shape[0] != active.shape[0] or latent_of.shape != active.shape[1:]:
        raise ValueError(f"need f (n, d_sae), s (n, n_features), latent_of (n_features,); got "
                         f"{fires.shape}, {active.shape}, {latent_of.shape}")
    matched = latent_of >= 0
    picked = fires[:, np.where(matched, latent_of, 0)]
    both = np.sum(picked & active, axis=0).astype(np.float64)
    n_fired = np.sum(picked, axis=0).astype(np.float64)
    n_active = np.sum(active, axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_fired > 0, both / np.maximum(n_fired, 1.0), 0.0)
        recall = np.where(n_active > 0, both / np.maximum(n_active, 1.0), np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(np.isnan(recall), np.nan, f1)
    precision, recall, f1 = (np.where(matched, v, np.nan) for v in (precision, recall, f1))
    return {
        "precision": precision, "recall": recall, "f1": f1,
        **{f"mean_{k}": _nanmean(v) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
    }


def _nanmean(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def feature_splitting(
    decoder: npt.ArrayLike,
    f: npt.ArrayLike,
    s: npt.ArrayLike,
    directions: npt.ArrayLike,
    *,
    cosine_threshold: float = 0.8,
    min_fire_fraction: float = 0.05,
    threshold: float = 0.0,
) -> dict[str, Any]:
    """How many latents share each true feature.

    Latent j is one of feature i's latents when cos(W_dec[:, j], d_i) ≥ `cosine_threshold`
    (0.8 by default: a latent that absorbed a parent into a child, W_dec ∝ d_c + d_p, has
    cosine ≈ 0.71 to each and is not counted as a split of either) and j fires (f > threshold)
    on at least `min_fire_fraction` of the inputs where feature i is active. Feature i is split
    when its count exceeds 1 (0: not recovered).

    Args:
        decoder: (d_in, d_sae). f: (n, d_sae). s: (n, n_features). directions: (n_features, d_in).

    Returns:
        dict: `split_count` (n_features,) int64; floats `split_fraction` (share of the
        features active in the sample with count > 1) and `mean_split_count` (over those).
    """
    cos = _cosines(decoder, directions)
    fires = _fires(f, threshold, "f").astype(np.float32)
    active = _fires(s, 0.0, "s")
    if fires.shape[0] != active.shape[0] or cos.shape != (active.shape[1], fires.shape[1]):
        raise ValueError(f"shapes do not agree: decoder {np.shape(decoder)}, f {fires.shape}, s {active.shape}, "
                         f"directions {np.shape(directions)}")
    n_active = active.sum(axis=0)
    co = active.T.astype(np.float32) @ fires
    share = co / np.maximum(n_active, 1)[:, None]
    count = np.sum((cos >= cosine_threshold) & (share >= min_fire_fraction), axis=1).astype(np.int64)
    seen = n_active > 0
    return {
        "split_count": count,
        "split_fraction": float(np.mean(count[seen] > 1)) if seen.any() else float("nan"),
        "mean_split_count": float(np.mean(count[seen])) if seen.any() else float("nan"),
    }


def feature_absorption(
    decoder: npt.ArrayLike,
    f: npt.ArrayLike,
    s: npt.ArrayLike,
    directions: npt.ArrayLike,
    parent: npt.ArrayLike,
    *,
    parent_latents: npt.ArrayLike | None = None,
    fail_fraction: float = 0.5,
    parent_cosine: float = 0.3,
    child_cosine: float = 0.3,
    threshold: float = 0.0,
) -> dict[str, Any]:
    """Feature absorption (Chanin et al., 2024) against a known hierarchy.

    For each parent feature p (a feature with children in `parent`):

    1. its latent ℓ_p: `parent_latents[p]` if given, else the latent of best decoder cosine to d_p;
    2. on each input n where p is active, the parent latent's response relative to the true
       magnitude, r_n = f[n, ℓ_p] / s[n, p]; its typical value r̄ is the median of r over the
       inputs where p is active without any child and ℓ_p fires (if there are none: the 90th
       percentile of r over the inputs where ℓ_p fires on p). ℓ_p *fails* on n when
       r_n ≤ `fail_fraction`·r̄ (not firing at all always fails; a latent that never fires on
       p fails everywhere);
    3. an *absorbing* latent of child c is any j ≠ ℓ_p with cos(W_dec[:, j], d_p) ≥
       `parent_cosine` and cos(W_dec[:, j], d_c) ≥ `child_cosine`: it is aligned with the child
       and its decoder carries the parent's direction. (The defaults 0.3 sit well above the
       cosine of independent random directions, ≈ N(0, 1/d_in), for d_in ≳ 64, and below the
       0.71 of W_dec ∝ d_c + d_p.)

    An input where p is active through a child (some child c of p active) is *absorbed* when ℓ_p
    fails and an absorbing latent of an active child fires (f > threshold). Rates are over the
    inputs where p is active through a child: `parent_rate[p]` = absorbed / those inputs, and
    `child_rate[c]` the same over the inputs where child c is active. Only direct children count
    (a grandchild absorbs into its own parent).

    Args:
        decoder: (d_in, d_sae). f: (n, d_sae) latents. s: (n, n_features) true activations.
        directions: (n_features, d_in). parent: (n_features,) int parent index, −1 for roots.
        parent_latents: optional (n_features,) int latent per feature (e.g. `match_features`);
            only the parents' entries are read.

    Returns:
        dict: `parents` (n_parents,) int64 feature indices; numpy per parent `parent_latent`,
        `parent_rate` (nan where p never fires through a child in the sample) and `miss_rate`
        (share of those inputs where ℓ_p fails, absorbed or not); `child_rate` (n_features,)
        (nan except for children that fired); float `mean` = mean of parent_rate over parents
        (nan skipped).
    """
    cos = _cosines(decoder, directions)
    fires = _fires(f, threshold, "f")
    s = np.asarray(s, np.float64)
    active = _fires(s, 0.0, "s")
    parent = np.asarray(parent, np.int64)
    f = np.asarray(f, np.float64)
    n_features = cos.shape[0]
    if fires.shape[0] != active.shape[0] or active.shape[1] != n_features or parent.shape != (n_features,) \
            or fires.shape[1] != cos.shape[1]:
        raise ValueError(f"shapes do not agree: decoder {np.shape(decoder)}, f {fires.shape}, s {active.shape}, "
                         f"directions {np.shape(directions)}, parent {parent.shape}")
    if np.any(parent >= n_features) or np.any(parent < -1):
        raise ValueError(f"parent entries must be feature indices or -1, got range [{parent.min()}, {parent.max()}]")
    parents = np.unique(parent[parent >= 0])
    if parent_latents is None:
        latent = np.argmax(cos[parents], axis=1) if parents.size else np.zeros(0, np.int64)
    else:
        latent = np.asarray(parent_latents, np.int64)[parents]
    parent_rate = np.full(parents.size, np.nan)
    miss_rate = np.full(parents.size, np.nan)
    child_rate = np.full(n_features, np.nan)
    for k, (p, lp) in enumerate(zip(parents, latent)):
        kids = np.nonzero(parent == p)[0]
        on = active[:, p]
        ratio = np.where(on, f[:, lp] / np.where(on, s[:, p], 1.0), 0.0)
        kid_on = active[:, kids] & on[:, None]
        through = kid_on.any(axis=1)
        firing = on & fires[:, lp]
        alone = firing & ~through
        if alone.any():
            typical = float(np.median(ratio[alone]))
        elif firing.any():
            typical = float(np.quantile(ratio[firing], 0.9))
        else:
            typical = np.inf
        fails = ~firing | (ratio <= fail_fraction * typical)
        absorbing = (cos[p] >= parent_cosine)[None, :] & (cos[kids] >= child_cosine)
        absorbing[:, lp] = False
        absorber_fires = (fires.astype(np.float32) @ absorbing.T.astype(np.float32)) > 0
        absorbed_by = kid_on & absorber_fires & fails[:, None]
        n_through = through.sum()
        if n_through:
            parent_rate[k] = absorbed_by.any(axis=1).sum() / n_through
            miss_rate[k] = (fails & through).sum() / n_through
        n_kid = kid_on.sum(axis=0)
        child_rate[kids] = np.where(n_kid > 0, absorbed_by.sum(axis=0) / np.maximum(n_kid, 1), np.nan)
    return {
        "parents": parents.astype(np.int64),
        "parent_latent": np.asarray(latent, np.int64),
        "parent_rate": parent_rate,
        "miss_rate": miss_rate,
        "child_rate": child_rate,
        "mean": _nanmean(parent_rate),
    }


def ground_truth_scores(
    decoder: npt.ArrayLike,
    f: npt.ArrayLike,
    s: npt.ArrayLike,
    directions: npt.ArrayLike,
    parent: npt.ArrayLike | None = None,
) -> dict[str, float]:
    """Every ground-truth score of one SAE as JSON-able floats (for a summary row): `mmcs`,
    `hungarian`, `precision`, `recall`, `f1` (over the Hungarian-matched pairs), `split_fraction`,
    `mean_split_count` and, given a hierarchy (`parent`, with at least one child), `absorption`
    (mean parent rate) and `parent_miss` (mean miss rate); defaults as in the functions above.

    Args:
        decoder: (d_in, d_sae). f: (n, d_sae). s: (n, n_features). directions: (n_features, d_in).
        parent: (n_features,) parent index per feature, −1 for roots (None: no hierarchy).
    """
    cos = _cosines(decoder, directions)
    latent_of = match_features(decoder, directions)
    pr = precision_recall(f, s, latent_of)
    split = feature_splitting(decoder, f, s, directions)
    matched = latent_of >= 0
    out = {
        "mmcs": float(cos.max(axis=1).mean()),
        "hungarian": float(cos[matched, latent_of[matched]].sum() / cos.shape[0]),
        "precision": pr["mean_precision"], "recall": pr["mean_recall"], "f1": pr["mean_f1"],
        "split_fraction": split["split_fraction"], "mean_split_count": split["mean_split_count"],
    }
    if parent is not None and np.any(np.asarray(parent) >= 0):
        absorption = feature_absorption(decoder, f, s, directions, parent)
        out["absorption"] = absorption["mean"]
        out["parent_miss"] = _nanmean(absorption["miss_rate"])
    return out
