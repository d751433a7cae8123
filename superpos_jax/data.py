"""Feature samplers and importance schedules.

Conventions, used throughout the library:

* **Sparsity** is given as the *feature probability* p = 1 − S: the probability that a
  feature is non-zero in an example. It may differ per instance and per feature.
* **Examples are columns.** A batch is an array of shape `(n_features, batch)`, so a toy
  model computes `h = W @ x` exactly as written in the paper. Keeping the batch on the
  minor axis is also what makes the tiny matmuls of toy models fast on CPU.
* A present feature has magnitude U[0, 1] (U[−1, 1] with `signed=True`, the
  absolute-value task).

One uniform per element suffices: with u ~ U[0, 1), the feature is present iff u < p, and
conditioned on that, u / p ~ U[0, 1). All samplers are pure functions of `(key, hparams)`.
"""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from superpos_jax.prng import Generator, uniform


def geometric_importance(n_features: int, base: float) -> Float[np.ndarray, " feature"]:
    """Importance `base**i` for i = 0 … n_features − 1 (the paper's 0.7**i, 0.9**i, …)."""
    _check_positive_int("n_features", n_features)
    if not base > 0:
        raise ValueError(f"importance base must be > 0, got {base}")
    return np.power(float(base), np.arange(n_features)).astype(np.float32)


def uniform_importance(n_features: int) -> Float[np.ndarray, " feature"]:
    """Importance 1 for every feature."""
    _check_positive_int("n_features", n_features)
    return np.ones(n_features, np.float32)


def explicit_importance(values: npt.ArrayLike) -> Float[np.ndarray, " feature"]:
    """An importance vector given value by value; must be finite and non-negative."""
    arr = np.asarray(values, np.float32)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"importance must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"importance must be finite and >= 0, got {arr.tolist()}")
    return arr


def check_feature_probability(p: npt.ArrayLike, name: str = "feature_probability") -> np.ndarray:
    """Host-side validation: every probability must lie in [0, 1]. Returns a float32 array."""
    arr = np.asarray(p, np.float32)
    bad = ~((arr >= 0) & (arr <= 1))
    if np.any(bad):
        raise ValueError(
            f"{name} must lie in [0, 1] (it is 1 - sparsity); got {arr[bad].tolist()}"
        )
    return arr


def sample_features(
    key: PRNGKeyArray,
    feature_probability: Float[ArrayLike, "*feature"],
    n_features: int,
    batch_size: int,
    *,
    signed: bool = False,
    generator: Generator = "hash",
) -> Float[Array, "feature batch"]:
    """Draw a batch of sparse feature vectors for one instance.

    Args:
        key: PRNG key for this instance and step.
        feature_probability: probability 1 − S that each feature is present; a scalar or
            one value per feature (shape `(n_features,)`).
        n_features: number of features n.
        batch_size: number of examples.
        signed: magnitudes U[−1, 1] instead of U[0, 1].
        generator: "hash" (fast counter-based, default) or "threefry".

    Returns:
        x of shape `(n_features, batch_size)`; column b is one example.
    """
    p = jnp.asarray(feature_probability, jnp.float32)
    p = jnp.broadcast_to(p, (n_features,))[:, None]
    u = uniform(key, (n_features, batch_size), generator)
    # Guard p = 0: never present, and avoid 0 * inf.
    inv_p = jnp.where(p > 0, 1.0 / jnp.maximum(p, np.float32(1e-30)), 0.0)
    magnitude = u * inv_p
    if signed:
        magnitude = 2.0 * magnitude - 1.0
    return jnp.where(u < p, magnitude, 0.0)


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
