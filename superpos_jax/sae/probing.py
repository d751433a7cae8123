"""Sparse and k-sparse probing of activations or SAE latents for binary concepts.

The evaluation of Gurnee et al. (2023, "Finding Neurons in a Haystack") as SAEBench runs it on
SAE latents: for each binary label and each k, choose k units (neurons, or SAE latents) by the
mean-difference criterion on a train split — the k largest |mean(x | y=1) − mean(x | y=0)| —
fit a logistic regression on those k units only, and report held-out accuracy. A concept that a
few units carry (a monosemantic feature) is probed well at k = 1; one spread over many units in
superposition needs a large k.

The fit is an L2-regularised, class-balanced logistic regression solved here by damped Newton
steps (jitted and vmapped over labels): with `c_i` = 1 / (2 n_pos) for positives and 1 / (2 n_neg)
for negatives among the train rows (each class weighs one half in total, so a rare concept is not
fit as "always false"),

    minimise  Σ_i c_i [log(1 + exp(z_i)) − y_i z_i] + (l2 / 2) ‖w‖²,   z = x̂ w + b,

on the k selected units standardised with their train mean and standard deviation (no penalty on
the bias). Each Newton direction is taken with the best of a few step sizes (0 included), so the
objective never increases. All k and labels are fit in one compiled program (the k_max best units
per label, those past k zeroed). Reported per (k, label): held-out accuracy and balanced accuracy
(the mean of the true-positive and true-negative rates; 0.5 is chance whatever the class balance).
A label with fewer than `min_class` positives or negatives in either split gets NaN.

Everything is host-friendly: inputs are arrays (n, d) and (n, n_labels); `k_sparse_probe` returns
NumPy arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Bool, Float

__all__ = ["ProbeResult", "fit_logistic", "k_sparse_probe", "mean_difference_scores"]

_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)


class ProbeResult(NamedTuple):
    """k-sparse probing results.

    Attributes:
        ks: the k values, in order (k larger than the unit count is clipped to it).
        accuracy, balanced_accuracy: float arrays (n_k, n_labels) of held-out scores (NaN where
            a label has too few examples of a class).
        units: int array (n_k, n_labels, max_k): the units chosen for each (k, label), best first,
            padded with -1 beyond k.
        n_positive_train, n_positive_test: int arrays (n_labels,).
    """

    ks: tuple[int, ...]
    accuracy: np.ndarray
    balanced_accuracy: np.ndarray
    units: np.ndarray
    n_positive_train: np.ndarray
    n_positive_test: np.ndarray


def mean_difference_scores(
    x: Float[Array, "n d"], labels: Bool[Array, "n label"], weight: Float[Array, " n"]
) -> Float[Array, "label d"]:
    """|mean(x | y = 1) − mean(x | y = 0)| per label and unit, over the rows with weight > 0
    (rows weighted by `weight`, e.g. a 0/1 train mask). A class with no rows has mean 0."""
    y = labels.astype(x.dtype) * weight[:, None]
    not_y = (1 - labels.astype(x.dtype)) * weight[:, None]
    mean_pos = (y.T @ x) / jnp.maximum(y.sum(0), 1e-12)[:, None]
    mean_neg = (not_y.T @ x) / jnp.maximum(not_y.sum(0), 1e-12)[:, None]
    return jnp.abs(mean_pos - mean_neg)


def _objective(w: Array, b: Array, x: Array, y: Array, c: Array, l2: float | Array) -> Array:
    z = x @ w + b
    return jnp.sum(c * (jnp.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * jnp.sum(w * w)


def fit_logistic(
    x: Float[Array, "n k"], y: Float[Array, " n"], c: Float[Array, " n"], *, l2: float | Float[Array, ""] = 1e-3,
    n_steps: int = 25
) -> tuple[Float[Array, " k"], Float[Array, ""]]:
    """Weighted L2-regularised logistic regression by damped Newton (module docstring).

    Args:
        x: features (n, k) (standardise them first for a well-conditioned Hessian).
        y: targets in {0, 1}, shape (n,), x's dtype.
        c: non-negative row weights (n,) (0 leaves a row out).
        l2: the penalty on w (not on the bias); > 0 keeps separable data bounded.
        n_steps: Newton steps from w = 0, b = 0.

    Returns:
        (w of shape (k,), b scalar), in x's dtype.
    """
    k = x.shape[1]
    xb = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    ridge = jnp.concatenate([jnp.full((k,), l2, x.dtype), jnp.full((1,), 1e-6, x.dtype)])
    steps = jnp.asarray(_STEP_SIZES, x.dtype)

    def step(theta: Array, _: None) -> tuple[Array, None]:
        p = jax.nn.sigmoid(xb @ theta)
        grad = xb.T @ (c * (p - y)) + jnp.where(jnp.arange(k + 1) < k, l2 * theta, 0)
        hess = (xb * (c * p * (1 - p))[:, None]).T @ xb + jnp.diag(ridge)
        direction = jnp.linalg.solve(hess, grad)
        candidates = theta[None, :] - steps[:, None] * direction[None, :]
        values = jax.vmap(lambda t: _objective(t[:k], t[k], x, y, c, l2))(candidates)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        return candidates[jnp.argmin(values)], None

    theta, _ = jax.lax.scan(step, jnp.zeros((k + 1,), x.dtype), None, length=n_steps)
    return theta[:k], theta[k]


@functools.partial(jax.jit, static_argnames=("k_max", "n_steps"))
def _probe(x: Array, labels: Array, train: Array, ks: Array, *, k_max: int, l2: Array, n_steps: int
           ) -> tuple[Array, Array, Array]:
    """Every (k, label) in one program: the k_max best units per label, the ones past k zeroed
    (a zero column gets weight 0: only the ridge acts on it)."""
    dtype = x.dtype
    train_w = train.astype(dtype)
    test_w = 1 - train_w
    units = jax.lax.top_k(mean_difference_scores(x, labels, train_w), k_max)[1]     # (label, k_max)

    def one_label(y_bool: Array, idx: Array, k: Array) -> tuple[Array, Array]:
        keep = jnp.arange(k_max) < k
        xs = x[:, idx]
        n_train = train_w.sum()
        mean = (train_w @ xs) / n_train
        std = jnp.sqrt((train_w @ (xs - mean[None, :]) ** 2) / n_train)
        xs = jnp.where(keep[None, :], (xs - mean[None, :]) / jnp.where(std > 0, std, 1)[None, :], 0)
        y = y_bool.astype(dtype)
        pos, neg = (y * train_w).sum(), ((1 - y) * train_w).sum()
        c = train_w * jnp.where(y_bool, 0.5 / jnp.maximum(pos, 1), 0.5 / jnp.maximum(neg, 1))
        w, b = fit_logistic(xs, y, c, l2=l2, n_steps=n_steps)
        correct = ((xs @ w + b > 0) == y_bool).astype(dtype)
        accuracy = (correct * test_w).sum() / jnp.maximum(test_w.sum(), 1)
        tpr = (correct * test_w * y).sum() / jnp.maximum((test_w * y).sum(), 1)
        tnr = (correct * test_w * (1 - y)).sum() / jnp.maximum((test_w * (1 - y)).sum(), 1)
        return accuracy, 0.5 * (tpr + tnr)

    per_label = jax.vmap(one_label, in_axes=(1, 0, None))
    accuracy, balanced = jax.vmap(per_label, in_axes=(None, None, 0))(labels, units, ks)
    return accuracy, balanced, units


def k_sparse_probe(
    x: npt.ArrayLike,
    labels: npt.ArrayLike,
    ks: Sequence[int] = (1, 2, 5, 10, 20),
    *,
    train: npt.ArrayLike | None = None,
    train_fraction: float = 0.8,
    l2: float = 1e-3,
    n_steps: int = 25,
    min_class: int = 5,
) -> ProbeResult:
    """k-sparse probes of every label, for every k (module docstring).

    Args:
        x: activations or SAE latents, shape (n, d) (float; float64 stays float64 under x64).
        labels: bool array (n, n_labels) (or (n,) for one label).
        ks: the k values (each >= 1; clipped to d).
        train: bool mask (n,) of train rows; None: the first `train_fraction` of the rows (rows in
            corpus order, so held-out rows are later text, not neighbours of train rows).
        train_fraction: in (0, 1), used when `train` is None.
        l2: the logistic regression's penalty on standardised weights.
        n_steps: Newton steps per fit.
        min_class: a label needs at least this many positives AND negatives in both splits,
            else its scores are NaN.

    Returns:
        A `ProbeResult` of NumPy arrays.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    y = np.asarray(labels, dtype=bool)
    y = y[:, None] if y.ndim == 1 else y
    if x.ndim != 2 or y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (n, d) and labels (n, n_labels) with the same n, got {x.shape} and {y.shape}")
    n, d = x.shape
    if any(int(k) < 1 for k in ks) or not ks:
        raise ValueError(f"ks must be a non-empty list of integers >= 1, got {tuple(ks)}")
    if train is None:
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        train_mask = np.arange(n) < int(round(train_fraction * n))
    else:
        train_mask = np.asarray(train, dtype=bool).reshape(-1)
        if train_mask.shape != (n,):
            raise ValueError(f"train must be a bool mask of shape ({n},), got {train_mask.shape}")
    ks_clipped = tuple(min(int(k), d) for k in ks)
    pos_train = (y & train_mask[:, None]).sum(0)
    pos_test = (y & ~train_mask[:, None]).sum(0)
    neg_train = train_mask.sum() - pos_train
    neg_test = (~train_mask).sum() - pos_test
    ok = np.minimum(np.minimum(pos_train, pos_test), np.minimum(neg_train, neg_test)) >= min_class
    accuracy = np.full((len(ks_clipped), y.shape[1]), np.nan)
    balanced = np.full_like(accuracy, np.nan)
    units = np.full((len(ks_clipped), y.shape[1], max(ks_clipped)), -1, dtype=np.int64)
    if ok.any():
        acc, bal, chosen = _probe(x, jnp.asarray(y[:, ok]), jnp.asarray(train_mask), jnp.asarray(ks_clipped, jnp.int32),
                                  k_max=max(ks_clipped), l2=jnp.asarray(l2, x.dtype), n_steps=n_steps)
        accuracy[:, ok], balanced[:, ok] = np.asarray(acc), np.asarray(bal)
        chosen = np.asarray(chosen)
        for i, k in enumerate(ks_clipped):
            units[i, ok, :k] = chosen[:, :k]
    return ProbeResult(ks_clipped, accuracy, balanced, units, pos_train, pos_test)
