"""Induction-head figures: the phase change in the loss, per-head score trajectories, and
attention patterns of chosen heads on one repeated sequence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

LAYER_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown")


def _mark(ax: Axes, steps: Sequence[float | int | None], colours: Sequence[Any]) -> None:
    for step, colour in zip(steps, colours):
        if step is not None:
            ax.axvline(float(step), color=colour, ls="--", lw=0.8, alpha=0.7)


def phase_change_loss_figure(
    steps: npt.ArrayLike,
    total: npt.ArrayLike,
    first: npt.ArrayLike,
    repeat: npt.ArrayLike,
    *,
    phase_steps: Sequence[float | int | None] = (),
    chance: float | None = None,
    title: str = "",
) -> Figure:
    """Training loss, first-half loss and repeat loss against step, one colour per seed.

    Args:
        steps: (window,) step at the end of each logged window.
        total: (seed, window) training loss; first, repeat: (seed, window) losses on the
            evaluation sequences' first half and repeat (`induction.split_losses`).
        phase_steps: per seed, the detected phase-change step (dashed line) or None.
        chance: a reference level (e.g. log(d_vocab − 1)), drawn dotted.
    """
    steps = np.asarray(steps)
    panels = (("training loss (all positions)", total), ("first half (unpredictable)", first),
              ("repeat (predictable by copying)", repeat))
    n_seeds = np.shape(total)[0]
    colours = [colormap("viridis")(x) for x in np.linspace(0.0, 0.85, n_seeds)]
    fig = new_figure((13, 3.8), constrained=True)
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (label, values) in zip(axes, panels):
        for s in range(n_seeds):
            ax.plot(steps, np.asarray(values)[s], color=colours[s], lw=1.2, label=f"seed {s}")
        _mark(ax, phase_steps, colours)
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="log(vocab − 1)")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss (nats)")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def score_trajectories_figure(
    steps: npt.ArrayLike,
    induction: npt.ArrayLike,
    previous: npt.ArrayLike,
    repeat: npt.ArrayLike,
    *,
    phase_steps: Sequence[float | int | None] = (),
    title: str = "",
) -> Figure:
    """Per-head induction and previous-token scores over training, one column per seed.

    Args:
        steps: (window,).
        induction, previous: (seed, window, layer, head) scores; one line per head, coloured
            by layer.
        repeat: (seed, window) repeat loss, drawn in the bottom row with the phase change.
        phase_steps: per seed, the detected phase-change step or None (dashed lines).
    """
    steps = np.asarray(steps)
    induction, previous, repeat = np.asarray(induction), np.asarray(previous), np.asarray(repeat)
    n_seeds, _, n_layers, n_heads = induction.shape
    fig = new_figure((4.2 * n_seeds, 7.5), constrained=True)
    axes = fig.subplots(3, n_seeds, sharex=True, squeeze=False)
    for s in range(n_seeds):
        for row, (name, values) in enumerate((("induction score", induction), ("previous-token score", previous))):
            ax = axes[row, s]
            for layer in range(n_layers):
                for head in range(n_heads):
                    ax.plot(steps, values[s, :, layer, head], color=LAYER_COLOURS[layer % len(LAYER_COLOURS)],
                            lw=1.0, alpha=0.85, label=f"layer {layer}" if head == 0 else None)
            ax.set_ylim(-0.02, 1.02)
            if s == 0:
                ax.set_ylabel(name)
            if row == 0:
                ax.set_title(f"seed {s}", fontsize=10)
            _mark(ax, [phase_steps[s] if s < len(phase_steps) else None], ["k"])
        ax = axes[2, s]
        ax.plot(steps, repeat[s], color="k", lw=1.2)
        _mark(ax, [phase_steps[s] if s < len(phase_steps) else None], ["k"])
        ax.set_xlabel("step")
        if s == 0:
            ax.set_ylabel("repeat loss")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attention_patterns_figure(
    tokens: npt.ArrayLike,
    patterns: Sequence[npt.ArrayLike],
    labels: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """Heatmaps of attention patterns (query rows, key columns) on one sequence.

    Args:
        tokens: (pos,) the sequence, printed along the axes.
        patterns: one (pos, pos) pattern per panel.
        labels: a title per panel.
    """
    tokens = np.asarray(tokens)
    n = len(patterns)
    fig = new_figure((5.2 * n, 5.0), constrained=True)
    axes = fig.subplots(1, n, squeeze=False)
    ticks = np.arange(tokens.shape[0])
    for ax, pattern, label in zip(axes[0], patterns, labels):
        im = ax.imshow(np.asarray(pattern), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(ticks, [str(t) for t in tokens], fontsize=5, rotation=90)
        ax.set_yticks(ticks, [str(t) for t in tokens], fontsize=5)
        ax.set_xlabel("key (attended-to) token")
        ax.set_ylabel("query token")
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
