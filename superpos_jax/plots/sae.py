"""Sparse-autoencoder figures: sparsity–fidelity Pareto fronts, feature densities, scaling laws
and dictionary recovery.

Every function takes host NumPy inputs and returns a matplotlib Figure; write it with
`superpos_jax.plots.save(fig, path)`. `pareto_front` is the pure NumPy logic behind the
Pareto lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib import cm, colors, ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure
from superpos_jax.sae.metrics import feature_density_histogram
from superpos_jax.sae.scaling import ComputeOptimal, PowerLaw, loss_frontier

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DEAD_COLOUR = "#7f7f7f"
TARGET_COLOUR = "#c0392b"
_MIN_GAP = 1e-4


def _colour(i: int) -> Any:
    return colormap("tab10")(i % 10)


def _group_order(groups: Sequence[Any] | np.ndarray) -> list[Any]:
    """Distinct group labels: numerically sorted when all numbers, else in order of appearance."""
    seen: list[Any] = []
    for g in np.asarray(groups, dtype=object).tolist():
        if g not in seen:
            seen.append(g)
    if all(isinstance(g, (int, float, np.integer, np.floating)) and not isinstance(g, bool) for g in seen):
        seen.sort()
    return seen


def _group_label(g: Any) -> str:
    if isinstance(g, (float, np.floating)) and float(g).is_integer():
        return str(int(g))
    return str(g)


def _quiet_minor_labels(ax: Axes) -> None:
    """Labels at 1, 2 and 5 × 10^k on both log axes, none on minor ticks (matplotlib labels
    every minor tick of an axis spanning less than a decade, and those labels overlap)."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(_log_label(axis)))
        axis.set_minor_formatter(ticker.NullFormatter())


def _log_label(axis: Any) -> Any:
    """Tick label: every 1/2/5 tick on an axis spanning under two decades, else powers of 10 only."""

    def label(value: float, _: int) -> str:
        lo, hi = sorted(axis.get_view_interval())
        mantissa = value / 10 ** np.floor(np.log10(value)) if value > 0 else 0.0
        if lo > 0 and hi / lo >= 100 and not np.isclose(mantissa, 1.0):
            return ""
        return f"{value:g}"

    return label


def pareto_front(l0: npt.ArrayLike, fvu: npt.ArrayLike) -> np.ndarray:
    """Indices of the points not dominated in (L0, FVU), both to be minimised.

    Point j dominates point i when l0_j ≤ l0_i and fvu_j ≤ fvu_i with at least one strict;
    identical points do not dominate each other, so exact duplicates on the front are all
    kept. Points with a non-finite coordinate are never on the front.

    Args:
        l0: (n,) mean active latents per input.
        fvu: (n,) fraction of variance unexplained.

    Returns:
        (n_front,) int64 indices, ordered by ascending L0 (then FVU, then index).
    """
    l0 = np.asarray(l0, np.float64)
    fvu = np.asarray(fvu, np.float64)
    if l0.ndim != 1 or l0.shape != fvu.shape:
        raise ValueError(f"l0 and fvu must be 1-D of one length; got {l0.shape} and {fvu.shape}")
    finite = np.nonzero(np.isfinite(l0) & np.isfinite(fvu))[0]
    x, y = l0[finite], fvu[finite]
    weakly = (x[:, None] <= x[None, :]) & (y[:, None] <= y[None, :])
    strictly = (x[:, None] < x[None, :]) | (y[:, None] < y[None, :])
    dominated = np.any(weakly & strictly, axis=0)
    front = finite[~dominated]
    return front[np.lexsort((front, fvu[front], l0[front]))].astype(np.int64)


