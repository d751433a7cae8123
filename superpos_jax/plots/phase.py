"""Phase diagrams of an extra feature: trained models beside the theory, paper style."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from matplotlib import colors
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from superpos_jax.plots.base import new_figure

PHASE_COLOURS: tuple[str, ...] = ("#d9d9d9", "#3b6fb6", "#e0703a")


def _log_edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges of log-spaced centres: geometric midpoints, extended by half a step at the ends."""
    c = np.log(np.asarray(centres, np.float64))
    if c.size == 1:
        return np.exp(np.array([c[0] - 0.5, c[0] + 0.5]))
    mid = 0.5 * (c[1:] + c[:-1])
    return np.exp(np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]]))


def phase_diagram_figure(
    empirical: np.ndarray,
    theory: np.ndarray,
    relative_importance: npt.ArrayLike,
    feature_probability: npt.ArrayLike,
    *,
    phase_names: Sequence[str],
    title: str | None = None,
    panel_titles: tuple[str, str] = ("trained models", "theory"),
) -> Figure:
    """Two phase diagrams side by side: relative importance r of the extra feature on the
    x-axis, feature density 1 − S on the y-axis (both log), one colour per phase.

    Cells where the two diagrams disagree are marked with a cross in both panels.

    Args:
        empirical, theory: phase index per cell, shape (n_density, n_importance), values in
            range(len(phase_names)).
        relative_importance: the cell centres along x, length n_importance (log spaced).
        feature_probability: the cell centres along y, length n_density (log spaced).
        phase_names: legend labels of the phases, in index order.
    """
    empirical = np.asarray(empirical)
    theory = np.asarray(theory)
    x_edges = _log_edges(np.asarray(relative_importance))
    y_edges = _log_edges(np.asarray(feature_probability))
    cmap = colors.ListedColormap(list(PHASE_COLOURS[: len(phase_names)]))
    norm = colors.BoundaryNorm(np.arange(len(phase_names) + 1) - 0.5, cmap.N)
    disagree = empirical != theory
    X, Y = np.meshgrid(np.asarray(relative_importance), np.asarray(feature_probability))

    fig = new_figure((10.5, 4.9), constrained=True)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, grid, label in zip(axes, (empirical, theory), panel_titles):
        thin = grid.size > 500  # cell borders would crowd out the cells of a large grid
        ax.pcolormesh(x_edges, y_edges, grid, cmap=cmap, norm=norm, edgecolors="face" if thin else "white", linewidth=0.3)
        if disagree.any():
            ax.scatter(X[disagree], Y[disagree], s=14, c="k", marker="x", linewidths=0.9)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_edges[0], x_edges[-1])
        ax.set_ylim(y_edges[0], y_edges[-1])
        ax.set_xlabel("relative importance r of the extra feature")
        ax.set_title(label)
    axes[0].set_ylabel("feature density 1 − S")
    handles = [Patch(facecolor=c, label=f"extra feature: {n}") for c, n in zip(PHASE_COLOURS, phase_names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(phase_names), frameon=False)
    if title:
        fig.suptitle(title)
    return fig
