"""Shared plotting plumbing: new figures, colour maps, the one writer, loss curves.

Figures are `matplotlib.figure.Figure` objects built directly, never through pyplot: no global
figure registry, no backend switch, so plotting leaves the user's matplotlib state alone.
`save` renders with the Agg canvas whatever the backend.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

DPI = 110


def new_figure(figsize: tuple[int | float, int | float], *, constrained: bool = False) -> Figure:
    """An empty Figure of `figsize` inches, with the constrained layout engine if asked."""
    return Figure(figsize=figsize, layout="constrained" if constrained else None)


def colormap(name: str) -> Colormap:
    """The registered colour map `name` (a copy, as `pyplot.get_cmap` gives)."""
    return matplotlib.colormaps[name]


def save(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write `fig` as a PNG at `path` (parent directories created) and release it.

    The figure is consumed: it is closed in pyplot when pyplot manages it (a figure made with
    `plt.subplots` elsewhere), and its artists are cleared. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot: Any = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
    return path


def loss_curves(losses: np.ndarray, labels: Sequence[str], *, log_every: int = 1) -> Figure:
    """Loss against step (log scale) for a few instances.

    Args:
        losses: (instance, window) mean loss per logged window.
        labels: one legend label per instance.
        log_every: steps per window (the x axis is the step at the end of each window).
    """
    fig = new_figure((7, 4), constrained=True)
    ax = fig.subplots()
    steps = (np.arange(losses.shape[1]) + 1) * log_every
    colours = colormap("plasma")(np.linspace(0, 0.9, len(labels)))
    for trace, label, colour in zip(losses, labels, colours):
        ax.plot(steps, trace, label=label, color=colour, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7, ncol=2)
    return fig
