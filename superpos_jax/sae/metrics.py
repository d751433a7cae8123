"""Sparse-autoencoder metrics: reconstruction, sparsity, feature density and dictionary recovery.

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
  implemented here in NumPy). Ground-truth features left unmatched (d_sae < n_gt) count 0.

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
from jaxtyping import Array, ArrayLike, Float, Int, Real, Scalar

if TYPE_CHECKING:
    from superpos_jax.sae.model import SAE

_TINY = 1e-12


def evaluate(sae: SAE, x: Float[ArrayLike, "batch d_in"]) -> dict[str, Array]:
    """Held-out metrics of one SAE on raw activations x, as used after training
    (`sae.encode`): `l0` (mean number of positive latents), `mse` (mean over examples of the
    squared error summed over d_in, in raw units), `fvu`, per-latent `fired` counts (d_sae,)
    and `dead_fraction` (the share of existing latents that never fired on x)."""
    x = jnp.asarray(x)
    f = sae.encode(x)
    fired = jnp.sum((f > 0).astype(jnp.int32), axis=0)
    x_hat = sae.decode(f)
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
    """Optimal one-to-one assignment for a rectangular cost matrix (Hungarian algorithm).

    Kuhn–Munkres with row/column potentials, adding one row at a time along a shortest
    augmenting path (Dijkstra on reduced costs): O(n² m) for an (n, m) matrix with n <= m;
    a taller matrix is transposed first.

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
    if maximize:
        c = -c
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    row_of = np.zeros(m + 1, np.int64)  # 1-based row matched to column j (0 = free); j = 0 is a sentinel
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        row_of[0] = i
        j0 = 0
        min_slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used[1:]
            slack = c[i0 - 1] - u[i0] - v[1:]
            better = free & (slack < min_slack[1:])
            min_slack[1:][better] = slack[better]
            way[1:][better] = j0
            candidates = np.where(free, min_slack[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_slack[1:][free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0 != 0:
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    cols = np.nonzero(row_of[1:])[0]
    rows = row_of[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def recovery(decoder: npt.ArrayLike, ground_truth: npt.ArrayLike) -> dict[str, Any]:
    """How well one decoder (d_in, d_sae) recovers ground-truth directions (n_gt, d_in):
    `max_cosine` (n_gt,) numpy, each feature's best cosine to any latent; `mmcs` (float) its
    mean; `hungarian` (float) the one-to-one matching score."""
    dec, gt = np.asarray(decoder, np.float32), np.asarray(ground_truth, np.float32)
    best = np.asarray(cosine_matrix(dec, gt)).max(axis=1)
    return {"max_cosine": best, "mmcs": float(best.mean()), "hungarian": hungarian_matching_score(dec, gt)}
