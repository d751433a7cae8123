"""Feature-splitting figures: split trees across dictionary sizes, split counts against size,
and the children criterion (decoder cosine against co-activation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

__all__ = ["SplitNode", "criterion_figure", "split_counts_figure", "split_tree_figure"]


class SplitNode(NamedTuple):
    """One node of a split tree.

    Attributes:
        level: the dictionary size's index (0 = the root's dictionary).
        parent: index of the parent node in the tree's node list (−1 for the root).
        label: the node's text (may span lines).
        cosine: decoder cosine with the root (colours the node).
        hidden: children of the root at this level that are not drawn (the level's total is
            shown as "+n more" under its lowest node; give it on one node of the level).
    """

    level: int
    parent: int
    label: str
    cosine: float
    hidden: int = 0


def _layout(nodes: Sequence[SplitNode]) -> tuple[np.ndarray, int]:
    """y position of every node (levels ordered by their parents' y, then as given, centred
    on the widest level) and the widest level's node count."""
    y = np.zeros(len(nodes))
    levels = sorted({n.level for n in nodes})
    width = max(sum(1 for n in nodes if n.level == lv) for lv in levels)
    for lv in levels:
        mine = [i for i, n in enumerate(nodes) if n.level == lv]
        mine.sort(key=lambda i: (y[nodes[i].parent] if nodes[i].parent >= 0 else 0.0, i))
        offset = (width - len(mine)) / 2
        for rank, i in enumerate(mine):
            y[i] = offset + rank
    return y, width


