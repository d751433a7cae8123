"""The feature-geometry figure: dimensions per feature and feature dimensionalities across sparsity.

Top: m / ‖W‖_F² against 1/(1 − S) (log axis), which "sticks" at 1 and at 1/2. Bottom: the
dimensionality D_i of every feature of every model, which clusters at the fractions of small
polytopes (1 dedicated, 3/4 tetrahedron, 2/3 triangle, 1/2 digon, 2/5 pentagon, 3/8 square
antiprism).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from superpos_jax.plots.base import new_figure
from superpos_jax.toy.geometry import fraction_label
from superpos_jax.toy.metrics import REPRESENTED_NORM


def label_levels(ax: Axes, levels: Sequence[float], gap: float = 0.035, fontsize: float | int = 9) -> None:
    """Label horizontal guide lines at `levels` (data y) just outside the right edge of `ax`
    with their fractions, nudging labels closer than `gap` apart."""
    placed: list[float] = []
    for level in sorted(levels, reverse=True):
        y = level
        if placed and placed[-1] - y < gap:
            y = placed[-1] - gap
        placed.append(y)
        ax.text(1.01, y, fraction_label(level), transform=ax.get_yaxis_transform(), va="center", fontsize=fontsize, color="0.35")


def geometry_figure(
    feature_probabilities: np.ndarray,
    dims_per_feature: np.ndarray,
    dimensionality: np.ndarray,
    fractions: Sequence[float],
    *,
    represented: np.ndarray | None = None,
    threshold: float = REPRESENTED_NORM,
    title: str | None = None,
    seed: int = 0,
) -> Figure:
    """The paper's feature-dimensionality figure, two panels sharing the x axis 1/(1 − S).

    Args:
        feature_probabilities: 1 − S per sparsity, shape (n_probabilities,).
        dims_per_feature: m / ‖W‖_F² per model, shape (n_probabilities, n_seeds); drawn as a
            line through the mean over seeds and a dot per seed, with guide lines at 1 and 1/2.
        dimensionality: D_i per feature, shape (n_probabilities, n_seeds, n_features); drawn as
            a scatter (a small horizontal jitter within each column keeps points apart), with a
            labelled horizontal line at each of `fractions`.
        fractions: the fractions to mark in the bottom panel.
        represented: optional bool mask like `dimensionality` (‖W_i‖ > `threshold`); when
            given, represented features are drawn in blue and the others in grey.
        seed: seed of the jitter (the figure is deterministic).
    """
    p = np.asarray(feature_probabilities, np.float64)
    dpf = np.asarray(dims_per_feature, np.float64)
    D = np.asarray(dimensionality, np.float64)
    x = 1.0 / p
    fig = new_figure((8, 7.5), constrained=True)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.5]})
    for level in (1.0, 0.5):
        top.axhline(level, color="0.6", lw=1, ls="--", zorder=0)
    label_levels(top, (1.0, 0.5))
    top.plot(x, dpf.mean(axis=1), color="black", lw=1.5, zorder=2)
    top.scatter(np.repeat(x, dpf.shape[1]), dpf.ravel(), s=10, color="black", alpha=0.5, zorder=3)
    top.set_ylabel("dimensions per feature\n" r"$m\,/\,\|W\|_F^2$")
    top.set_ylim(0, max(1.1, float(np.nanmax(dpf)) * 1.05))

    rng = np.random.default_rng(seed)
    step = np.median(np.abs(np.diff(np.log(x)))) if x.size > 1 else 0.1
    jitter = np.exp(rng.uniform(-0.3, 0.3, D.shape) * step)
    xs = (x[:, None, None] * jitter).ravel()
    for f in fractions:
        bottom.axhline(f, color="0.6", lw=0.8, zorder=0)
    label_levels(bottom, fractions)
    if represented is None:
        bottom.scatter(xs, D.ravel(), s=5, color="#3b4cc0", alpha=0.3, linewidths=0, zorder=2)
    else:
        kept = np.asarray(represented, bool).ravel()
        bottom.scatter(xs[~kept], D.ravel()[~kept], s=4, color="0.55", alpha=0.25, linewidths=0, zorder=1,
                       label=f"not represented (‖W_i‖ ≤ {threshold:g})")
        bottom.scatter(xs[kept], D.ravel()[kept], s=5, color="#3b4cc0", alpha=0.35, linewidths=0, zorder=2,
                       label=f"represented (‖W_i‖ > {threshold:g})")
        bottom.legend(loc="upper right", fontsize=8, markerscale=3, framealpha=0.9)
    bottom.set_ylim(-0.03, 1.08)
    bottom.set_ylabel(r"feature dimensionality $D_i$")
    bottom.set_xscale("log")
    bottom.set_xlabel("1 / (1 − S)   (inverse feature probability)")
    bottom.set_xlim(x.min() / 1.1, x.max() * 1.1)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
