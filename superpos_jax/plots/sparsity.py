"""The sparsity-sweep figure: WᵀW heatmaps above feature-norm bars coloured by superposition."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure
from superpos_jax.toy import metrics


def _sparsity_label(p: float) -> str:
    return f"1−S = {p:g}"


def sparsity_figure(
    weights: np.ndarray,
    feature_probabilities: Sequence[float],
    model_names: Sequence[str],
    *,
    superposition: np.ndarray | None = None,
    title: str | None = None,
) -> Figure:
    """The paper's sparsity sweep figure.

    For every model (row block) and feature probability (column): the n × n matrix WᵀW as a
    heatmap (diverging colour map, ±1), and below it one horizontal bar per feature of length
    ‖W_i‖, coloured from dark blue (no superposition) to yellow (fully superposed) by
    sqrt(Σ_{j≠i} (Ŵ_i · W_j)²).

    Args:
        weights: W of shape (n_models, n_probabilities, d_hidden, n_features).
        feature_probabilities: the column labels, length n_probabilities.
        model_names: the row-block labels, length n_models.
        superposition: optional precomputed sqrt-superposition, shape
            (n_models, n_probabilities, n_features); computed from `weights` if omitted.
    """
    weights = np.asarray(weights, np.float64)
    n_models, n_probs, _, n_features = weights.shape
    if superposition is None:
        flat = jnp.asarray(weights.reshape(-1, *weights.shape[2:]), jnp.float32)
        sup = jax.vmap(lambda w: metrics.superposition(w, sqrt=True))(flat)
        superposition = np.asarray(sup).reshape(n_models, n_probs, n_features)
    cmap_bar = colormap("viridis")
    norm_bar = colors.Normalize(0.0, 1.0)

    fig = new_figure((1.75 * n_probs + 1.4, 3.9 * n_models))
    axes = fig.subplots(
        2 * n_models, n_probs,
        gridspec_kw={"height_ratios": [1.0, 1.0] * n_models, "hspace": 0.35, "wspace": 0.12},
        squeeze=False,
    )
    fig.subplots_adjust(left=0.07, right=0.88, top=0.9 if title else 0.95, bottom=0.05)
    for r in range(n_models):
        for c in range(n_probs):
            W = weights[r, c]
            ax = axes[2 * r, c]
            ax.imshow(W.T @ W, cmap="RdBu", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_sparsity_label(feature_probabilities[c]), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{model_names[r]}\nWᵀW", fontsize=10)
            ax = axes[2 * r + 1, c]
            norms = np.linalg.norm(W, axis=0)
            ax.barh(np.arange(n_features), norms, color=cmap_bar(norm_bar(superposition[r, c])), height=0.8)
            ax.set_ylim(n_features - 0.5, -0.5)
            ax.set_xlim(0, max(1.2, float(norms.max()) * 1.05))
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=7)
            if c == 0:
                ax.set_ylabel("‖W_i‖\n(feature 0 on top)", fontsize=8)
    cax = fig.add_axes((0.9, 0.3, 0.015, 0.4))
    fig.colorbar(cm.ScalarMappable(norm=norm_bar, cmap=cmap_bar), cax=cax,
                 label="bar colour: superposition  sqrt(Σ_{j≠i} (Ŵ_i·W_j)²)")
    if title:
        fig.suptitle(title)
    return fig
