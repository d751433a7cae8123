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
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from superpos_jax.engine.prng import Generator, uniform


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


def check_feature_probability(p: npt.ArrayLike | float, name: str = "feature_probability") -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Correlated and anticorrelated feature pairs ("Superposition and correlated features").

PAIR_KINDS: dict[str, int] = {"independent": 0, "correlated": 1, "anticorrelated": 2}


def pair_kind_codes(kinds: npt.ArrayLike) -> np.ndarray:
    """Integer codes (see `PAIR_KINDS`) of pair-kind names, or validated codes; shape kept.

    Codes are per-instance *data* (int32), so setups with different pair structures train in
    one compiled sweep.
    """
    arr = np.asarray(kinds)
    if arr.dtype.kind in ("U", "S", "O"):
        unknown = sorted({str(k) for k in arr.ravel()} - set(PAIR_KINDS))
        if unknown:
            raise ValueError(f"unknown pair kind(s) {unknown}; choose from {sorted(PAIR_KINDS)}")
        arr = np.vectorize(PAIR_KINDS.__getitem__, otypes=[np.int32])(arr) if arr.size else arr.astype(np.int32)
    codes = np.asarray(arr, np.int32)
    if not np.all(np.isin(codes, list(PAIR_KINDS.values()))):
        raise ValueError(f"pair kind codes must be in {sorted(PAIR_KINDS.values())}, got {codes.ravel().tolist()}")
    return codes


def check_pair_probabilities(
    feature_probability: npt.ArrayLike, pair_kind: npt.ArrayLike
) -> np.ndarray:
    """Host-side validation for `sample_paired_features`: probabilities in [0, 1] and, for
    every anticorrelated pair, p_{2k} + p_{2k+1} <= 1 (its members never fire together).

    Args:
        feature_probability: (..., n_features) per-feature marginal firing rates.
        pair_kind: (..., n_pairs) codes, broadcastable against the leading axes.

    Returns:
        `feature_probability` as float32.
    """
    p = check_feature_probability(feature_probability)
    codes = pair_kind_codes(pair_kind)
    n_pairs = codes.shape[-1]
    if p.ndim == 0 or 2 * n_pairs > p.shape[-1]:
        raise ValueError(
            f"{n_pairs} pairs need at least {2 * n_pairs} features; feature_probability has shape {p.shape}"
        )
    pair_sum = p[..., 0 : 2 * n_pairs : 2] + p[..., 1 : 2 * n_pairs : 2]
    bad = (codes == PAIR_KINDS["anticorrelated"]) & (pair_sum > 1.0 + 1e-6)
    if np.any(bad):
        raise ValueError(
            "anticorrelated pairs need p_first + p_second <= 1 (at most one member fires); "
            f"got pair sums {np.broadcast_to(pair_sum, bad.shape)[bad].tolist()}"
        )
    return p


def sample_paired_features(
    key: PRNGKeyArray,
    feature_probability: Float[ArrayLike, "*feature"],
    pair_kind: Int[ArrayLike, " pair"],
    n_features: int,
    batch_size: int,
    *,
    generator: Generator = "hash",
) -> Float[Array, "feature batch"]:
    """Draw a batch of sparse features organised in pairs, for one instance.

    Features (2k, 2k+1) form pair k for k < n_pairs = `pair_kind.shape[0]`; features from
    2·n_pairs on are independent. Every feature fires with its own marginal probability p_i
    (1 − S) and, when present, has magnitude U[0, 1] drawn independently of everything else.
    The pair kind decides the joint firing of a pair, through one shared uniform v ~ U(0, 1):

    * independent (0): each member fires on its own (as `sample_features`).
    * correlated (1): member i fires iff v < p_i — with equal rates both fire together or
      neither does (co-occurrence probability min(p_{2k}, p_{2k+1})).
    * anticorrelated (2): the first fires iff v < p_{2k}, the second iff
      p_{2k} <= v < p_{2k} + p_{2k+1}: the pair is active with probability p_{2k} + p_{2k+1}
      (needs <= 1, see `check_pair_probabilities`) and then exactly one member fires.

    Args:
        key: PRNG key for this instance and step.
        feature_probability: marginal firing rates, a scalar or shape (n_features,).
        pair_kind: integer codes of shape (n_pairs,) (see `PAIR_KINDS`); traced, so it may
            differ per instance under vmap.
        n_features: number of features n (>= 2·n_pairs).
        batch_size: number of examples.
        generator: "hash" (default) or "threefry".

    Returns:
        x of shape (n_features, batch_size); column b is one example.
    """
    kind = jnp.asarray(pair_kind, jnp.int32)
    n_pairs = kind.shape[0]
    n_paired = 2 * n_pairs
    if n_paired > n_features:
        raise ValueError(f"{n_pairs} pairs need at least {n_paired} features, got n_features={n_features}")
    p = jnp.broadcast_to(jnp.asarray(feature_probability, jnp.float32), (n_features,))
    u = uniform(key, (n_features + n_pairs, batch_size), generator)
    u_feature, v_pair = u[:n_features], u[n_features:]

    inv_p = jnp.where(p > 0, 1.0 / jnp.maximum(p, np.float32(1e-30)), 0.0)[:, None]
    alone_present = u_feature < p[:, None]
    alone_magnitude = u_feature * inv_p

    p_pair = p[:n_paired]
    kind_f = jnp.repeat(kind, 2)
    second = jnp.asarray(np.arange(n_paired) % 2 == 1)
    p_partner = p_pair.reshape(n_pairs, 2)[:, ::-1].reshape(n_paired)
    lower = jnp.where((kind_f == PAIR_KINDS["anticorrelated"]) & second, p_partner, 0.0)[:, None]
    v = jnp.repeat(v_pair, 2, axis=0)
    pair_present = (v >= lower) & (v < lower + p_pair[:, None])
    independent = (kind_f == PAIR_KINDS["independent"])[:, None]
    present_pair = jnp.where(independent, alone_present[:n_paired], pair_present)
    magnitude_pair = jnp.where(independent, alone_magnitude[:n_paired], u_feature[:n_paired])

    present = jnp.concatenate([present_pair, alone_present[n_paired:]], axis=0)
    magnitude = jnp.concatenate([magnitude_pair, alone_magnitude[n_paired:]], axis=0)
    return jnp.where(present, magnitude, 0.0)
