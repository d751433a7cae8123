"""Every public figure function returns a Figure built without pyplot; `plots.save` is the one
writer (parents created, PNG written, figure released)."""

import gc
import subprocess
import sys
import weakref

import numpy as np
import pytest
from matplotlib.figure import Figure

from superpos_jax import plots
from superpos_jax.plots import features2d, neurons

PROBS = [1.0, 0.5, 0.2, 0.1, 0.05]


def _cases(rng):
    steps = np.arange(1, 21) * 10
    return {
        "vulnerability_figure": lambda: plots.vulnerability_figure(
            PROBS, ["linear", "relu"], rng.uniform(0.5, 3, (2, 5, 3)), rng.uniform(0.5, 3, (2, 5, 3)),
            relative_increase=rng.uniform(0, 1, (2, 5, 3)), title="t"),
        "phase_change_loss_figure": lambda: plots.phase_change_loss_figure(
            steps, rng.uniform(1, 3, (2, 20)), rng.uniform(1, 3, (2, 20)), rng.uniform(0, 3, (2, 20)),
            phase_steps=[50, None], chance=2.5),
        "score_trajectories_figure": lambda: plots.score_trajectories_figure(
            steps, rng.uniform(0, 1, (2, 20, 2, 3)), rng.uniform(0, 1, (2, 20, 2, 3)), rng.uniform(0, 3, (2, 20)),
            phase_steps=[50, 120]),
        "attention_patterns_figure": lambda: plots.attention_patterns_figure(
            rng.integers(0, 9, 7), [rng.dirichlet(np.ones(7), 7)] * 2, ["a", "b"]),
        "loss_curves": lambda: plots.loss_curves(rng.uniform(0.01, 1, (4, 30)), list("abcd"), log_every=5),
        "dynamics_figure": lambda: plots.dynamics_figure(
            steps, rng.uniform(0, 1, (2, 2, 20, 6)), rng.uniform(0.01, 1, (2, 2, 20)), [["a", "b"], ["c", "d"]],
            [1.0, 0.5, 0.4], jumps=[[[30], []], [[], [100, 150]]]),
        "feature_diagrams": lambda: plots.feature_diagrams(
            rng.normal(size=(2, 3, 2, 5)), importance=0.9 ** np.arange(5), col_labels=["x", "y", "z"],
            notes=[["n"] * 3, ["m"] * 3], legend=[("a", "red", "-")]),
        "feature_diagrams_3d": lambda: plots.feature_diagrams(
            rng.normal(size=(1, 2, 3, 4)), colors_=features2d.pair_colors(4), gram=False,
            mask=np.array([1, 1, 1, 0], bool)),
        "geometry_figure": lambda: plots.geometry_figure(
            np.array(PROBS), rng.uniform(0.3, 1, (5, 2)), rng.uniform(0, 1, (5, 2, 10)), [1.0, 0.75, 0.5],
            represented=rng.uniform(size=(5, 2, 10)) > 0.3),
        "privileged_basis_figure": lambda: plots.privileged_basis_figure(
            rng.normal(size=(3, 4, 6)), [1.0, 0.3, 0.1], n_carried=rng.integers(0, 3, (3, 4))),
        "abs_computation_figure": lambda: plots.abs_computation_figure(
            rng.normal(size=(2, 4, 6)), rng.normal(size=(2, 6, 4)), [1.0, 0.1], n_carried=rng.integers(0, 3, (2, 4)),
            neurons_per_feature=rng.integers(0, 3, (2, 6)), markers=[{0: "A"}, {1: "I"}]),
        "phase_diagram_figure": lambda: plots.phase_diagram_figure(
            rng.integers(0, 3, (4, 5)), rng.integers(0, 3, (4, 5)), np.geomspace(0.1, 10, 5), np.geomspace(0.01, 1, 4),
            phase_names=["a", "b", "c"]),
        "sparsity_figure": lambda: plots.sparsity_figure(
            rng.normal(size=(2, 3, 2, 5)), [1.0, 0.1, 0.01], ["linear", "relu"]),
    }


NAMES = list(_cases(np.random.default_rng(0)))


@pytest.mark.parametrize("name", NAMES)
def test_figure_functions_return_a_figure_and_save_writes_it(name, tmp_path, rng):
    fig = _cases(rng)[name]()
    assert type(fig) is Figure and fig.axes
    path = plots.save(fig, tmp_path / "deep" / "er" / f"{name}.png")
    assert path == tmp_path / "deep" / "er" / f"{name}.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert not fig.axes  # released


def test_figures_match_their_arguments(rng):
    fig = plots.feature_diagrams(rng.normal(size=(2, 3, 2, 5)), col_labels=["x", "y", "z"], gram=True)
    assert len(fig.axes) == 2 * 2 * 3 + 1  # diagram and WᵀW per panel, one WᵀW colour bar
    fig = plots.sparsity_figure(rng.normal(size=(2, 3, 2, 5)), [1.0, 0.1, 0.01], ["linear", "relu"], title="s")
    assert fig.get_suptitle() == "s" and [ax.get_title() for ax in fig.axes[:3]] == ["1−S = 1", "1−S = 0.1", "1−S = 0.01"]
    fig = plots.loss_curves(np.ones((3, 4)), ["a", "b", "c"], log_every=10)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[0].get_xdata()) == [10, 20, 30, 40]


def test_save_releases_the_figure_and_closes_a_pyplot_one(tmp_path):
    fig = plots.loss_curves(np.ones((1, 3)), ["a"])
    ref = weakref.ref(fig)
    plots.save(fig, tmp_path / "a.png")
    del fig
    gc.collect()
    assert ref() is None  # nothing (no pyplot registry) keeps it alive
    code = (
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; from superpos_jax import plots;"
        f"fig, ax = plt.subplots(); ax.plot([1, 2]); plots.save(fig, {str(tmp_path / 'b.png')!r});"
        "assert plt.get_fignums() == [], plt.get_fignums(); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok" and (tmp_path / "b.png").exists()


def test_plotting_loads_no_pyplot_and_keeps_the_backend(tmp_path):
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); import numpy as np; from superpos_jax import plots;"
        "rng = np.random.default_rng(0);"
        "fig = plots.privileged_basis_figure(rng.normal(size=(2, 3, 5)), [1.0, 0.1], n_carried=np.ones((2, 3)));"
        f"plots.save(fig, {str(tmp_path / 'p.png')!r});"
        "plots.save(plots.sae.pareto(np.array([1.0, 2.0]), np.array([0.5, 0.2])), "
        f"{str(tmp_path / 'q.png')!r});"
        "print('matplotlib.pyplot' in sys.modules, matplotlib.get_backend())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "svg"], out.stdout + out.stderr


def test_neuron_helpers_draw_on_a_given_axes(rng):
    fig = Figure()
    ax = fig.subplots()
    W = rng.normal(size=(4, 6))
    order = neurons.neuron_order(W)
    assert sorted(order.tolist()) == list(range(4))
    neurons.neuron_stack(ax, W, order, polysemantic=np.array([True, False, False, True]))
    assert len(ax.collections) == 1 and len(ax.collections[0].get_paths()) == np.count_nonzero(W)
