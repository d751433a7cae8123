"""Universality figures: do models trained from different seeds learn the same features?

`shared_fraction_figure`: the share of features with a match above a threshold, against the
threshold, one panel per way of matching. `toy_universality_figure`: for toy models across
sparsity, the share of seed pairs with the same represented features and the same geometry,
and every seed's sorted feature dimensionalities. `similarity_histograms`: the distribution
of matched similarities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

__all__ = ["SharedPanel", "shared_fraction_figure", "similarity_histograms", "toy_universality_figure"]


class SharedPanel(NamedTuple):
    """One panel of `shared_fraction_figure`.

    Attributes:
        title: the panel's title (how features were matched).
        curves: label -> (t,) shared fraction at each threshold (solid lines).
        controls: label -> (t,) the same for a control (dashed grey lines).
    """

    title: str
    curves: Mapping[str, np.ndarray]
    controls: Mapping[str, np.ndarray]


def shared_fraction_figure(thresholds: np.ndarray, panels: Sequence[SharedPanel], *, title: str = "") -> Figure:
    """Shared fraction against threshold, one panel per matching.

    Args:
        thresholds: (t,) similarity thresholds (x axis).
        panels: the panels, left to right.
        title: the figure's title.
    """
    fig = new_figure((4.6 * len(panels), 4.2), constrained=True)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, panel in zip(axes, panels, strict=True):
        colours = colormap("viridis")(np.linspace(0.0, 0.85, max(len(panel.curves), 1)))
        for (label, curve), colour in zip(panel.curves.items(), colours):
            ax.plot(thresholds, curve, color=colour, lw=1.6, label=label)
        greys = np.linspace(0.25, 0.6, max(len(panel.controls), 1))
        for (label, curve), grey in zip(panel.controls.items(), greys):
            ax.plot(thresholds, curve, color=str(grey), lw=1.2, ls="--", label=label)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("threshold on the matched similarity")
        ax.set_xlim(float(np.min(thresholds)), float(np.max(thresholds)))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("fraction of features shared")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def toy_universality_figure(
    feature_probabilities: np.ndarray,
    rows: Sequence[str],
    pair_fractions: Mapping[str, np.ndarray],
    sorted_dimensionality: np.ndarray,
    *,
    title: str = "",
) -> Figure:
    """Recurrence of toy-model geometry across seeds.

    Args:
        feature_probabilities: (p,) 1 − S of each sparsity (x axis: 1/(1 − S), log).
        rows: a label per row of the figure (e.g. model and importance profile).
        pair_fractions: criterion -> (row, p) share of seed pairs meeting it (left column).
        sorted_dimensionality: (row, p, seed, n) each seed's D_i of the represented
            features, sorted descending, 0 for the others (right column: one dot per feature
            and seed, seeds side by side; NaN for unusable seeds).
        title: the figure's title.
    """
    x = 1.0 / np.asarray(feature_probabilities, np.float64)
    n_rows = len(rows)
    fig = new_figure((11.0, 3.0 * n_rows), constrained=True)
    axes = np.asarray(fig.subplots(n_rows, 2, squeeze=False))
    n_seeds = sorted_dimensionality.shape[2]
    seed_colours = colormap("tab10")(np.arange(n_seeds) % 10)
    markers = ("o", "s", "^", "D", "v")
    for r, row in enumerate(rows):
        left, right = axes[r]
        for (name, values), marker in zip(pair_fractions.items(), markers):
            left.plot(x, values[r], marker=marker, lw=1.4, label=name)
        left.set_xscale("log")
        left.set_ylim(-0.03, 1.03)
        left.set_xlabel("1 / (1 − S)")
        left.set_ylabel("fraction of seed pairs")
        left.set_title(f"{row} importance: seed pairs that agree", fontsize=10)
        left.grid(alpha=0.3)
        left.legend(fontsize=7, loc="best")
        spread = 0.06
        for s in range(n_seeds):
            offset = np.exp((s - (n_seeds - 1) / 2) * spread / max(n_seeds - 1, 1))
            dims = sorted_dimensionality[r, :, s, :]  # (p, n)
            xs = np.repeat((x * offset)[:, None], dims.shape[1], axis=1)
            shown = dims > 0
            right.scatter(xs[shown], dims[shown], s=8, color=seed_colours[s], alpha=0.7,
                          label=f"seed {s}" if s < 10 else None)
        right.set_xscale("log")
        right.set_ylim(0.0, 1.08)
        right.set_xlabel("1 / (1 − S)")
        right.set_ylabel("D_i of represented features")
        right.set_title(f"{row} importance: each seed's D_i, side by side", fontsize=10)
        right.grid(alpha=0.3)
        if n_seeds <= 10:
            right.legend(fontsize=6, ncol=2, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def similarity_histograms(groups: Mapping[str, np.ndarray], *, title: str = "", bins: int = 40) -> Figure:
    """Histograms (as fractions of each group's features) of matched similarities.

    Args:
        groups: label -> (n,) matched similarities (NaN, unmatched, left out).
        title: the figure's title.
        bins: bins over [−0.2, 1].
    """
    fig = new_figure((7.0, 4.2), constrained=True)
    ax = fig.subplots()
    edges = np.linspace(-0.2, 1.0, bins + 1)
    colours = colormap("tab10")(np.arange(len(groups)) % 10)
    for (label, values), colour in zip(groups.items(), colours):
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, weights=np.full(v.size, 1.0 / v.size),
                    histtype="step", lw=1.6, color=colour, label=f"{label} (median {np.median(v):.2f})")
    ax.set_xlabel("similarity of each feature to its Hungarian match")
    ax.set_ylabel("fraction of features")
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return fig
