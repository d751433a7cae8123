"""Naming the geometry of a trained toy model's features (host NumPy, one instance).

`classify_geometry` names the arrangement of the represented features of W
(d_hidden, n_features) — "orthogonal pair", "two antipodal pairs", "pentagon", ...;
`project_to_plane` gives W's coordinates in its leading 2-D plane. `nearest_fraction` and
`fraction_counts` place feature dimensionalities D_i at the fractions of small polytopes
(1, 3/4, 2/3, 1/2, 2/5, 3/8), labelled by `fraction_label`.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from superpos_jax.toy.metrics import REPRESENTED_NORM

NOT_LEARNED = "0"
"""`nearest_fraction`'s label of a dimensionality near 0 (a feature the model does not learn)."""
OTHER = "other"
"""`nearest_fraction`'s label of a dimensionality near none of the fractions."""

_POLYGONS = {3: "triangle", 4: "two antipodal pairs", 5: "pentagon", 6: "hexagon", 7: "heptagon", 8: "octagon"}
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


def project_to_plane(W: npt.ArrayLike) -> tuple[np.ndarray, bool]:
    """W (d_hidden, n_features) as 2-D points.

    Returns:
        (points, projected): points (2, n_features) are W itself when d_hidden = 2
        (zero-padded when d_hidden = 1), else W's coordinates in the plane of its two leading
        left singular vectors; `projected` says which.
    """
    W = np.asarray(W, np.float64)
    if W.shape[0] == 2:
        return W, False
    if W.shape[0] == 1:
        return np.concatenate([W, np.zeros_like(W)]), False
    u, _, _ = np.linalg.svd(W, full_matrices=False)
    return u[:, :2].T @ W, True


def classify_geometry(W: npt.ArrayLike, threshold: float = REPRESENTED_NORM, *, tolerance_deg: float = 12.0) -> str:
    """A name for the arrangement of the represented features (‖W_i‖ > threshold) of W
    (d_hidden, n_features), read off their cosines.

    Features whose directions agree (cos > 0.9) are first merged into one direction
    ("collapsed"). The directions are then named, first match wins:
    "orthogonal pair" / "k orthogonal features" (all |cos| < 0.25); a regular polygon
    ("triangle", "pentagon", "hexagon", ...; the square is "two antipodal pairs") when they
    lie in a plane with equal angular gaps (within `tolerance_deg`); "antipodal pair" /
    "two antipodal pairs" (each direction has exactly one partner with cos < −0.9);
    "a antipodal pair(s) + d orthogonal feature(s)" (the unpartnered ones orthogonal to
    all); "pair at θ°"; else "k features, irregular". Collapsed directions add
    " (c collapsed)"; with nothing represented the name is "nothing represented".
    """
    W = np.asarray(W, np.float64)
    norms = np.linalg.norm(W, axis=0)
    rep = np.flatnonzero(norms > threshold)
    if rep.size == 0:
        return "nothing represented"
    unit = W[:, rep] / norms[rep]
    cos = unit.T @ unit
    directions: list[int] = []
    merged = 0
    for i in range(rep.size):
        if any(cos[i, j] > 0.9 for j in directions):
            merged += 1
        else:
            directions.append(i)
    suffix = f" ({merged} collapsed)" if merged else ""
    C = cos[np.ix_(directions, directions)]
    k = len(directions)
    off = np.abs(C - np.eye(k))
    if k == 1:
        return "one direction" + suffix if merged else "one feature"
    if np.all(off < 0.25):
        return ("orthogonal pair" if k == 2 else f"{k} orthogonal features") + suffix
    if k >= 3:
        points, _ = project_to_plane(unit[:, directions])
        if np.allclose(np.linalg.norm(points, axis=0), 1.0, atol=0.05):
            angles = np.sort(np.degrees(np.arctan2(points[1], points[0])))
            gaps = np.diff(np.concatenate([angles, angles[:1] + 360.0]))
            if np.all(np.abs(gaps - 360.0 / k) < tolerance_deg):
                return _POLYGONS.get(k, f"regular {k}-gon") + suffix
    anti = C < -0.9
    n_partners = anti.sum(axis=1)
    if np.all(n_partners == 1):
        pairs = k // 2
        return ("antipodal pair" if pairs == 1 else f"{_NUMBERS.get(pairs, pairs)} antipodal pairs") + suffix
    alone = n_partners == 0
    if np.all(n_partners <= 1) and np.all(off[alone] < 0.25):
        pairs, n_alone = int(n_partners.sum()) // 2, int(alone.sum())
        return (f"{pairs} antipodal pair{'s' if pairs > 1 else ''} + "
                f"{n_alone} orthogonal feature{'s' if n_alone > 1 else ''}") + suffix
    if k == 2:
        return f"pair at {np.degrees(np.arccos(np.clip(C[0, 1], -1, 1))):.0f}°" + suffix
    return f"{k} features, irregular" + suffix


def fraction_label(value: float) -> str:
    """`0.6667 -> "2/3"`, `1.0 -> "1"`: the fraction with denominator ≤ 12 nearest to `value`."""
    f = Fraction(float(value)).limit_denominator(12)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def nearest_fraction(values: npt.ArrayLike, fractions: Sequence[float], tolerance: float) -> list[str]:
    """Per value (flattened), the `fraction_label` of the nearest of `fractions`, or
    `NOT_LEARNED` when 0 is nearest, if it lies within `tolerance`; else `OTHER`.
    Non-finite values are `OTHER`."""
    values = np.asarray(values, np.float64).ravel()
    targets = np.asarray((*fractions, 0.0), np.float64)
    labels = [fraction_label(f) for f in fractions] + [NOT_LEARNED]
    distance = np.abs(values[:, None] - targets[None, :])
    nearest = np.argmin(np.where(np.isfinite(distance), distance, np.inf), axis=1)
    close = np.take_along_axis(distance, nearest[:, None], axis=1)[:, 0] <= tolerance
    return [labels[k] if c else OTHER for k, c in zip(nearest, close)]


def fraction_counts(values: npt.ArrayLike, fractions: Sequence[float], tolerance: float) -> dict[str, int]:
    """How many finite `values` `nearest_fraction` puts at each fraction, at `NOT_LEARNED` and
    at `OTHER` (keys in that order; non-finite values are not counted)."""
    values = np.asarray(values, np.float64).ravel()
    found = nearest_fraction(values[np.isfinite(values)], fractions, tolerance)
    keys = [fraction_label(f) for f in fractions] + [NOT_LEARNED, OTHER]
    return {k: found.count(k) for k in keys}
