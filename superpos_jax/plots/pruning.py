"""Lottery-ticket figures: loss and geometry against the fraction of weights kept, and WᵀW of
the dense model beside its pruned ticket and the ticket's random re-initialisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

__all__ = ["ticket_geometry_figure", "ticket_gram_figure", "ticket_loss_figure"]

_ARM_STYLE = {0: ("-", "o"), 1: ("--", "x")}


def _colours(n: int) -> np.ndarray:
    return colormap("viridis")(np.linspace(0.0, 0.8, max(n, 1)))


def _curves(ax, remaining: np.ndarray, values: np.ndarray, rates: Sequence[float], arms: Sequence[str]) -> None:
    """Mean over seeds (line) and every seed (faint points) per rate and arm.
    `remaining` (round, rate); `values` (round, rate, seed, arm)."""
    colours = _colours(len(rates))
    for a, rate in enumerate(rates):
        for k, arm in enumerate(arms):
            line, marker = _ARM_STYLE.get(k, ("-.", "s"))
            y = values[:, a, :, k]
            ax.plot(remaining[:, a], np.nanmean(y, axis=1), line, marker=marker, color=colours[a], ms=4,
                    label=f"{arm}, prune {rate:g}/round")
            ax.plot(np.repeat(remaining[:, a, None], y.shape[1], axis=1), y, marker, color=colours[a], ms=2.5, alpha=0.3)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.grid(True, which="both", alpha=0.25)


def ticket_loss_figure(
    remaining: np.ndarray,
    loss: np.ndarray,
    rates: Sequence[float],
    feature_probabilities: Sequence[float],
    *,
    arms: Sequence[str] = ("rewind", "reinit"),
    title: str | None = None,
) -> Figure:
    """Final loss against the fraction of weights kept (log x, decreasing), one panel per
    sparsity: the dense model (round 0, grey band over seeds), the rewound tickets and their
    random re-initialisations (lines: mean over seeds; points: seeds).

    Args:
        remaining: (round, rate) fraction of W kept, round 0 = dense (1.0).
        loss: (round, rate, feature_probability, seed, arm) final losses (NaN where unusable).
        rates, feature_probabilities, arms: the axis labels.
    """
    n_probs = len(feature_probabilities)
    fig = new_figure((4.2 * n_probs, 3.8), constrained=True)
    axes = np.atleast_1d(fig.subplots(1, n_probs, squeeze=False)[0])
    for b, ax in enumerate(axes):
        dense = loss[0, 0, b, :, 0]
        ax.axhspan(np.nanmin(dense), np.nanmax(dense), color="0.6", alpha=0.35, label="dense (seed range)")
        ax.axhline(np.nanmean(dense), color="0.35", lw=1)
        _curves(ax, remaining, loss[:, :, b], rates, arms)
        ax.set_yscale("log")
        ax.set_title(f"1−S = {feature_probabilities[b]:g}")
        ax.set_xlabel("fraction of W kept")
        if b == 0:
            ax.set_ylabel("final loss")
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def ticket_geometry_figure(
    remaining: np.ndarray,
    quantities: Mapping[str, np.ndarray],
    rates: Sequence[float],
    feature_probabilities: Sequence[float],
    *,
    arms: Sequence[str] = ("rewind", "reinit"),
    title: str | None = None,
) -> Figure:
    """One row per geometry measure (each (round, rate, feature_probability, seed, arm),
    measured against the dense model of the same sparsity and seed), one column per sparsity,
    against the fraction of weights kept (log x, decreasing)."""
    n_probs, n_rows = len(feature_probabilities), len(quantities)
    fig = new_figure((4.2 * n_probs, 3.2 * n_rows), constrained=True)
    axes = fig.subplots(n_rows, n_probs, squeeze=False)
    for q, (label, values) in enumerate(quantities.items()):
        for b in range(n_probs):
            ax = axes[q, b]
            _curves(ax, remaining, values[:, :, b], rates, arms)
            if q == 0:
                ax.set_title(f"1−S = {feature_probabilities[b]:g}")
            if q == n_rows - 1:
                ax.set_xlabel("fraction of W kept")
            if b == 0:
                ax.set_ylabel(label, fontsize=8)
            if q == 0 and b == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def ticket_gram_figure(
    dense: np.ndarray,
    ticket: np.ndarray,
    control: np.ndarray,
    mask: np.ndarray,
    feature_probabilities: Sequence[float],
    *,
    title: str | None = None,
) -> Figure:
    """Per sparsity (rows): WᵀW of the dense model, of the rewound ticket and of its random
    re-initialisation (±1 diverging colour map), and the mask (hidden × feature, black = kept).

    Args:
        dense, ticket, control: W, each (feature_probability, hidden, feature).
        mask: the shared 0/1 mask, (feature_probability, hidden, feature).
    """
    n_probs = len(feature_probabilities)
    fig = new_figure((10.5, 2.9 * n_probs + 0.6), constrained=True)
    axes = fig.subplots(n_probs, 4, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 1.1]})
    names = ("dense", "rewound ticket", "random re-init")
    image = None
    for b in range(n_probs):
        for c, W in enumerate((dense[b], ticket[b], control[b])):
            ax = axes[b, c]
            image = ax.imshow(W.T @ W, cmap="RdBu", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if b == 0:
                ax.set_title(f"{names[c]} WᵀW", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"1−S = {feature_probabilities[b]:g}")
        ax = axes[b, 3]
        ax.imshow(mask[b], cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_yticks([])
        ax.set_xlabel("feature", fontsize=8)
        if b == 0:
            ax.set_title(f"mask ({int(mask[b].sum())} of {mask[b].size} kept)", fontsize=9)
        else:
            ax.set_title(f"{int(mask[b].sum())} kept", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes[:, :3], shrink=0.6, label="WᵀW")
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
