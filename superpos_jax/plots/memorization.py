"""Figures of *Superposition, Memorization, and Double Descent*: test and train loss against
the training-set size (the double-descent curve), feature vs data-point dimensionality
against it, and the 2-D pictures of feature directions W_i beside training hidden vectors h_t."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from superpos_jax.plots.base import colormap, new_figure

__all__ = ["dimensionality_figure", "double_descent_figure", "memorization_geometry_figure"]

FEATURE_COLOUR = "tab:blue"
DATA_COLOUR = "tab:red"


def _colours(n: int) -> np.ndarray:
    return colormap("viridis")(np.linspace(0.0, 0.85, max(n, 1)))


def double_descent_figure(
    n_train: Sequence[int],
    d_hidden: Sequence[int],
    test_loss: np.ndarray,
    train_loss: np.ndarray,
    *,
    zero_loss: float,
    peaks: Sequence[int] | None = None,
    title: str | None = None,
) -> Figure:
    """Test (solid) and train (dashed) loss against the training-set size T, one colour per m.

    Args:
        n_train: the T values (x axis, log scale), length n_T.
        d_hidden: the m values, length n_m.
        test_loss, train_loss: per seed, shape (n_m, n_T, n_seeds); the lines are the mean
            over seeds, the dots the seeds.
        zero_loss: the loss of the model that outputs 0 (grey reference line); the y axis
            is loss / zero_loss, log scale.
        peaks: the T of the test-loss maximum per m (marked), or None.
    """
    T = np.asarray(n_train, np.float64)
    test = np.asarray(test_loss, np.float64) / zero_loss
    train = np.asarray(train_loss, np.float64) / zero_loss
    fig = new_figure((7.5, 4.6), constrained=True)
    ax = fig.subplots()
    for k, (m, colour) in enumerate(zip(d_hidden, _colours(len(d_hidden)))):
        ax.plot(T, test[k].mean(axis=-1), "-o", color=colour, ms=4, label=f"test, m={m}")
        ax.plot(T, np.maximum(train[k].mean(axis=-1), 1e-6), "--", color=colour, alpha=0.8, label=f"train, m={m}")
        for s in range(test.shape[-1]):
            ax.scatter(T, test[k, :, s], s=6, color=colour, alpha=0.35, linewidths=0)
        if peaks is not None:
            j = int(np.flatnonzero(T == peaks[k])[0])
            ax.plot([T[j]], [test[k, j].mean()], marker="*", ms=13, color=colour, mec="black", mew=0.6)
    ax.axhline(1.0, color="grey", lw=1, ls=":", label="zero model")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(bottom=max(1e-4, 0.5 * float(np.nanmin(np.maximum(train, 1e-6)))))
    ax.set_xlabel("training-set size T")
    ax.set_ylabel("loss / loss of the zero model")
    ax.set_title(title or "double descent: test loss peaks between memorisation and generalisation", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def dimensionality_figure(
    n_train: Sequence[int],
    d_hidden: Sequence[int],
    feature_dims: np.ndarray,
    data_dims: Sequence[Sequence[np.ndarray]],
    feature_measure: np.ndarray,
    data_measure: np.ndarray,
    test_loss: np.ndarray,
    *,
    zero_loss: float,
    title: str | None = None,
) -> Figure:
    """Per m (columns): every feature's D_i and every training point's D_t against T for one
    seed (top; dots, log x with a little jitter), with the norm-weighted mean dimensionality
    of features and of data points (lines, mean over seeds); below, the test loss.

    Args:
        n_train, d_hidden: the T values (length n_T) and m values (length n_m).
        feature_dims: D_i of one seed, shape (n_m, n_T, n_features).
        data_dims: D_t of the same seed, `data_dims[k][j]` of shape (T_j,).
        feature_measure, data_measure: norm-weighted mean dimensionalities, (n_m, n_T, n_seeds).
        test_loss: (n_m, n_T, n_seeds), drawn as loss / zero_loss (mean and seeds).
    """
    T = np.asarray(n_train, np.float64)
    n_m = len(d_hidden)
    fig = new_figure((3.6 * n_m + 0.8, 6.2), constrained=True)
    axes = fig.subplots(2, n_m, squeeze=False, sharex=True, gridspec_kw={"height_ratios": [2.0, 1.0]})
    rng = np.random.default_rng(0)
    for k, m in enumerate(d_hidden):
        ax = axes[0, k]
        for j, t in enumerate(T):
            di = np.asarray(feature_dims[k, j])
            dt = np.asarray(data_dims[k][j])
            ax.scatter(t * np.exp(rng.uniform(-0.12, 0.12, di.size)), di, s=5, color=FEATURE_COLOUR, alpha=0.35,
                       linewidths=0, label="features D_i" if j == 0 else None)
            ax.scatter(t * np.exp(rng.uniform(-0.12, 0.12, dt.size)), dt, s=5, color=DATA_COLOUR, alpha=0.35,
                       linewidths=0, label="data points D_t" if j == 0 else None)
        ax.plot(T, feature_measure[k].mean(axis=-1), "-", color=FEATURE_COLOUR, lw=2, label="features (norm-weighted)")
        ax.plot(T, data_measure[k].mean(axis=-1), "-", color=DATA_COLOUR, lw=2, label="data points (norm-weighted)")
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(f"m = {m}", fontsize=10)
        if k == 0:
            ax.set_ylabel("dimensionality")
            ax.legend(fontsize=7, loc="upper right")
        low = axes[1, k]
        loss = np.asarray(test_loss[k], np.float64) / zero_loss
        low.plot(T, loss.mean(axis=-1), "-o", ms=3, color="black")
        for s in range(loss.shape[-1]):
            low.scatter(T, loss[:, s], s=6, color="black", alpha=0.3, linewidths=0)
        low.axhline(1.0, color="grey", lw=1, ls=":")
        low.set_yscale("log")
        low.set_xscale("log", base=2)
        low.set_xlabel("training-set size T")
        if k == 0:
            low.set_ylabel("test loss / zero model")
    fig.suptitle(title or "small T: data points get the dimensions; large T: features do", fontsize=9 if n_m < 3 else 11)
    return fig


def memorization_geometry_figure(
    weights: Sequence[np.ndarray],
    hidden: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    title: str | None = None,
) -> Figure:
    """2-D pictures of a width-2 model: the feature directions W_i (top row) and the training
    hidden vectors h_t = W x_t (bottom row), one column per model.

    Args:
        weights: per model W of shape (2, n_features).
        hidden: per model H of shape (2, T) (the training points' hidden vectors).
        labels: one column title per model.
    """
    n = len(weights)
    fig = new_figure((3.3 * n, 6.6), constrained=True)
    axes = fig.subplots(2, n, squeeze=False)
    for c in range(n):
        for r, (vectors, colour, what) in enumerate(((weights[c], FEATURE_COLOUR, "features W_i"),
                                                     (hidden[c], DATA_COLOUR, "hidden vectors h_t"))):
            ax = axes[r, c]
            v = np.asarray(vectors, np.float64)
            norms = np.linalg.norm(v, axis=0)
            top = max(float(norms.max()) if norms.size else 1.0, 1e-6)
            # Long vectors opaque, short ones faint: the geometry is in the long ones.
            alphas = np.clip(norms / top, 0.06, 1.0) * float(np.clip(20.0 / max(v.shape[1], 1), 0.25, 1.0))
            for (x, y), a in zip(v.T, alphas):
                ax.plot([0.0, x], [0.0, y], color=colour, lw=1.2, alpha=float(a))
            ax.scatter(v[0], v[1], s=7, color=colour, alpha=np.clip(2 * alphas, 0.0, 1.0), linewidths=0)
            lim = 1.1 * top
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{labels[c]}: {what}", fontsize=9)
    fig.suptitle(title or "memorisation: clean data-point geometry; generalisation: clean feature geometry", fontsize=10)
    return fig
