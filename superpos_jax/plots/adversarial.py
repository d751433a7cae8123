"""Adversarial vulnerability across sparsity, beside features per dimension."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from superpos_jax.plots.base import new_figure

MODEL_COLOURS = {"linear": "#4c72b0", "relu": "#dd4444", "relu-hidden": "#55a868"}


def _band(ax: Axes, x: np.ndarray, values: np.ndarray, usable: np.ndarray, colour: str, label: str, style: str = "-") -> None:
    """Mean over seeds as a line with markers, the seeds' min–max as a band. values: (prob, seed)."""
    masked = np.where(usable, values, np.nan)
    with np.errstate(all="ignore"):
        mean = np.nanmean(masked, axis=1)
        lo, hi = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)
    ax.plot(x, mean, style, marker="o", ms=4, color=colour, label=label, lw=1.6)
    ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)


def vulnerability_figure(
    feature_probabilities: Sequence[float],
    model_names: Sequence[str],
    vulnerability: np.ndarray,
    features_per_dimension: np.ndarray,
    *,
    relative_increase: np.ndarray | None = None,
    usable: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """Vulnerability against 1/(1 − S) (log) beside features per dimension against 1/(1 − S);
    below, the relative loss increase (when given) and vulnerability against features per
    dimension for every model and seed.

    Args:
        feature_probabilities: 1 − S per column, length P.
        model_names: one per row of the arrays, length M.
        vulnerability, features_per_dimension: shape (M, P, seed).
        relative_increase: optional (M, P, seed) attacked / clean loss − 1.
        usable: optional (M, P, seed) bools; False entries (non-finite runs) are left out.
    """
    vulnerability = np.asarray(vulnerability, np.float64)
    features_per_dimension = np.asarray(features_per_dimension, np.float64)
    usable = np.ones(vulnerability.shape, bool) if usable is None else np.asarray(usable, bool)
    x = 1.0 / np.asarray(feature_probabilities, np.float64)
    fig = new_figure((10.5, 7.6), constrained=True)
    axes = fig.subplots(2, 2)
    a_vul, a_fpd, a_rel, a_sc = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    for r, name in enumerate(model_names):
        colour = MODEL_COLOURS.get(name, f"C{r}")
        _band(a_vul, x, vulnerability[r], usable[r], colour, name)
        _band(a_fpd, x, features_per_dimension[r], usable[r], colour, name, "--")
        if relative_increase is not None:
            _band(a_rel, x, np.asarray(relative_increase, np.float64)[r], usable[r], colour, name, ":")
        ok = usable[r]
        a_sc.scatter(features_per_dimension[r][ok], vulnerability[r][ok], s=14, color=colour, label=name, alpha=0.8)
    for ax in (a_vul, a_fpd, a_rel):
        ax.set_xscale("log")
        ax.set_xlabel("1 / (1 − S)   (sparser →)")
        ax.legend(fontsize=8)
    for ax in (a_vul, a_fpd):
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
    a_vul.set_ylabel("vulnerability  (loss increase · n / ε²)")
    a_vul.set_title("vulnerability to the optimal L2 attack (mean, seed range)", fontsize=10)
    a_fpd.set_ylabel("features per dimension  ‖W‖²_F / m")
    a_fpd.set_title("superposition", fontsize=10)
    if relative_increase is None:
        a_rel.set_visible(False)
    else:
        a_rel.set_ylabel("attacked / clean loss − 1")
        a_rel.set_title("relative loss increase (also moves with the clean loss)", fontsize=10)
    top = max(float(np.nanmax(np.where(usable, features_per_dimension, np.nan), initial=1.0)),
              float(np.nanmax(np.where(usable, vulnerability, np.nan), initial=1.0)))
    a_sc.plot([0, top], [0, top], color="0.6", lw=0.8, ls=":", label="y = x")
    a_sc.set_xlabel("features per dimension")
    a_sc.set_ylabel("vulnerability")
    a_sc.set_title("vulnerability against features per dimension (every model)", fontsize=10)
    a_sc.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
