"""Matching the features of two dictionaries: are two SAEs (or two models) made of the same features?

Two ways to say that feature i of dictionary A is feature j of dictionary B:

* by decoder direction — cos(d_i^A, d_j^B) between decoder columns. Only meaningful when both
  dictionaries live in the same activation space (SAEs of one model's activations);
* by activation — the Pearson correlation over the same inputs of f_i^A and f_j^B. This needs
  no shared basis, so it also compares SAEs of different models (different neurons) or a model's
  neurons with another's (Bricken et al., 2023, "universality").

A similarity matrix S (n_a, n_b) is turned into a one-to-one matching by the Hungarian algorithm
(maximising Σ S over matched pairs, `sae.metrics.linear_sum_assignment`); each feature of A then
has one matched similarity, NaN when it has no partner (n_a > n_b). `max_similarity` is the
many-to-one alternative (each feature of A takes its best partner in B, as in MMCS). The
*shared fraction* at threshold t is the share of A's features whose matched similarity is ≥ t
(an unmatched feature is never shared).

Everything here is host-side NumPy analysis; similarities are float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from superpos_jax.sae.metrics import linear_sum_assignment

__all__ = [
    "Matching",
    "activation_correlations",
    "decoder_cosines",
    "hungarian_match",
    "max_similarity",
    "random_directions",
    "shared_fraction",
]

_TINY = 1e-12


class Matching(NamedTuple):
    """A one-to-one matching of A's features to B's.

    Attributes:
        rows, cols: int64 (min(n_a, n_b),) matched pairs (A's feature rows[k] ↔ B's cols[k]),
            rows ascending.
        similarity: float64 (n_a,), each A feature's similarity to its partner; NaN when it has none.
        partner: int64 (n_a,), each A feature's partner in B; −1 when it has none.
    """

    rows: np.ndarray
    cols: np.ndarray
    similarity: np.ndarray
    partner: np.ndarray


def decoder_cosines(decoder_a: npt.ArrayLike, decoder_b: npt.ArrayLike) -> np.ndarray:
    """cos(d_i^A, d_j^B) between decoder columns (a zero column gives 0).

    Args:
        decoder_a: (d_in, n_a), one column per latent.
        decoder_b: (d_in, n_b).

    Returns:
        float64 (n_a, n_b).
    """
    a, b = np.asarray(decoder_a, np.float64), np.asarray(decoder_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need decoders (d_in, n_a) and (d_in, n_b) of one d_in; got {a.shape} and {b.shape}")
    a = a / np.maximum(np.linalg.norm(a, axis=0, keepdims=True), _TINY)
    b = b / np.maximum(np.linalg.norm(b, axis=0, keepdims=True), _TINY)
    return a.T @ b


def _standardise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64)
    centred = f - f.mean(axis=0, keepdims=True)
    norm = np.linalg.norm(centred, axis=0, keepdims=True)
    # a constant (e.g. dead) latent has no correlation with anything: its column becomes 0
    scale = np.where(norm > _TINY * np.sqrt(f.shape[0]), 1.0 / np.maximum(norm, _TINY), 0.0)
    return (centred * scale).astype(np.float32)


def activation_correlations(acts_a: npt.ArrayLike, acts_b: npt.ArrayLike) -> np.ndarray:
    """Pearson correlation of every A feature's activations with every B feature's over the same
    inputs (rows); a feature that is constant on them (dead) correlates 0 with everything.

    Args:
        acts_a: (rows, n_a) activations of A's features (SAE latents, or neurons).
        acts_b: (rows, n_b) activations of B's features on the same rows.

    Returns:
        float64 (n_a, n_b) in [−1, 1] (centred in float64, the product in float32: errors ~1e-5).
    """
    a, b = np.asarray(acts_a), np.asarray(acts_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need activations (rows, n_a) and (rows, n_b) on the same rows; got {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to correlate, got {a.shape[0]}")
    corr = (_standardise(a).T @ _standardise(b)).astype(np.float64)
    return np.clip(corr, -1.0, 1.0)


def hungarian_match(similarity: npt.ArrayLike) -> Matching:
    """The one-to-one matching of A's features (rows) to B's (columns) maximising the total similarity.

    Args:
        similarity: (n_a, n_b) finite similarities (e.g. `decoder_cosines`, `activation_correlations`).

    Returns:
        The `Matching`; its `similarity` is NaN and `partner` −1 for the n_a − n_b unmatched
        features of A when n_a > n_b.
    """
    s = np.asarray(similarity, np.float64)
    if s.ndim != 2:
        raise ValueError(f"similarity must be 2-D (n_a, n_b), got shape {s.shape}")
    rows, cols = linear_sum_assignment(s, maximize=True)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    matched = np.full(s.shape[0], np.nan)
    partner = np.full(s.shape[0], -1, np.int64)
    matched[rows] = s[rows, cols]
    partner[rows] = cols
    return Matching(rows, cols, matched, partner)


def max_similarity(similarity: npt.ArrayLike) -> np.ndarray:
    """Each A feature's best similarity to any B feature (many-to-one): float64 (n_a,)."""
    s = np.asarray(similarity, np.float64)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"similarity must be 2-D (n_a, n_b) with n_b >= 1, got shape {s.shape}")
    return s.max(axis=1)


def shared_fraction(matched: npt.ArrayLike, thresholds: npt.ArrayLike | Sequence[float]) -> np.ndarray:
    """Share of features whose matched similarity is ≥ each threshold (NaN: unmatched, never shared).

    Args:
        matched: (n,) matched similarities (`Matching.similarity` or `max_similarity`).
        thresholds: (t,) thresholds.

    Returns:
        float64 (t,), non-increasing in the threshold.
    """
    m = np.asarray(matched, np.float64).reshape(-1)
    t = np.asarray(thresholds, np.float64).reshape(-1)
    if m.size == 0:
        raise ValueError("matched must hold at least one feature")
    ok = np.where(np.isnan(m), -np.inf, m)
    return np.mean(ok[None, :] >= t[:, None], axis=1)


def random_directions(d_in: int, n: int, *, seed: int) -> np.ndarray:
    """A control dictionary: n isotropic random unit directions in d_in dimensions, (d_in, n) float64."""
    if d_in < 1 or n < 1:
        raise ValueError(f"d_in and n must be >= 1, got {d_in} and {n}")
    g = np.random.default_rng(seed).standard_normal((d_in, n))
    return g / np.linalg.norm(g, axis=0, keepdims=True)
