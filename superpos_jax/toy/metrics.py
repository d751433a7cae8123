"""Superposition metrics of a toy model's embedding W (one instance; vmap for a sweep).

W has shape (d_hidden, n_features); its column W_i is feature i's direction in the hidden
space. Definitions follow *Toy Models of Superposition*:

* feature norm ‖W_i‖; a feature is *represented* when ‖W_i‖ > `REPRESENTED_NORM` (0.5).
* superposition of feature i: Σ_{j≠i} (Ŵ_i · W_j)² with Ŵ_i = W_i / ‖W_i‖. The paper's
  figures colour by its square root, which `superposition(..., sqrt=True)` returns.
* feature dimensionality D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)² (j over all features, i included).
* dimensions per feature: d_hidden / ‖W‖_F².
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

_TINY = 1e-12

REPRESENTED_NORM: float = 0.5
"""A feature is represented when ‖W_i‖ exceeds this (the paper's convention; learned
features reach ≈ 1, unlearned ones keep residual weights ≈ 0.1–0.3)."""


def feature_norms(W: Float[ArrayLike, "hidden feature"]) -> Float[Array, " feature"]:
    """‖W_i‖ for every feature."""
    W = jnp.asarray(W)
    return jnp.sqrt(jnp.sum(W * W, axis=0))


def _overlaps(W: Float[ArrayLike, "hidden feature"]) -> Float[Array, "feature feature"]:
    """(Ŵ_i · W_j)² with i along rows; rows of unlearned (zero) features are zero."""
    W = jnp.asarray(W)
    norms = feature_norms(W)
    unit = W / jnp.maximum(norms, _TINY)[None, :]
    return jnp.square(unit.T @ W)


def superposition(W: Float[ArrayLike, "hidden feature"], *, sqrt: bool = False) -> Float[Array, " feature"]:
    """Σ_{j≠i} (Ŵ_i · W_j)² per feature (its square root with `sqrt=True`)."""
    overlaps = _overlaps(W)
    value = jnp.sum(overlaps, axis=1) - jnp.diagonal(overlaps)
    value = jnp.maximum(value, 0.0)
    return jnp.sqrt(value) if sqrt else value


def feature_dimensionality(W: Float[ArrayLike, "hidden feature"]) -> Float[Array, " feature"]:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i · W_j)²; 0 for a feature that is not learned at all."""
    W = jnp.asarray(W)
    norms_sq = jnp.sum(W * W, axis=0)
    denom = jnp.sum(_overlaps(W), axis=1)
    return jnp.where(denom > _TINY, norms_sq / jnp.maximum(denom, _TINY), 0.0)


def dimensions_per_feature(W: Float[ArrayLike, "hidden feature"]) -> Scalar:
    """d_hidden / ‖W‖_F²: 1 with one dedicated dimension each, 1/2 for antipodal pairs, ..."""
    W = jnp.asarray(W)
    return W.shape[0] / jnp.maximum(jnp.sum(W * W), _TINY)


def n_represented(W: Float[ArrayLike, "hidden feature"], threshold: float = REPRESENTED_NORM) -> Int[Array, ""]:
    """Number of features with ‖W_i‖ > threshold."""
    return jnp.sum(feature_norms(W) > threshold)


def represented_dimensionality(
    W: Float[ArrayLike, "hidden feature"], threshold: float = REPRESENTED_NORM
) -> Float[Array, " feature"]:
    """D_i computed as if the features with ‖W_j‖ ≤ `threshold` were exactly zero: the
    geometry of the represented features alone (0 for the others). Unrepresented features
    keep small residual weights that otherwise pull a dedicated feature's D_i below 1.
    """
    W = jnp.asarray(W)
    kept = feature_norms(W) > threshold
    return feature_dimensionality(jnp.where(kept[None, :], W, 0.0))
