"""The learning-dynamics figure: every feature's dimensionality over training above the loss.

One panel pair per shown model: D_i of every feature against the training step (one line per
feature, horizontal guides at the fractions of small polytopes), and below it the loss, both on
a log step axis, where the jumps between geometric configurations and the loss plateaus they
end show up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import gridspec
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure
from superpos_jax.plots.geometry import label_levels


def dynamics_figure(
    steps: np.ndarray,
    dimensionality: np.ndarray,
    losses: np.ndarray,
    titles: Sequence[Sequence[str]],
    fractions: Sequence[float],
    *,
    jumps: Sequence[Sequence[Sequence[float | int]]] | None = None,
    title: str | None = None,
) -> Figure:
    """Feature dimensionalities and loss over training for a grid of shown models.

    Args:
        steps: the step at the end of every logged window, shape (window,).
        dimensionality: D_i per window, shape (rows, cols, window, feature).
        losses: mean loss per window, shape (rows, cols, window).
        titles: a title per shown model, rows × cols.
        fractions: D values to mark with horizontal guide lines (labelled at the right).
        jumps: optional, per shown model (rows × cols) the steps at which jumps were detected;
            each is marked by a small triangle on the top edge of its D panel.
    """
    steps = np.asarray(steps, np.float64)
    D = np.asarray(dimensionality, np.float64)
    L = np.asarray(losses, np.float64)
    rows, cols, _, n_features = D.shape
    width, height = 4.2 * cols + 1.2, 4.4 * rows + (0.8 if title else 0.2)
    fig = new_figure((width, height))
    outer = gridspec.GridSpec(rows, cols, figure=fig, hspace=0.35, wspace=0.28, left=0.85 / width,
                              right=1 - 0.45 / width, top=1 - (0.95 if title else 0.3) / height, bottom=0.5 / height)
    colours = colormap("tab20" if n_features <= 20 else "turbo")(np.linspace(0, 1, n_features, endpoint=n_features > 20))
    for r in range(rows):
        for c in range(cols):
            inner = gridspec.GridSpecFromSubplotSpec(2, 1, subplot_spec=outer[r, c], height_ratios=[2.2, 1], hspace=0.06)
            ax_d = fig.add_subplot(inner[0])
            ax_l = fig.add_subplot(inner[1], sharex=ax_d)
            for f in fractions:
                ax_d.axhline(f, color="0.75", lw=0.7, zorder=0)
            if c == cols - 1:
                label_levels(ax_d, fractions, gap=0.05, fontsize=7)
            for i in range(n_features):
                ax_d.plot(steps, D[r, c, :, i], color=colours[i], lw=0.9)
            if jumps is not None:
                for s in jumps[r][c]:
                    ax_d.plot([s], [1.04], marker="v", ms=4, color="crimson", clip_on=False)
            ax_d.set_ylim(-0.03, 1.06)
            ax_d.set_xscale("log")
            ax_d.set_title(titles[r][c], fontsize=9)
            ax_d.tick_params(which="both", labelbottom=False, labelsize=7)
            ax_l.plot(steps, L[r, c], color="black", lw=0.8)
            ax_l.set_yscale("log")
            ax_l.tick_params(which="both", labelsize=7)
            if c == 0:
                ax_d.set_ylabel(r"feature dimensionality $D_i$", fontsize=8)
                ax_l.set_ylabel("loss", fontsize=8)
            if r == rows - 1:
                ax_l.set_xlabel("training step", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
