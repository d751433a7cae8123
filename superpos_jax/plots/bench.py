"""Figures of SAE benchmarks: a metric against L0, one line per architecture."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from matplotlib import ticker
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def metric_vs_l0(
    points: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    *,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """One line per group (e.g. architecture) through its runs sorted by L0 (log x).

    Args:
        points: group -> (l0 (n,), metric (n,)); non-finite or non-positive-L0 points are dropped.
        ylabel, title: axis label and title.
        ylim: optional y limits (e.g. (0, 1) for rates).
    """
    fig = new_figure((6.4, 4.4), constrained=True)
    ax = fig.subplots()
    for i, (group, (l0, metric)) in enumerate(points.items()):
        x, y = np.asarray(l0, np.float64), np.asarray(metric, np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
        order = np.argsort(x[keep])
        ax.plot(x[keep][order], y[keep][order], marker=MARKERS[i % len(MARKERS)], lw=1.5, ms=5,
                color=colormap("tab10")(i % 10), label=str(group))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("L0 (active latents per input)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, framealpha=0.85)
    ax.set_title(title, fontsize=9)
    return fig
