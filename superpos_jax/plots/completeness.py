"""Feature-completeness figures: the dictionary size a concept needs against its frequency,
and the per-size scores behind it (`experiments/feature_completeness.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

__all__ = ["size_needed_figure", "scores_figure"]


def size_needed_figure(
    frequency: np.ndarray,
    needed: np.ndarray,
    groups: Sequence[str],
    sizes: Sequence[int],
    *,
    names: Sequence[str] = (),
    label_names: Sequence[str] = (),
    fit: tuple[float, float] | None = None,
    title: str = "",
) -> Figure:
    """Log-log scatter of the smallest dictionary size that resolves each concept against the
    concept's frequency; concepts no size resolves are drawn as open triangles in a band above
    the largest size (censored).

    Args:
        frequency: (concept,) fraction of tokens carrying the concept.
        needed: (concept,) size needed, NaN where never resolved.
        groups: (concept,) a group name per concept (one colour each).
        sizes: the dictionary sizes tried (the y ticks).
        names, label_names: concept names, and which of them to annotate.
        fit: (intercept, exponent) of log10 N = intercept + exponent · log10 frequency, drawn as a line.
        title: the axes title.
    """
    fig = new_figure((7.5, 5.0), constrained=True)
    ax = fig.subplots()
    frequency, needed = np.asarray(frequency, np.float64), np.asarray(needed, np.float64)
    groups = np.asarray(groups)
    top = 2.0 * max(sizes)
    rng = np.random.default_rng(0)
    jitter = 2.0 ** rng.uniform(-0.12, 0.12, needed.size)  # sizes are discrete: spread the points a little
    colours = colormap("tab10")
    for g, name in enumerate(dict.fromkeys(groups.tolist())):
        mine = groups == name
        ok = mine & np.isfinite(needed)
        ax.scatter(frequency[ok], needed[ok] * jitter[ok], s=22, color=colours(g % 10), alpha=0.8,
                   label=f"{name} ({int(ok.sum())}/{int(mine.sum())} resolved)")
        cen = mine & ~np.isfinite(needed)
        if cen.any():
            ax.scatter(frequency[cen], np.full(int(cen.sum()), top) * jitter[cen], s=26, marker="^",
                       facecolors="none", edgecolors=colours(g % 10))
    ax.axhline(np.sqrt(top * max(sizes)), color="0.6", lw=0.8, ls=":")
    ax.text(0.01, top * 1.25, f"never resolved (≤ {max(sizes)}): censored", transform=ax.get_yaxis_transform(),
            fontsize=7, color="0.35", va="bottom")
    if fit is not None and np.isfinite(frequency).any():
        xs = np.geomspace(np.nanmin(frequency), np.nanmax(frequency), 50)
        ax.plot(xs, 10.0 ** (fit[0] + fit[1] * np.log10(xs)), color="k", lw=1.2,
                label=f"fit (resolved concepts): N ∝ frequency^{fit[1]:.2f}")
    names = list(names)
    for name in label_names:
        if name in names:
            i = names.index(name)
            y = needed[i] if np.isfinite(needed[i]) else top
            ax.annotate(name, (frequency[i], y * jitter[i]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_yticks(list(sizes) + [top], [str(s) for s in sizes] + ["none"])
    ax.set_ylim(min(sizes) / 1.6, top * 1.9)
    ax.set_xlabel("concept frequency (fraction of tokens)")
    ax.set_ylabel("smallest dictionary size with a feature for it")
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def scores_figure(
    scores: np.ndarray, frequency: np.ndarray, sizes: Sequence[int], *, threshold: float, n_bins: int = 4,
    score_name: str = "held-out F1",
) -> Figure:
    """Left: every concept's score (rows, sorted from frequent to rare) at each dictionary size
    (columns). Right: the fraction of concepts scoring at least `threshold` against size, per
    frequency quantile bin.

    Args:
        scores: (concept, size) best score of each concept in each dictionary.
        frequency: (concept,) concept frequencies.
        sizes: (size,) the dictionary sizes.
        threshold: the score at which a concept counts as resolved.
    """
    scores, frequency = np.asarray(scores, np.float64), np.asarray(frequency, np.float64)
    fig = new_figure((10.0, 4.6), constrained=True)
    left, right = fig.subplots(1, 2, width_ratios=(1.0, 1.2))
    order = np.argsort(-frequency)
    im = left.imshow(scores[order], aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    left.set_xticks(np.arange(len(sizes)), [str(s) for s in sizes], fontsize=7)
    ticks = np.linspace(0, len(order) - 1, min(6, len(order))).astype(int)
    left.set_yticks(ticks, [f"{frequency[order][t]:.1e}" for t in ticks], fontsize=7)
    left.set_xlabel("dictionary size")
    left.set_ylabel("concepts, frequent → rare (frequency)")
    left.set_title(score_name, fontsize=9)
    fig.colorbar(im, ax=left, fraction=0.05)
    edges = np.quantile(np.log10(frequency), np.linspace(0, 1, n_bins + 1))
    bins = np.clip(np.searchsorted(edges, np.log10(frequency), side="right") - 1, 0, n_bins - 1)
    colours = colormap("plasma")(np.linspace(0.0, 0.85, n_bins))
    for b in range(n_bins):
        mine = bins == b
        if mine.any():
            right.plot(sizes, np.mean(scores[mine] >= threshold, axis=0), marker="o", color=colours[b],
                       label=f"frequency 10^[{edges[b]:.1f}, {edges[b + 1]:.1f}] ({int(mine.sum())} concepts)")
    right.set_xscale("log", base=2)
    right.set_xticks(list(sizes), [str(s) for s in sizes], fontsize=7)
    right.set_ylim(-0.03, 1.03)
    right.set_xlabel("dictionary size")
    right.set_ylabel(f"fraction of concepts with {score_name} ≥ {threshold:g}")
    right.legend(loc="lower right", fontsize=7)
    right.set_title("concepts resolved vs dictionary size, by frequency", fontsize=9)
    return fig
