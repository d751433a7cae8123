"""SAE figures render from small synthetic inputs; the Pareto-front logic against its definition."""

import numpy as np
import pytest

from superpos_jax import plots
from superpos_jax.plots import sae as sae_plots
from superpos_jax.sae.scaling import compute_optimal, fit_power_law, sae_training_flops


def _saved(fig, path):
    out = plots.save(fig, path)
    assert out.exists() and out.stat().st_size > 1000
    return out


def _dominated_brute_force(l0, fvu):
    n = len(l0)
    return [
        any(
            l0[j] <= l0[i] and fvu[j] <= fvu[i] and (l0[j] < l0[i] or fvu[j] < fvu[i])
            for j in range(n)
        )
        for i in range(n)
    ]


def test_pareto_front_matches_definition(rng):
    l0 = rng.integers(1, 8, 60).astype(float)  # coarse values force ties in L0
    fvu = rng.integers(1, 8, 60).astype(float) / 10
    front = sae_plots.pareto_front(l0, fvu)
    dominated = _dominated_brute_force(l0, fvu)
    assert sorted(front.tolist()) == [i for i in range(60) if not dominated[i]]
    assert np.all(np.diff(l0[front]) >= 0)
    assert np.all(np.diff(fvu[front]) <= 0)


def test_pareto_front_ties_duplicates_and_nan():
    l0 = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, np.nan, 0.5])
    fvu = np.array([0.5, 0.6, 0.3, 0.3, 0.4, 0.3, 0.01, np.inf])
    # 1 (same L0, higher FVU than 0), 4 (same L0 as 2, higher FVU) and 5 (same FVU, higher L0)
    # are dominated; the duplicates 2 and 3 are both kept; non-finite points never count.
    assert sae_plots.pareto_front(l0, fvu).tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="one length"):
        sae_plots.pareto_front(l0, fvu[:3])


def test_pareto_figure(tmp_path, rng):
    sizes = np.repeat([1024, 4096, 256], 6)
    l0 = np.tile(np.geomspace(4, 128, 6), 3) * np.exp(0.1 * rng.standard_normal(18))
    fvu = 0.5 * l0**-0.5 / np.log2(sizes)
    l0[3] = np.nan
    fig = sae_plots.pareto(l0, fvu, groups=sizes, annotate=[f"k={i}" for i in range(18)])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["256", "1024", "4096"]
    assert any("1 run(s) not shown" in t.get_text() for t in ax.texts)
    _saved(fig, tmp_path / "pareto.png")
    with pytest.raises(ValueError, match="groups"):
        sae_plots.pareto(l0, fvu, groups=["a"])


@pytest.mark.parametrize("overlay", [False, True])
def test_density_histograms(tmp_path, rng, overlay):
    dens = {name: 10.0 ** rng.uniform(-5, 0, 300) for name in ("ReLU", "TopK")}
    dens["ReLU"][:30] = 0.0
    fig = sae_plots.density_histograms(dens, bins=20, overlay=overlay)
    assert len(fig.axes) == (1 if overlay else 2)
    dead_heights = sorted(p.get_height() for ax in fig.axes for p in ax.patches if hasattr(p, "get_height"))
    assert 30 in dead_heights and 0 in dead_heights
    _saved(fig, tmp_path / f"density_{overlay}.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sae_plots.density_histograms({"bad": np.array([0.5, 1.5])})


def test_scaling_figure(tmp_path, rng):
    sizes = 2.0 ** np.arange(8, 16)
    losses = (2.0 * sizes**-0.4 + 0.01) * np.exp(0.01 * rng.standard_normal(8))
    fit = fit_power_law(sizes, losses)
    fig = sae_plots.scaling(sizes, losses, fit, groups=["TopK"] * 8)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "TopK" and labels[1].startswith("L = ") and "irreducible" in labels[2]
    _saved(fig, tmp_path / "scaling.png")
    _saved(sae_plots.scaling(sizes, losses), tmp_path / "scaling_nofit.png")


def test_compute_optimal_figure(tmp_path):
    n_runs, c_runs, l_runs = [], [], []
    for c in np.logspace(12, 15, 4):
        for n in 2.0 ** np.arange(8, 15):
            tokens = c / sae_training_flops(64, n, 1)
            n_runs.append(n)
            c_runs.append(c)
            l_runs.append(n**-0.3 + 20 * tokens**-0.3 + 0.01)
    n_runs, c_runs, l_runs = map(np.array, (n_runs, c_runs, l_runs))
    frontier = compute_optimal(n_runs, c_runs, l_runs)
    loss_fit = fit_power_law(frontier.computes, frontier.losses)
    fig = sae_plots.compute_optimal_figure(n_runs, c_runs, l_runs, frontier=frontier, loss_fit=loss_fit, title="t")
    assert all(ax.get_xscale() == "log" for ax in fig.axes[:3])
    assert any("N_opt" in t.get_text() for t in fig.axes[2].get_legend().get_texts())
    _saved(fig, tmp_path / "compute.png")
    _saved(sae_plots.compute_optimal_figure(n_runs, c_runs, l_runs), tmp_path / "compute_bare.png")


def test_recovery_figure(tmp_path, rng):
    max_cos = {"ReLU": 1 - rng.exponential(0.02, 64), "TopK": 1 - rng.exponential(0.002, 64)}
    fig = sae_plots.recovery(max_cos, hungarian={"ReLU": 0.9, "TopK": 0.97})
    bar_ax, hist_ax = fig.axes[:2]
    heights = [p.get_height() for p in bar_ax.patches]
    np.testing.assert_allclose(heights, [max_cos["ReLU"].mean(), max_cos["TopK"].mean(), 0.9, 0.97])
    share = int(round(100 * np.mean(max_cos["TopK"] >= 0.99)))
    assert f"TopK: {share}% ≥ 0.99" in [t.get_text() for t in hist_ax.get_legend().get_texts()]
    _saved(fig, tmp_path / "recovery.png")
    _saved(sae_plots.recovery(max_cos), tmp_path / "recovery_mmcs.png")
    with pytest.raises(ValueError, match="lacks"):
        sae_plots.recovery(max_cos, hungarian={"ReLU": 0.9})
