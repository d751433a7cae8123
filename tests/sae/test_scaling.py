"""Power-law fits, SAE FLOPs and the compute frontier against closed forms."""

import numpy as np
import pytest

from superpos_jax.sae.scaling import (
    PowerLaw,
    compute_optimal,
    fit_power_law,
    loss_frontier,
    sae_training_flops,
)


@pytest.mark.parametrize("a, b, c", [(5.0, 0.5, 0.1), (2.0, 0.3, 0.5), (40.0, 1.2, 0.01)])
def test_recovers_noiseless_law_with_irreducible_term(a, b, c):
    x = np.logspace(1, 5, 12)
    fit = fit_power_law(x, a * x**-b + c)
    np.testing.assert_allclose([fit.a, fit.b, fit.c], [a, b, c], rtol=1e-3)
    assert fit.r2 > 1 - 1e-9 and fit.n_points == 12


def test_pure_power_law_is_exact():
    x = np.array([3.0, 10.0, 70.0, 400.0, 2e3])
    fit = fit_power_law(x, 2.5 * x**-0.7, irreducible=False)
    np.testing.assert_allclose([fit.a, fit.b], [2.5, 0.7], rtol=1e-12)
    assert fit.c == 0.0
    np.testing.assert_allclose(fit(x), 2.5 * x**-0.7, rtol=1e-12)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-12)


def test_irreducible_fit_of_pure_power_law_finds_small_c():
    x = np.logspace(0, 4, 10)
    fit = fit_power_law(x, 3.0 * x**-0.4)
    assert fit.c < 1e-6
    np.testing.assert_allclose([fit.a, fit.b], [3.0, 0.4], rtol=1e-4)


def test_noise_robustness(rng):
    x = np.logspace(1, 5, 30)
    y = (4.0 * x**-0.5 + 0.05) * np.exp(0.02 * rng.standard_normal(x.size))
    fit = fit_power_law(x, y)
    assert abs(fit.b - 0.5) < 0.1
    assert abs(fit.c - 0.05) < 0.02
    assert fit.r2 > 0.98
    # the fitted law beats the pure power law in log-space residual
    pure = fit_power_law(x, y, irreducible=False)
    assert fit.r2 >= pure.r2


def test_call_and_label():
    law = PowerLaw(a=2.0, b=0.5, c=0.1)
    np.testing.assert_allclose(law(np.array([4.0, 100.0])), [1.1, 0.3])
    assert law.label("C") == "L = 2·C^−0.5 + 0.1"
    assert PowerLaw(a=3.0, b=-0.25).label() == "L = 3·N^0.25"


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([1.0, 2.0], [1.0, 0.5], "at least 3 points"),
        ([1.0, 2.0, 3.0], [1.0, 0.5], "same length"),
        ([[1.0, 2.0, 3.0]], [[1.0, 0.5, 0.2]], "1-D"),
        ([1.0, -2.0, 3.0], [1.0, 0.5, 0.2], "> 0"),
        ([1.0, 2.0, 3.0], [1.0, 0.0, 0.2], "> 0"),
        ([1.0, 2.0, 3.0], [1.0, np.nan, 0.2], "finite"),
        ([2.0, 2.0, 2.0], [1.0, 0.5, 0.2], "distinct"),
    ],
)
def test_fit_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(np.asarray(x), np.asarray(y))


def test_sae_training_flops():
    assert sae_training_flops(512, 4096, 1e6) == 12 * 512 * 4096 * 1e6
    with pytest.raises(ValueError):
        sae_training_flops(0, 10, 10)


def _isoflop_grid(k: float, e: float):
    """Loss (log N − log N_opt(C))² + C^−0.1 on sizes 2^j, budgets with N_opt(C) = k·C^e = 2^m."""
    sizes_grid = 2.0 ** np.arange(6, 17)
    opt_exponents = np.arange(8, 15)
    budgets = ((2.0**opt_exponents) / k) ** (1.0 / e)
    sizes, computes, losses = [], [], []
    for c in budgets:
        n_opt = k * c**e
        for n in sizes_grid:
            sizes.append(n)
            computes.append(c)
            losses.append((np.log(n) - np.log(n_opt)) ** 2 + c**-0.1)
    return np.array(sizes), np.array(computes), np.array(losses), budgets


def test_compute_optimal_picks_argmin_and_recovers_exponent(rng):
    sizes, computes, losses, budgets = _isoflop_grid(k=3e-3, e=0.6)
    perm = rng.permutation(sizes.size)
    sizes, computes, losses = sizes[perm], computes[perm], losses[perm]
    result = compute_optimal(sizes, computes, losses)
    np.testing.assert_allclose(result.computes, np.sort(budgets), rtol=1e-12)
    for c, n, i in zip(result.computes, result.sizes, result.indices):
        same = np.isclose(computes, c, rtol=1e-9)
        assert losses[i] == losses[same].min() and sizes[i] == n and np.isclose(computes[i], c)
    np.testing.assert_allclose(result.exponent, 0.6, rtol=1e-9)
    np.testing.assert_allclose(result.fit.a, 3e-3, rtol=1e-6)
    np.testing.assert_allclose(result.optimal_size(budgets), 3e-3 * budgets**0.6, rtol=1e-6)


def test_compute_optimal_refine_finds_off_grid_vertex():
    sizes_grid = 2.0 ** np.arange(6, 19)
    budgets = np.logspace(9, 13, 5)
    k, e = 0.02, 0.5
    sizes, computes, losses = [], [], []
    for c in budgets:
        for n in sizes_grid:
            sizes.append(n)
            computes.append(c * (1 + 1e-9 * len(sizes)))  # budgets equal only up to rtol
            losses.append(0.3 * (np.log(n) - np.log(k * c**e)) ** 2 + 1.0)
    result = compute_optimal(sizes, computes, losses, refine=True)
    assert result.computes.size == budgets.size
    np.testing.assert_allclose(result.sizes, k * budgets**e, rtol=1e-6)
    np.testing.assert_allclose(result.exponent, e, rtol=1e-6)
    coarse = compute_optimal(sizes, computes, losses)
    assert not np.allclose(coarse.sizes, k * budgets**e, rtol=1e-3)


def test_compute_optimal_ties_and_nan_and_few_budgets():
    sizes = np.array([1.0, 2.0, 4.0, 8.0])
    computes = np.array([1e6, 1e6, 1e6, 2e6])
    losses = np.array([0.5, 0.2, 0.2, np.nan])
    result = compute_optimal(sizes, computes, losses)
    assert result.indices.tolist() == [1] and result.sizes.tolist() == [2.0]
    assert result.fit is None and np.isnan(result.exponent)
    with pytest.raises(ValueError, match="one length"):
        compute_optimal(sizes, computes[:3], losses)
    with pytest.raises(ValueError, match="> 0"):
        compute_optimal(-sizes, computes, losses)


def test_loss_frontier_is_running_minimum():
    computes = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    losses = np.array([1.0, 0.8, 0.9, 0.85, 0.5, np.nan])
    assert loss_frontier(computes, losses).tolist() == [0, 1, 4]
