"""LEACE: least-squares linear concept erasure in closed form (Belrose et al., 2023).

Given activations X ∈ R^d and a concept Z ∈ R^k (class labels become one-hot), with
Σ_XX = Cov(X), Σ_XZ = Cov(X, Z), whitening W = (Σ_XX^{1/2})⁺ and P the orthogonal projection onto
colspace(W Σ_XZ), the eraser

    r(x) = x − W⁺ P W (x − μ),        μ = E[X],

makes Cov(r(X), Z) = 0 — so no linear predictor of Z from r(X) beats a constant under any convex
loss — while minimising E‖r(X) − X‖² among all affine erasers with that property. r is
idempotent.

Numerics: `fit_leace` runs on the host in float64 NumPy (eigendecomposition of Σ_XX, SVD of
W Σ_XZ), then stores float32 arrays. Eigenvalues of Σ_XX at or below `rtol · λ_max` are treated as
zero (the pseudo-inverse square root), so rank-deficient activations are fine. With
P = U Uᵀ (U: d × r orthonormal, r = rank of W Σ_XZ) the eraser is stored in low-rank form,
r(x) = x − ((x − μ) · W U) (W⁺ U)ᵀ, i.e. two (d, r) matrices.

`LeaceEraser` is an `eqx.Module` whose `__call__` acts on the last axis of any (..., d) array,
so it serves directly as an activation hook (e.g. on a (batch, pos, d) residual stream); its
arrays are leaves, so jit/vmap/grad trace through it.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Shaped

__all__ = ["LeaceEraser", "apply", "fit_leace"]


class LeaceEraser(eqx.Module):
    """The affine map r(x) = x − ((x − μ) · `right`) · `left`ᵀ fitted by `fit_leace`.

    Attributes:
        mean: (d,) μ, the activation mean.
        right: (d, r) W U (whitening, then the concept directions).
        left: (d, r) W⁺ U (back to activation space).
    """

    mean: Float[Array, " d"]
    right: Float[Array, "d r"]
    left: Float[Array, "d r"]

    @property
    def rank(self) -> int:
        """r = rank of W Σ_XZ: the number of directions erased (≤ k, ≤ k − 1 for k classes)."""
        return self.right.shape[1]

    def __call__(self, activation: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """Erase the concept from (..., d) activations; returns the same shape and dtype."""
        return apply(self, activation)


def apply(eraser: LeaceEraser, x: Float[ArrayLike, "*batch d"]) -> Float[Array, "*batch d"]:
    """r(x) on the last axis of `x` (any leading shape); computed in x's (JAX) dtype."""
    x = jnp.asarray(x)
    dtype = x.dtype
    centred = x - eraser.mean.astype(dtype).reshape((1,) * (x.ndim - 1) + (-1,))
    coeff = centred @ eraser.right.astype(dtype)
    return x - coeff @ eraser.left.astype(dtype).T


def fit_leace(
    x: Float[ArrayLike, "n d"],
    z: Shaped[ArrayLike, " n"] | Float[ArrayLike, "n k"],
    *,
    rtol: float = 1e-8,
) -> LeaceEraser:
    """Fit the LEACE eraser of concept `z` from samples of activations `x` (host, float64).

    Args:
        x: (n, d) activations.
        z: (n,) integer class labels (one-hot encoded over the labels present, in sorted
            order), or (n, k) one-hot / continuous concept values.
        rtol: eigenvalues of Σ_XX ≤ rtol · λ_max, and singular values of W Σ_XZ ≤
            max(rtol, d · eps) · σ_max, count as zero.

    Returns:
        a `LeaceEraser` with float32 arrays.
    """
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim != 2:
        raise ValueError(f"x must be 2-D (n, d), got shape {x64.shape}")
    z_arr = np.asarray(z)
    if z_arr.ndim == 1:
        if not (np.issubdtype(z_arr.dtype, np.integer) or z_arr.dtype == np.bool_):
            raise TypeError(f"1-D z must hold integer class labels, got dtype {z_arr.dtype}")
        labels = np.unique(z_arr)
        z64 = (z_arr[:, None] == labels[None, :]).astype(np.float64)
    elif z_arr.ndim == 2:
        z64 = z_arr.astype(np.float64)
    else:
        raise ValueError(f"z must be (n,) labels or (n, k) values, got shape {z_arr.shape}")
    n, d = x64.shape
    if z64.shape[0] != n:
        raise ValueError(f"x has {n} rows but z has {z64.shape[0]}")
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    if not (np.isfinite(x64).all() and np.isfinite(z64).all()):
        raise ValueError("x and z must be finite")

    mean = x64.mean(axis=0)
    xc = x64 - mean
    zc = z64 - z64.mean(axis=0)
    sigma_xx = xc.T @ xc / n
    sigma_xz = xc.T @ zc / n

    eigval, eigvec = np.linalg.eigh(sigma_xx)
    keep = eigval > rtol * max(float(eigval.max()), 0.0)
    sqrt_val = np.sqrt(np.where(keep, eigval, 1.0))
    whiten = (eigvec * np.where(keep, 1.0 / sqrt_val, 0.0)) @ eigvec.T
    unwhiten = (eigvec * np.where(keep, sqrt_val, 0.0)) @ eigvec.T

    u, s, _ = np.linalg.svd(whiten @ sigma_xz, full_matrices=False)
    tol = max(rtol, d * np.finfo(np.float64).eps) * (float(s.max()) if s.size else 0.0)
    basis = u[:, s > tol] if s.size and s.max() > 0 else np.zeros((d, 0))
    return LeaceEraser(
        mean=jnp.asarray(mean, jnp.float32),
        right=jnp.asarray(whiten @ basis, jnp.float32),
        left=jnp.asarray(unwhiten @ basis, jnp.float32),
    )