def split_tree_figure(
    trees: Sequence[Sequence[SplitNode]],
    level_labels: Sequence[str],
    titles: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Split trees, one panel per tree: dictionary sizes left to right, each node a box joined
    to its parent, its edge coloured by the decoder cosine with the root.

    Args:
        trees: per tree its nodes (a parent before its children).
        level_labels: one label per level (e.g. "N = 512"), the column headings.
        titles: one title per tree.
        title: the figure's title.
    """
    if len(trees) != len(titles):
        raise ValueError(f"{len(trees)} trees but {len(titles)} titles")
    n_levels = len(level_labels)
    layouts = [_layout(t) if t else (np.zeros(0), 1) for t in trees]
    heights = [max(w, 1) * 0.62 + 0.7 for _, w in layouts]
    fig = new_figure((2.75 * n_levels + 0.4, sum(heights) + 0.6 if trees else 2.0), constrained=True)
    if not trees:
        fig.suptitle(title or "no split trees")
        return fig
    axes = fig.subplots(len(trees), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    cmap = colormap("viridis")
    for ax, nodes, (y, width), name in zip(axes, trees, layouts, titles):
        for i, n in enumerate(nodes):
            if n.parent >= 0:
                p = nodes[n.parent]
                ax.plot([p.level + 0.42, n.level - 0.42], [y[n.parent], y[i]], color="0.6", lw=0.8, zorder=1)
        for i, n in enumerate(nodes):
            colour = cmap(float(np.clip(n.cosine, 0.0, 1.0)))
            ax.text(n.level, y[i], n.label, ha="center", va="center", fontsize=5.6, family="monospace", zorder=2,
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": colour, "lw": 1.4})
        for level in {n.level for n in nodes}:
            hidden = sum(n.hidden for n in nodes if n.level == level)
            if hidden:  # under the level's lowest node, whichever the layout put there
                bottom = max(y[i] for i, n in enumerate(nodes) if n.level == level)
                ax.text(level, bottom + 0.45, f"+{hidden} more", ha="center", va="top", fontsize=6, color="0.35")
        ax.set_xlim(-0.5, n_levels - 0.5)
        ax.set_ylim(width - 0.35, -0.65)
        ax.set_xticks(range(n_levels))
        ax.set_xticklabels(level_labels)
        ax.xaxis.set_ticks_position("top")
        ax.set_yticks([])
        for side in ("right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_title(name, fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def split_counts_figure(
    sizes: np.ndarray,
    mean_children: np.ndarray,
    frac_ge2: np.ndarray,
    histograms: Sequence[Sequence[int]],
    *,
    title: str = "",
    top_bin: int = 4,
) -> Figure:
    """Split counts against dictionary size: the mean number of children per feature and the
    share with ≥ 2 (left), and the distribution of the counts (right, stacked, `top_bin`+ last).

    Args:
        sizes: (n,) dictionary sizes.
        mean_children, frac_ge2: (n,) per size.
        histograms: per size, the number of features with 0, 1, 2, ... children.
    """
    sizes = np.asarray(sizes, np.float64)
    fig = new_figure((10.0, 3.9), constrained=True)
    left, right = fig.subplots(1, 2)
    left.plot(sizes, mean_children, marker="o", color="C0", label="mean children per feature")
    left.set_xscale("log", base=2)
    left.set_xlabel("dictionary size N")
    left.set_ylabel("mean children per feature", color="C0")
    twin = left.twinx()
    twin.plot(sizes, frac_ge2, marker="s", ls="--", color="C3", label="share with ≥ 2 children")
    twin.set_ylim(0, 1)
    twin.set_ylabel("share of features with ≥ 2 children", color="C3")
    left.set_xticks(sizes)
    left.set_xticklabels([f"{int(s)}" for s in sizes], fontsize=7)
    left.set_title("split counts vs dictionary size", fontsize=9)
    shares = np.zeros((len(histograms), top_bin + 1))
    for i, h in enumerate(histograms):
        h = np.asarray(h, np.float64)
        total = max(h.sum(), 1.0)
        shares[i, : min(top_bin, h.size)] = h[:top_bin] / total
        shares[i, top_bin] = h[top_bin:].sum() / total
    bottom = np.zeros(len(histograms))
    colours = colormap("magma")(np.linspace(0.15, 0.85, top_bin + 1))
    x = np.arange(len(histograms))
    for j in range(top_bin + 1):
        right.bar(x, shares[:, j], bottom=bottom, color=colours[j], label=f"{j}" if j < top_bin else f"{top_bin}+")
        bottom += shares[:, j]
    right.set_xticks(x)
    right.set_xticklabels([f"{int(s)}" for s in sizes], fontsize=7)
    right.set_xlabel("dictionary size N")
    right.set_ylabel("share of features")
    right.set_ylim(0, 1)
    right.legend(title="children", fontsize=7, title_fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    right.set_title("distribution of split counts", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def criterion_figure(
    cosines: Sequence[np.ndarray],
    coactivations: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    cosine_threshold: float,
    coactivation_threshold: float,
) -> Figure:
    """The children criterion: for every live latent of each dictionary, the decoder cosine
    with its nearest small-dictionary feature against P(that feature fires | the latent fires),
    with the thresholds (children lie top right).

    Args:
        cosines, coactivations: per dictionary, (n_latents,) each.
        labels: one per dictionary.
    """
    fig = new_figure((6.2, 4.6), constrained=True)
    ax = fig.subplots()
    colours = colormap("plasma")(np.linspace(0.0, 0.85, max(len(labels), 1)))
    for c, p, label, colour in zip(cosines, coactivations, labels, colours):
        share = float(np.mean((np.asarray(c) >= cosine_threshold) & (np.asarray(p) >= coactivation_threshold))) \
            if len(c) else 0.0
        ax.scatter(c, p, s=3, alpha=0.35, color=colour, lw=0, label=f"{label} ({share:.0%} in the corner)")
    ax.axvline(cosine_threshold, color="0.3", ls="--", lw=0.8)
    ax.axhline(coactivation_threshold, color="0.3", ls="--", lw=0.8)
    ax.set_xlabel("decoder cosine with the nearest small-dictionary feature")
    ax.set_ylabel("P(that feature fires | latent fires)")
    ax.set_xlim(-0.05, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, markerscale=3, loc="upper left")
    ax.set_title("children criterion (held-out tokens): children lie top right", fontsize=9)
    return fig
