"""The paper's 2-D feature diagrams: each feature's column W_i drawn as a line from the
origin of the hidden plane, optionally with WᵀW under each diagram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from superpos_jax.plots.base import colormap, new_figure
from superpos_jax.toy.geometry import project_to_plane


_IMPORTANCE_CMAP = "viridis_r"


def importance_colors(importance: np.ndarray) -> np.ndarray:
    """RGBA colours (n_features, 4) by importance: dark = most important, light = least."""
    importance = np.asarray(importance, np.float64)
    return colormap(_IMPORTANCE_CMAP)(_importance_norm(importance)(importance))


def _importance_norm(importance: np.ndarray) -> colors.Normalize:
    lo, hi = (float(importance.min()), float(importance.max())) if importance.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = hi - 1.0, hi
    return colors.Normalize(lo, hi)


def pair_colors(n_features: int, cmap: str = "tab10") -> np.ndarray:
    """RGBA colours (n_features, 4): features 2k and 2k+1 share colour k."""
    return colormap(cmap)(np.arange(n_features) // 2 % 10)


def _tip_groups(points: np.ndarray, radius: float = 0.12) -> list[np.ndarray]:
    """Indices of features grouped by tips closer than `radius` (one label per group)."""
    left = list(range(points.shape[1]))
    groups = []
    while left:
        i = left.pop(0)
        near = [j for j in left if np.hypot(*(points[:, i] - points[:, j])) < radius]
        left = [j for j in left if j not in near]
        groups.append(np.asarray([i, *near]))
    return groups


def feature_diagrams(
    weights: np.ndarray,
    *,
    colors_: np.ndarray | None = None,
    linestyles: Sequence[Sequence[str]] | None = None,
    mask: np.ndarray | None = None,
    feature_labels: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    notes: Sequence[Sequence[str]] | None = None,
    gram: bool = True,
    importance: np.ndarray | None = None,
    legend: Sequence[tuple[str, object, str]] | None = None,
    title: str | None = None,
) -> Figure:
    """A grid of 2-D feature diagrams (the paper's pictures of superposition geometry).

    Panel (r, c) shows the hidden plane with a faint unit circle; feature i is a line from
    the origin to W_i with a dot at its tip and its index beside it. Under each diagram,
    with `gram`, the matrix WᵀW of the drawn features (RdBu, ±1).

    Args:
        weights: W of shape (rows, cols, d_hidden, n_features); d_hidden > 2 is shown in
            the plane of W's two leading singular directions (noted in the panel).
        colors_: RGBA per feature, (n_features, 4) or per row (rows, n_features, 4);
            default: by `importance` if given, else by feature index.
        linestyles: per row, per feature matplotlib line styles (default solid).
        mask: bool (n_features,) or (rows, n_features): which features exist (default all);
            the others are neither drawn nor put in WᵀW.
        feature_labels: per row, per feature text at the tips (default the index).
        row_labels, col_labels: text left of each row / above each column.
        notes: (rows, cols) text under each column title (e.g. the geometry label).
        gram: draw WᵀW under every diagram.
        importance: (n_features,) importances; adds an importance colour bar and, without
            `colors_`, colours features by it.
        legend: optional (label, colour, linestyle) entries for a figure legend.
        title: figure title.
    """
    weights = np.asarray(weights, np.float64)
    n_rows, n_cols, _, n_features = weights.shape
    if colors_ is None:
        colors_ = importance_colors(importance) if importance is not None else colormap("tab10")(np.arange(n_features) % 10)
    colors_ = np.broadcast_to(np.asarray(colors_), (n_rows, n_features, 4))
    mask = np.ones(n_features, bool) if mask is None else np.asarray(mask, bool)
    mask = np.broadcast_to(mask, (n_rows, n_features))

    panel = 2.15  # inches per diagram
    gram_h = 0.42 * panel if gram else 0.0
    head = 0.85 + (0.3 if title else 0.0)  # column titles (up to 3 lines) and the figure title
    row_h = panel + gram_h + 0.75  # diagram, WᵀW, the next row's titles
    right = 1.1 if importance is not None else (0.6 if gram else 0.15)
    width = max(6.5, panel * n_cols + 0.25 * (n_cols - 1) + (0.5 if row_labels else 0.15) + right)
    legend_cols = max(1, min(len(legend or ()), int(width // 2.4)))
    foot = 0.15 + 0.22 * -(-len(legend) // legend_cols) if legend else 0.12
    height = head + foot + row_h * n_rows - 0.75
    fig = new_figure((width, height))
    outer = fig.add_gridspec(
        n_rows, n_cols, left=(0.5 if row_labels else 0.15) / width,
        right=1 - right / width,
        top=1 - head / height, bottom=foot / height, wspace=0.25 / panel, hspace=0.75 / (panel + gram_h),
    )
    axes = np.empty((n_rows, n_cols), object)
    gram_axes = np.empty((n_rows, n_cols), object)
    for r in range(n_rows):
        for c in range(n_cols):
            if gram:
                inner = outer[r, c].subgridspec(2, 1, height_ratios=[panel, gram_h], hspace=0.06)
                axes[r, c] = fig.add_subplot(inner[0])
                gram_axes[r, c] = fig.add_subplot(inner[1])
            else:
                axes[r, c] = fig.add_subplot(outer[r, c])
    lim = max(1.25, 1.1 * float(np.max(np.linalg.norm(weights, axis=2), initial=0.0)))
    circle = np.linspace(0, 2 * np.pi, 200)
    for r in range(n_rows):
        drawn = np.flatnonzero(mask[r])
        for c in range(n_cols):
            ax = axes[r, c]
            points, projected = project_to_plane(weights[r, c])
            ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=0.8, ls=":")
            ax.axhline(0, color="0.92", lw=0.6, zorder=0)
            ax.axvline(0, color="0.92", lw=0.6, zorder=0)
            order = drawn[np.argsort(-np.linalg.norm(points[:, drawn], axis=0))]  # short lines on top
            for i in order:
                x, y = points[:, i]
                style = linestyles[r][i] if linestyles is not None else "-"
                ax.plot([0, x], [0, y], color=colors_[r, i], lw=2.2, ls=style, solid_capstyle="round")
                if np.hypot(x, y) > 0.05:
                    ax.plot([x], [y], "o", color=colors_[r, i], ms=4.5)
            for group in _tip_groups(points[:, drawn]):
                members = drawn[group]
                x, y = points[:, members].mean(axis=1)
                norm = float(np.hypot(x, y))
                if norm > 0.15:
                    text = ",".join(feature_labels[r][i] if feature_labels is not None else str(i) for i in members)
                    ax.annotate(text, (x, y), xytext=(x + 0.2 * x / norm, y + 0.2 * y / norm),
                                fontsize=7, ha="center", va="center", color="0.25")
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color("0.7")
            if projected:
                ax.text(0.02, 0.02, "top-2 SVD plane", transform=ax.transAxes, fontsize=6, color="0.4")
            head = col_labels[c] if col_labels is not None and r == 0 else ""
            note = notes[r][c] if notes is not None else ""
            ax.set_title("\n".join(t for t in (head, note) if t), fontsize=8)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=9)
            if gram:
                gax = gram_axes[r, c]
                Wd = weights[r, c][:, drawn]
                gax.imshow(Wd.T @ Wd, cmap="RdBu", vmin=-1, vmax=1)
                gax.set_xticks([])
                gax.set_yticks([])
                if c == 0:
                    gax.set_ylabel("WᵀW", fontsize=8)
    if gram:
        gax = fig.add_axes((1 - (right - 0.35) / width, foot / height, 0.1 / width, 0.6 / height))
        fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(-1, 1), cmap="RdBu"), cax=gax, ticks=[-1, 0, 1])
        gax.tick_params(labelsize=6)
        gax.set_title("WᵀW", fontsize=6)
    if importance is not None:
        cax = fig.add_axes((1 - (right - 0.35) / width, 0.45, 0.12 / width, 0.4))
        fig.colorbar(cm.ScalarMappable(norm=_importance_norm(np.asarray(importance)), cmap=_IMPORTANCE_CMAP),
                     cax=cax, label="feature importance")
    if legend:
        handles = [Line2D([0], [0], color=col, ls=ls, lw=2) for _, col, ls in legend]
        fig.legend(handles, [name for name, _, _ in legend], loc="lower center", ncol=legend_cols,
                   fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    return fig
