"""Neuron-by-feature figures of models with a privileged basis (ReLU hidden layer, abs model).

A weight matrix W of shape (hidden, feature) maps features to neurons. Two views, as in the
paper: a heatmap of W (neurons down, features across, diverging colours), and the per-neuron
*stack plot* — for every neuron one bar made of its weights stacked as rectangles, height
|W_ki|, coloured by feature i, positive weights above the axis and negative ones below.
A polysemantic neuron is one bar with several colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import cm
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from superpos_jax.plots.base import colormap, new_figure

POLY_SHADE = "#fde7c8"


def feature_colours(n_features: int) -> np.ndarray:
    """One RGBA colour per feature, shape (n_features, 4): categorical up to 20 features,
    otherwise a continuous map in feature (importance) order."""
    if n_features <= 10:
        return colormap("tab10")(np.arange(n_features))
    if n_features <= 20:
        return colormap("tab20")(np.arange(n_features))
    return colormap("turbo")(np.linspace(0.05, 0.95, n_features))


def neuron_order(W: np.ndarray, alive_threshold: float = 0.0) -> np.ndarray:
    """Neurons sorted by their largest-weight feature (most important first), then by the size
    of that weight; neurons with norm ≤ alive_threshold last. W: (hidden, feature)."""
    W = np.asarray(W, np.float64)
    dominant = np.argmax(np.abs(W), axis=1)
    peak = np.max(np.abs(W), axis=1)
    dead = np.linalg.norm(W, axis=1) <= alive_threshold
    return np.lexsort((-peak, dominant, dead))


def weight_heatmap(ax: Axes, W: np.ndarray, order: np.ndarray | None = None, *, vmax: float | None = None) -> None:
    """W (hidden, feature) as an image: neurons down (in `order`), features across, RdBu ±vmax."""
    W = np.asarray(W, np.float64)
    if order is not None:
        W = W[order]
    vmax = float(np.max(np.abs(W))) if vmax is None else vmax
    ax.imshow(W, cmap="RdBu", vmin=-max(vmax, 1e-9), vmax=max(vmax, 1e-9), aspect="auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def neuron_stack(
    ax: Axes,
    W: np.ndarray,
    order: np.ndarray | None = None,
    *,
    colours: np.ndarray | None = None,
    polysemantic: np.ndarray | None = None,
    markers: dict[int, str] | None = None,
    min_weight: float = 0.0,
) -> None:
    """The stack plot of W (hidden, feature): one bar per neuron (x axis, in `order`).

    Rectangles have height |W_ki| and feature i's colour; positive weights stack upwards from
    0, negative ones downwards, largest first. `polysemantic` (hidden,) bools shade those
    neurons' columns; `markers` maps a neuron to a short label drawn above its bar.
    Weights with |W_ki| < `min_weight` are left out (to keep wide layers readable).
    """
    W = np.asarray(W, np.float64)
    n_hidden, n_features = W.shape
    order = np.arange(n_hidden) if order is None else np.asarray(order)
    colours = feature_colours(n_features) if colours is None else colours
    if polysemantic is not None:
        for x, k in enumerate(order):
            if polysemantic[k]:
                ax.axvspan(x - 0.5, x + 0.5, color=POLY_SHADE, zorder=0, lw=0)
    # All rectangles as one collection (one patch each is far too slow at 40 × 100 weights);
    # per neuron and sign, the largest weights sit nearest the axis.
    Wo = W[order]
    xs, heights, bottoms, feats = [], [], [], []
    for sign in (1.0, -1.0):
        part = np.clip(sign * Wo, 0.0, None)
        part = np.where(part >= min_weight, part, 0.0)
        rank = np.argsort(-part, axis=1, kind="stable")
        sorted_h = np.take_along_axis(part, rank, axis=1)
        base = np.cumsum(sorted_h, axis=1) - sorted_h
        keep = sorted_h > 0
        rows = np.nonzero(keep)[0]
        xs.append(rows)
        heights.append(sign * sorted_h[keep])
        bottoms.append(sign * base[keep])
        feats.append(rank[keep])
    x, h, y0 = np.concatenate(xs), np.concatenate(heights), np.concatenate(bottoms)
    left, right, y1 = x - 0.4, x + 0.4, y0 + h
    corners = np.stack([np.stack([left, y0], 1), np.stack([right, y0], 1), np.stack([right, y1], 1), np.stack([left, y1], 1)], 1)
    ax.add_collection(PolyCollection(
        corners, facecolors=colours[np.concatenate(feats)], edgecolors="white",
        linewidths=0.3 if n_features <= 20 else 0.0, zorder=2,
    ))
    shown = np.where(np.abs(W) >= min_weight, W, 0.0)
    top = float(np.max(np.sum(np.clip(shown, 0, None), axis=1), initial=0.0))
    if markers:
        for x, k in enumerate(order):
            if int(k) in markers:
                up = np.sum(np.clip(shown[k], 0, None))
                ax.text(x, up + 0.04 * max(top, 1e-9), markers[int(k)], ha="center", va="bottom", fontsize=7, color="k")
    ax.axhline(0, color="k", lw=0.6, zorder=3)
    ax.set_xlim(-0.6, n_hidden - 0.4)
    ax.set_xticks([])
    ax.tick_params(axis="y", labelsize=7)


def _heatmap_colourbar(fig: Figure, ax: Axes, vmax: float) -> None:
    """A thin colour bar just right of `ax`, without shrinking it."""
    pos = ax.get_position()
    cax = fig.add_axes((pos.x1 + 0.008, pos.y0, 0.007, pos.height))
    sm = cm.ScalarMappable(norm=mcolors.Normalize(-vmax, vmax), cmap="RdBu")
    fig.colorbar(sm, cax=cax).ax.tick_params(labelsize=7)


def _feature_legend(fig: Figure, n_features: int, colours: np.ndarray) -> None:
    if n_features <= 20:
        handles = [Patch(color=colours[i], label=f"feature {i}") for i in range(n_features)]
        handles.append(Patch(color=POLY_SHADE, label="polysemantic neuron"))
        fig.legend(handles=handles, loc="lower center", ncol=min(n_features + 1, 11), fontsize=7, frameon=False)
    else:
        sm = cm.ScalarMappable(norm=mcolors.Normalize(0, n_features - 1), cmap=mcolors.ListedColormap(colours))
        cax = fig.add_axes((0.3, 0.05, 0.4, 0.012))
        fig.colorbar(sm, cax=cax, orientation="horizontal", label="feature index (importance order); shaded column = polysemantic neuron")


def privileged_basis_figure(
    weights: np.ndarray,
    feature_probabilities: Sequence[float],
    *,
    n_carried: np.ndarray,
    alive_threshold: float = 0.1,
    title: str | None = None,
) -> Figure:
    """The paper's ReLU-hidden-layer figure: per sparsity (column) the heatmap of W and the
    neuron stack plot below it, neurons in the same order in both.

    Args:
        weights: W of shape (n_probabilities, hidden, feature).
        feature_probabilities: column labels (1 − S), length n_probabilities.
        n_carried: (n_probabilities, hidden) features each neuron carries; > 1 is shaded
            as polysemantic.
        alive_threshold: neurons with weight norm at most this are drawn last.
    """
    weights = np.asarray(weights, np.float64)
    n_probs, n_hidden, n_features = weights.shape
    colours = feature_colours(n_features)
    fig = new_figure((2.1 * n_probs + 0.6, 5.4))
    axes = fig.subplots(
        2, n_probs, squeeze=False,
        gridspec_kw={"height_ratios": [0.8, 1.2], "hspace": 0.12, "wspace": 0.3},
    )
    fig.subplots_adjust(left=0.07, right=0.955, top=0.84 if title else 0.9, bottom=0.13)
    vmax = float(np.max(np.abs(weights)))
    up = float(np.max(np.sum(np.clip(weights, 0, None), axis=2)))
    down = float(np.max(np.sum(np.clip(-weights, 0, None), axis=2)))
    for c in range(n_probs):
        W = weights[c]
        order = neuron_order(W, alive_threshold)
        ax = axes[0, c]
        weight_heatmap(ax, W, order, vmax=vmax)
        ax.set_title(f"1−S = {feature_probabilities[c]:g}", fontsize=9)
        if c == 0:
            ax.set_ylabel("W (neurons ↓,\nfeatures →)", fontsize=8)
        ax = axes[1, c]
        neuron_stack(ax, W, order, colours=colours, polysemantic=n_carried[c] > 1)
        ax.set_ylim(-1.05 * down - 0.05, 1.05 * up + 0.05)
        n_poly = int(np.sum(n_carried[c] > 1))
        ax.set_xlabel(f"neurons ({n_poly} polysemantic)", fontsize=8)
        if c == 0:
            ax.set_ylabel("weights W_ki stacked per neuron\n(colour = feature, negative below)", fontsize=8)
    _heatmap_colourbar(fig, axes[0, -1], vmax)
    _feature_legend(fig, n_features, colours)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def abs_computation_figure(
    W1: np.ndarray,
    W2: np.ndarray,
    feature_probabilities: Sequence[float],
    *,
    n_carried: np.ndarray,
    neurons_per_feature: np.ndarray,
    markers: Sequence[dict[int, str]] | None = None,
    title: str | None = None,
) -> Figure:
    """The absolute-value model's weights per sparsity (column), neurons in one order per column.

    Rows: W₁ heatmap (neurons × features), W₂ᵀ heatmap (neurons × features), the stack plot
    of W₁, and the number of neurons carrying each feature.

    Args:
        W1: (n_probabilities, hidden, feature), W2: (n_probabilities, feature, hidden) — each
            neuron rescaled so that its largest |W₁| entry is 1 (W₂ column inversely).
        feature_probabilities: column labels (1 − S).
        n_carried: (n_probabilities, hidden) features per neuron; > 1 shades the column.
        neurons_per_feature: (n_probabilities, feature).
        markers: per column, neuron -> label drawn above its bar (e.g. the motif's roles).

    With more than 20 features the stack plot leaves out weights below 0.1 (of the neuron's
    largest, after rescaling), which otherwise pile up into unreadable towers.
    """
    W1 = np.asarray(W1, np.float64)
    W2 = np.asarray(W2, np.float64)
    n_probs, n_hidden, n_features = W1.shape
    colours = feature_colours(n_features)
    wide = n_features > 20
    fig = new_figure(((3.2 if wide else 2.0) * n_probs + 0.8, 9.0))
    axes = fig.subplots(
        4, n_probs, squeeze=False,
        gridspec_kw={"height_ratios": [1.0, 1.0, 1.1, 0.6], "hspace": 0.3, "wspace": 0.25},
    )
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9 if title else 0.94, bottom=0.14 if wide else 0.1)
    min_weight = 0.1 if wide else 0.0
    shown = np.where(np.abs(W1) >= min_weight, W1, 0.0)
    for c in range(n_probs):
        order = neuron_order(W1[c])
        weight_heatmap(axes[0, c], W1[c], order, vmax=1.0)
        axes[0, c].set_title(f"1−S = {feature_probabilities[c]:g}", fontsize=9)
        out = W2[c].T
        weight_heatmap(axes[1, c], out, order, vmax=max(float(np.max(np.abs(out))), 1e-9))
        neuron_stack(axes[2, c], W1[c], order, colours=colours, polysemantic=n_carried[c] > 1,
                     markers=None if markers is None else markers[c], min_weight=min_weight)
        axes[2, c].set_ylim(-float(np.max(np.sum(np.clip(-shown, 0, None), axis=2))) - 0.1,
                            float(np.max(np.sum(np.clip(shown, 0, None), axis=2))) * 1.15 + 0.1)
        axes[2, c].set_xlabel("neurons (by most important feature)" if wide else "neurons", fontsize=8)
        ax = axes[3, c]
        ax.bar(np.arange(n_features), neurons_per_feature[c], color=colours, width=0.85)
        ax.set_xlim(-0.6, n_features - 0.4)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("feature", fontsize=8)
    for r, label in enumerate(["W₁ (neurons ↓,\nfeatures →)", "W₂ᵀ (neurons ↓,\nfeatures →)",
                               "W₁ stacked per neuron\n(negative below" + (", |w| ≥ 0.1)" if wide else ")"),
                               "neurons\nper feature"]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    _feature_legend(fig, n_features, colours)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