def pareto(
    l0: npt.ArrayLike,
    fvu: npt.ArrayLike,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    annotate: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str = "L0 (active latents per input)",
    ylabel: str = "FVU (fraction of variance unexplained)",
) -> Figure:
    """Sparsity–fidelity scatter: L0 (x, log) against FVU (y, log), one colour and marker per
    group, each group's Pareto front (`pareto_front`) drawn as a line through its points.

    Args:
        l0: (n,) L0 per trained SAE (> 0 to be shown on the log axis).
        fvu: (n,) FVU per SAE (> 0).
        groups: (n,) label per point (architecture name, dictionary size, ...); one group if None.
        annotate: (n,) optional text written next to each point (e.g. the λ or k of the run).
        title: figure title.

    Non-finite or non-positive points are left out and counted in a note on the axes.
    """
    l0 = np.asarray(l0, np.float64)
    fvu = np.asarray(fvu, np.float64)
    if l0.ndim != 1 or l0.shape != fvu.shape:
        raise ValueError(f"l0 and fvu must be 1-D of one length; got {l0.shape} and {fvu.shape}")
    labels = np.asarray(groups if groups is not None else ["SAE"] * l0.size, dtype=object)
    if labels.shape != l0.shape:
        raise ValueError(f"groups must have length {l0.size}, got {labels.shape}")
    if annotate is not None and len(annotate) != l0.size:
        raise ValueError(f"annotate must have length {l0.size}, got {len(annotate)}")
    shown = np.isfinite(l0) & np.isfinite(fvu) & (l0 > 0) & (fvu > 0)

    fig = new_figure((6.4, 4.6), constrained=True)
    ax = fig.subplots()
    for i, g in enumerate(_group_order(labels)):
        member = np.nonzero((labels == g) & shown)[0]
        if member.size == 0:
            continue
        colour, marker = _colour(i), MARKERS[i % len(MARKERS)]
        ax.scatter(l0[member], fvu[member], color=colour, marker=marker, s=28, alpha=0.55, lw=0)
        front = member[pareto_front(l0[member], fvu[member])]
        ax.plot(l0[front], fvu[front], color=colour, marker=marker, ms=6, lw=1.6, label=_group_label(g))
        if annotate is not None:
            for j in member:
                ax.annotate(annotate[j], (l0[j], fvu[j]), textcoords="offset points", xytext=(4, 3),
                            fontsize=6.5, color=colour)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _quiet_minor_labels(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="Pareto front per group" if groups is not None else None, fontsize=8, title_fontsize=8,
              loc="best", framealpha=0.85)
    n_hidden = int(np.sum(~shown))
    if n_hidden:
        ax.text(0.99, 0.01, f"{n_hidden} run(s) not shown (non-finite or ≤ 0)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color=TARGET_COLOUR)
    ax.set_title(title or "sparsity vs reconstruction (lower left is better)", fontsize=10)
    return fig


def density_histograms(
    densities: Mapping[str, npt.ArrayLike],
    *,
    bins: int = 40,
    min_log10: float | None = None,
    overlay: bool = False,
    title: str | None = None,
) -> Figure:
    """Histograms of log10 feature density (firing frequency per latent), dead latents in a
    separate grey bar at the left, as in Anthropic's SAE write-ups.

    Args:
        densities: label → (d_sae,) firing frequency of each latent over a window, in [0, 1]
            (firing count / n_tokens); 0 marks a dead latent.
        bins: number of bins on [min_log10, 0].
        min_log10: left edge in log10 frequency; by default the floor of the smallest nonzero
            density over all labels. Smaller densities are counted in the first bin.
        overlay: one panel with step histograms instead of one panel per label.
        title: figure title.
    """
    if not densities:
        raise ValueError("densities is empty")
    arrays = {}
    for name, d in densities.items():
        d = np.asarray(d, np.float64)
        if d.ndim != 1 or np.any(~np.isfinite(d)) or np.any(d < 0) or np.any(d > 1):
            raise ValueError(f"densities[{name!r}] must be a 1-D array of frequencies in [0, 1]")
        arrays[str(name)] = d
    if min_log10 is None:
        positive = np.concatenate([d[d > 0] for d in arrays.values()])
        min_log10 = float(np.floor(np.log10(positive.min()))) if positive.size else -6.0
        min_log10 = min(min_log10, -1.0)
    edges = np.linspace(min_log10, 0.0, bins + 1)
    width = edges[1] - edges[0]
    dead_width = max(3 * width, -min_log10 / 12)
    dead_x = min_log10 - 1.2 * dead_width

    n = len(arrays)
    n_panels = 1 if overlay else n
    fig = new_figure((6.4, 1.25 + 1.6 * n_panels), constrained=True)
    axes = fig.subplots(n_panels, 1, sharex=True, squeeze=False)
    for i, (name, d) in enumerate(arrays.items()):
        ax = axes[0 if overlay else i, 0]
        clipped = np.where(d > 0, np.maximum(d, 10.0**min_log10), 0.0)
        hist, _, n_dead = feature_density_histogram(clipped, 1.0, bins=edges)
        colour = _colour(i)
        dead_label = f"dead {n_dead}/{d.size} ({100 * n_dead / max(d.size, 1):.1f}%)"
        if overlay:
            ax.stairs(hist, edges, color=colour, lw=1.5, label=f"{name}: {dead_label}")
            offset = (i - (n - 1) / 2) * dead_width / n
            ax.bar(dead_x + offset, n_dead, width=dead_width / n, color=colour, alpha=0.8)
        else:
            ax.stairs(hist, edges, fill=True, color=colour, alpha=0.8)
            ax.bar(dead_x, n_dead, width=dead_width, color=DEAD_COLOUR)
            ax.text(0.99, 0.95, f"{name}\n{dead_label}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
        top = max(ax.get_ylim()[1], (1.3 + 0.15 * n * overlay) * max(int(hist.max(initial=0)), n_dead, 1))
        ax.set_ylim(0, top)
        ax.set_ylabel("latents")
        ax.axvline(min_log10 - 0.2 * dead_width, color="k", lw=0.6, ls=":")
    ticks = np.arange(np.ceil(min_log10), 0.5, 1.0 if -min_log10 <= 8 else 2.0)
    bottom = axes[-1, 0]
    bottom.set_xticks([dead_x, *ticks], ["dead", *[f"{t:g}" for t in ticks]])
    bottom.set_xlabel("log10 feature density (fraction of inputs on which the latent fires)")
    if overlay:
        axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "feature density", fontsize=10)
    return fig


def _fit_curve(ax: Axes, fit: PowerLaw, x: np.ndarray, variable: str, colour: str = "k") -> None:
    grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
    ax.plot(grid, fit(grid), color=colour, ls="--", lw=1.2, label=f"{fit.label(variable)}  (r²={fit.r2:.3f})")
    if fit.c > 0:
        ax.axhline(fit.c, color=colour, ls=":", lw=0.9, label=f"irreducible c = {fit.c:.3g}")


def scaling(
    sizes: npt.ArrayLike,
    losses: npt.ArrayLike,
    fit: PowerLaw | None = None,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    xlabel: str = "dictionary size N (latents)",
    ylabel: str = "loss",
    variable: str = "N",
    title: str | None = None,
) -> Figure:
    """Loss against dictionary size (or any scale variable), both log, with a fitted power law.

    Args:
        sizes: (n,) positive x values (dictionary size, tokens, compute).
        losses: (n,) positive losses.
        fit: a `PowerLaw` drawn dashed, its irreducible term dotted.
        groups: (n,) label per point (e.g. architecture); one colour and marker per group.
        variable: the letter of x in the fit's legend label.
    """
    x = np.asarray(sizes, np.float64)
    y = np.asarray(losses, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"sizes and losses must be 1-D of one length; got {x.shape} and {y.shape}")
    labels = np.asarray(groups if groups is not None else [""] * x.size, dtype=object)
    shown = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    fig = new_figure((6.0, 4.4), constrained=True)
    ax = fig.subplots()
    for i, g in enumerate(_group_order(labels)):
        member = (labels == g) & shown
        ax.scatter(x[member], y[member], color=_colour(i), marker=MARKERS[i % len(MARKERS)], s=30, zorder=3,
                   label=_group_label(g) if groups is not None else "runs")
    if fit is not None and np.any(shown):
        _fit_curve(ax, fit, x[shown], variable)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _quiet_minor_labels(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title(title or f"{ylabel} vs {xlabel.split(' (')[0]}", fontsize=10)
    return fig


def compute_optimal_figure(
    sizes: npt.ArrayLike,
    computes: npt.ArrayLike,
    losses: npt.ArrayLike,
    *,
    frontier: ComputeOptimal | None = None,
    loss_fit: PowerLaw | None = None,
    title: str | None = None,
) -> Figure:
    """Three log-log panels for a (size, compute) grid of runs.

    (a) IsoFLOP profiles: loss against N, one line per compute budget, the optimum starred;
    (b) loss against compute, runs coloured by N, the loss frontier (`loss_frontier`) in black
    and `loss_fit` (a law in C) dashed; (c) compute-optimal N against C with the fitted
    N_opt = k·C^e.

    Args:
        sizes, computes, losses: (n_runs,) dictionary size, training FLOPs, final loss per run.
        frontier: the output of `scaling_law.compute_optimal` on the same runs; panels (a) and
            (c) need it (they are left with a note otherwise).
        loss_fit: optional power law of the frontier loss in compute.
    """
    n = np.asarray(sizes, np.float64)
    c = np.asarray(computes, np.float64)
    y = np.asarray(losses, np.float64)
    if not (n.ndim == 1 and n.shape == c.shape == y.shape):
        raise ValueError(f"sizes, computes, losses must be 1-D of one length; got {n.shape}, {c.shape}, {y.shape}")
    ok = np.isfinite(y) & (y > 0)
    fig = new_figure((14.5, 4.3), constrained=True)
    ax_iso, ax_loss, ax_opt = fig.subplots(1, 3)
    size_norm = colors.LogNorm(n.min(), n.max()) if n.max() > n.min() else colors.LogNorm(n.min() / 2, n.max() * 2)
    size_cmap = colormap("viridis")

    if frontier is not None:
        budget_cmap = colormap("plasma")
        shades = budget_cmap(np.linspace(0.0, 0.85, frontier.computes.size))
        for budget, shade, best in zip(frontier.computes, shades, frontier.indices):
            member = np.nonzero(ok & np.isclose(c, budget, rtol=1e-6))[0]
            member = member[np.argsort(n[member])]
            ax_iso.plot(n[member], y[member], marker="o", ms=3.5, lw=1.2, color=shade, label=f"C = {budget:.2g}")
            ax_iso.plot(n[best], y[best], marker="*", ms=13, color=shade, mec="k", mew=0.7, ls="none")
        if frontier.computes.size <= 8:
            ax_iso.legend(fontsize=7, title="budget (FLOPs)", title_fontsize=7, loc="best")
        else:
            fig.colorbar(cm.ScalarMappable(colors.LogNorm(frontier.computes.min(), frontier.computes.max()),
                                           budget_cmap), ax=ax_iso, label="compute budget (FLOPs)")
    else:
        ax_iso.text(0.5, 0.5, "pass frontier=compute_optimal(...)", transform=ax_iso.transAxes, ha="center")
    ax_iso.set_title("(a) IsoFLOP profiles (★ = optimum)", fontsize=10)
    ax_iso.set_xlabel("dictionary size N")
    ax_iso.set_ylabel("loss")

    for size in np.unique(n):
        member = np.nonzero(ok & (n == size))[0]
        member = member[np.argsort(c[member])]
        ax_loss.plot(c[member], y[member], color=size_cmap(size_norm(size)), lw=0.8, alpha=0.7)
    ax_loss.scatter(c[ok], y[ok], c=n[ok], cmap=size_cmap, norm=size_norm, s=14, zorder=3)
    front = loss_frontier(c, np.where(ok, y, np.nan))
    ax_loss.plot(c[front], y[front], color="k", lw=1.8, label="loss frontier", zorder=4)
    if loss_fit is not None and front.size:
        _fit_curve(ax_loss, loss_fit, c[front], "C", colour=TARGET_COLOUR)
    fig.colorbar(cm.ScalarMappable(size_norm, size_cmap), ax=ax_loss, label="dictionary size N")
    ax_loss.legend(fontsize=7, loc="lower left", framealpha=0.9)
    ax_loss.set_title("(b) loss vs training compute", fontsize=10)
    ax_loss.set_xlabel("training compute C (FLOPs)")
    ax_loss.set_ylabel("loss")

    if frontier is not None:
        ax_opt.scatter(frontier.computes, frontier.sizes, color="k", marker="*", s=90, zorder=3,
                       label="optimum per budget")
        if frontier.fit is not None:
            grid = np.geomspace(frontier.computes.min() / 1.5, frontier.computes.max() * 1.5, 100)
            ax_opt.plot(grid, frontier.fit(grid), ls="--", color=TARGET_COLOUR,
                        label=f"N_opt = {frontier.fit.a:.3g}·C^{frontier.exponent:.3f}")
        ax_opt.legend(fontsize=8, loc="upper left")
    ax_opt.set_title("(c) compute-optimal dictionary size", fontsize=10)
    ax_opt.set_xlabel("training compute C (FLOPs)")
    ax_opt.set_ylabel("N_opt")
    for ax in (ax_iso, ax_loss, ax_opt):
        ax.set_xscale("log")
        ax.set_yscale("log")
        _quiet_minor_labels(ax)
        ax.grid(True, which="major", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def recovery(
    max_cosine: Mapping[str, npt.ArrayLike],
    *,
    hungarian: Mapping[str, float] | None = None,
    target: float = 0.99,
    title: str | None = None,
) -> Figure:
    """Dictionary recovery on toy ground truth: per-architecture score bars beside a histogram
    of the per-ground-truth-feature max cosine.

    Left: MMCS (the mean of `max_cosine`) and, when given, the Hungarian matching score, one
    bar pair per architecture, with the target as a dashed line. Right: histogram of
    max_j cos(g_i, d_j) over ground-truth features, one step line per architecture, legend
    giving the share of features above the target. The histogram's x axis is logarithmic in
    1 − cos so that 0.9, 0.99 and 0.999 are equally spaced; cosines above 0.9999 fall in the
    last bin.

    Args:
        max_cosine: architecture → (n_gt,) max cosine of each ground-truth feature to any
            decoder column (e.g. `sae_metrics.cosine_matrix(...).max(axis=1)`).
        hungarian: architecture → one-to-one matching score (`sae_metrics.hungarian_matching_score`).
        target: the recovery threshold (0.99 for "recovered").
    """
    if not max_cosine:
        raise ValueError("max_cosine is empty")
    names = [str(k) for k in max_cosine]
    values = [np.asarray(v, np.float64).ravel() for v in max_cosine.values()]
    mmcs = np.array([v.mean() for v in values])
    hung = None
    if hungarian is not None:
        missing = [k for k in max_cosine if k not in hungarian]
        if missing:
            raise ValueError(f"hungarian lacks architectures {missing}")
        hung = np.array([float(hungarian[k]) for k in max_cosine])

    fig = new_figure((11.0, 4.2), constrained=True)
    ax_bar, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.3]})
    pos = np.arange(len(names))
    width = 0.38 if hung is not None else 0.6
    series = [("MMCS", mmcs, 0.0 if hung is None else -width / 2, 1.0)]
    if hung is not None:
        series.append(("Hungarian (1-to-1)", hung, width / 2, 0.5))
    for label, score, shift, alpha in series:
        bars = ax_bar.bar(pos + shift, score, width=width, color=[_colour(i) for i in range(len(names))], alpha=alpha,
                          edgecolor="k", lw=0.6, label=label)
        ax_bar.bar_label(bars, [f"{s:.3f}" for s in score], fontsize=7, padding=2)
    low = min(float(np.min(mmcs)), float(np.min(hung)) if hung is not None else 1.0, target)
    ax_bar.set_ylim(max(0.0, low - 0.1 * (1.0 - low) - 0.02), 1.0 + 0.12 * (1.0 - max(0.0, low - 0.1)))
    ax_bar.axhline(target, color=TARGET_COLOUR, ls="--", lw=1.1, label=f"target {target:g}")
    ax_bar.set_xticks(pos, names, rotation=20 if max(len(s) for s in names) > 8 else 0)
    ax_bar.set_ylabel("score (mean cosine over ground-truth features)")
    ax_bar.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax_bar.set_title("dictionary recovery", fontsize=10)

    gap = [np.clip(1.0 - v, _MIN_GAP, 2.0) for v in values]
    edges = np.geomspace(_MIN_GAP, max(0.1, float(max(g.max() for g in gap)) * 1.05), 41)
    peak = 1
    for i, (name, g) in enumerate(zip(names, gap)):
        hist, _ = np.histogram(g, bins=edges)
        peak = max(peak, int(hist.max()))
        share = float(np.mean(values[i] >= target))
        ax_hist.stairs(hist, edges, color=_colour(i), lw=1.5, label=f"{name}: {100 * share:.0f}% ≥ {target:g}")
    ax_hist.axvline(1.0 - target, color=TARGET_COLOUR, ls="--", lw=1.1)
    ax_hist.set_xscale("log")
    ax_hist.set_xlim(edges[-1], edges[0])
    ax_hist.xaxis.set_major_formatter(ticker.FuncFormatter(lambda u, _: f"{1.0 - u:.6g}"))
    ax_hist.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax_hist.set_yscale("symlog", linthresh=1.0)
    ax_hist.set_ylim(0, 3.0 * peak)
    ticks = [u for u in (1.0, 0.5, 0.1, 0.01, 1e-3, 1e-4) if edges[0] <= u <= edges[-1]]
    ax_hist.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax_hist.set_xlabel("max cosine to any decoder column (axis log in 1 − cos)")
    ax_hist.set_ylabel("ground-truth features")
    ax_hist.legend(fontsize=7, loc="upper left", framealpha=0.9)
    ax_hist.set_title("per-feature recovery", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def probing_accuracy(
    concepts: Sequence[str],
    ks: Sequence[int],
    scores: Mapping[str, npt.ArrayLike],
    *,
    title: str = "k-sparse probing",
    ylabel: str = "held-out balanced accuracy",
) -> Figure:
    """k-sparse probing of concepts by several unit sets (SAE features vs MLP neurons).

    Args:
        concepts: the probed concepts (n_concepts,).
        ks: the k values (n_k,); one panel per k.
        scores: {unit set name: array (n_k, n_concepts)} (NaN: not scored; drawn as a gap).
        title, ylabel: the figure's title and the y-axis label.
    """
    names = list(scores)
    fig = new_figure((min(6.0 + 0.45 * len(concepts), 15.0), 2.4 * len(ks) + 0.8))
    axes = np.atleast_1d(fig.subplots(len(ks), 1, sharex=True, squeeze=False)[:, 0])
    x = np.arange(len(concepts))
    width = 0.8 / max(len(names), 1)
    for row, (ax, k) in enumerate(zip(axes, ks, strict=True)):
        for j, name in enumerate(names):
            values = np.asarray(scores[name], dtype=float)[row]
            mean = np.nanmean(values) if np.isfinite(values).any() else float("nan")
            ax.bar(x + (j - (len(names) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width,
                   color=_colour(j), label=f"{name} (mean {mean:.2f})")
        ax.axhline(0.5, color=DEAD_COLOUR, lw=0.8, ls="--")
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel(f"k = {k}\n{ylabel}" if row == len(ks) // 2 else f"k = {k}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(concepts, rotation=40, ha="right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def delta_loss_vs_l0(
    l0: npt.ArrayLike, delta_loss: npt.ArrayLike, *, groups: Sequence[Any] | None = None,
    title: str = "Δ loss (CE spliced − CE clean) vs L0",
) -> Figure:
    """The downstream cost of each SAE against its sparsity: Δ loss = CE with the SAE spliced in
    minus the clean CE (nats per token), one point per SAE, points of a group joined in L0 order.

    Args:
        l0, delta_loss: (n_saes,).
        groups: a label per SAE (e.g. its layer or size); None: one group.
    """
    l0, delta = np.asarray(l0, dtype=float), np.asarray(delta_loss, dtype=float)
    groups = ["SAEs"] * l0.size if groups is None else list(groups)
    fig = new_figure((5.6, 3.8))
    ax = fig.subplots()
    for i, g in enumerate(_group_order(groups)):
        mine = np.flatnonzero(np.asarray([h == g for h in groups]))
        order = mine[np.argsort(l0[mine])]
        ax.plot(l0[order], delta[order], marker=MARKERS[i % len(MARKERS)], color=_colour(i), label=_group_label(g))
    ax.axhline(0.0, color=DEAD_COLOUR, lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_log_label(ax.xaxis)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("Δ loss (nats / token)")
    ax.set_title(title)
    if len(set(map(str, groups))) > 1:
        ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig
