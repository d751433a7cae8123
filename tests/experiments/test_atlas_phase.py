"""Phase diagrams of an extra feature (phase-2x1, phase-3x2) and the theory behind them.

The expected-loss primitive is checked against closed forms and a float64 Monte-Carlo estimate;
the theory and trained models (reduced configs, one compiled sweep each) must both put the
dense-regime split at r = 1 and the sparse extra feature into superposition.
"""

import dataclasses

import numpy as np
import pytest

from superpos_experiments import phase_2x1, phase_3x2, phase_common
from superpos_jax.toy import theory
from superpos_jax.config import ConfigError, validate

NOT_REP, DEDICATED, SUPERPOSED = theory.NOT_REPRESENTED, theory.DEDICATED, theory.SUPERPOSITION


def _monte_carlo_loss(W, b, importance, p, *, n_samples, seed=0):
    """Float64 brute-force estimate of the toy loss (mean over features) and its standard error."""
    rng = np.random.default_rng(seed)
    n = W.shape[1]
    x = rng.uniform(size=(n_samples, n)) * (rng.uniform(size=(n_samples, n)) < p)
    out = np.maximum(x @ W.T @ W + b, 0.0)
    per_example = np.mean(importance * (x - out) ** 2, axis=1)
    return per_example.mean(), per_example.std() / np.sqrt(n_samples)


def test_relu_output_error_matches_quadrature():
    t = (np.arange(200_000) + 0.5) / 200_000
    for g in (0.0, 0.3, 1.0, 2.5):
        for c in (-3.0, -1.0, -0.2, 0.0, 0.4, 2.0):
            reference = np.mean((t - np.maximum(g * t + c, 0.0)) ** 2)
            got = float(theory.relu_output_error(np.float32(g), np.float32(c)))
            assert got == pytest.approx(reference, rel=1e-4, abs=1e-7), (g, c)
    # A perfect reconstruction has no error, even in float32.
    assert float(theory.relu_output_error(np.float32(1.0), np.float32(0.0))) == 0.0


def test_antipodal_pair_without_bias_errs_only_when_both_present():
    # W = [1, −1], b = 0: the ReLU removes all interference unless both features are present,
    # and then output i is x_i − x_j for x_i > x_j: E[min(x_1, x_2)²] = 1/6 per feature.
    for p, r in ((1.0, 1.0), (0.3, 2.0), (0.05, 0.5)):
        got = float(theory.expected_loss(
            np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32), np.array([1.0, r], np.float32),
            np.float32(p), n_nodes=256,
        ))
        assert got == pytest.approx((1 + r) * p**2 / 6 / 2, rel=1e-4)


@pytest.mark.parametrize("shape, p", [((1, 2), 1.0), ((1, 2), 0.3), ((2, 3), 1.0), ((2, 3), 0.2), ((2, 3), (0.05, 0.5, 1.0))])
def test_expected_loss_matches_monte_carlo(shape, p):
    rng = np.random.default_rng(hash((shape, str(p))) % 2**32)
    W = rng.normal(size=shape)
    b = rng.normal(size=shape[1]) * 0.3
    importance = rng.uniform(0.2, 3.0, size=shape[1])
    p_vec = np.broadcast_to(np.asarray(p, np.float64), (shape[1],))
    mc, se = _monte_carlo_loss(W, b, importance, p_vec, n_samples=1_000_000)
    exact = float(theory.expected_loss(
        np.float32(W), np.float32(b), np.float32(importance), np.float32(p_vec), n_nodes=64
    ))
    assert abs(exact - mc) < 4 * se + 1e-5 * mc, (exact, mc, se)


# Reduced configs: densities {0.04, 1} × r {0.3, ≈0.95, 3} × 3 seeds.
REDUCED = dict(importance_min=0.3, importance_max=3.0, n_importances=3, density_min=0.04, density_max=1.0,
               n_densities=2, n_seeds=3, n_steps=6_000, chunk_steps=6_000, log_every=100,
               learning_rate=3e-3, theory_nodes=24, theory_iterations=40)
SPARSE, DENSE = 0, 1
LOW_R, R_NEAR_1, HIGH_R = 0, 1, 2


def _take(grid, values, best):
    """values (instance, ...) at the best seed of every (density, importance) cell."""
    folded = grid.fold(values)
    idx = best.reshape(best.shape + (1,) * (folded.ndim - 2))
    return np.take_along_axis(folded, idx, axis=2)[:, :, 0]


def _train(module, candidates):
    cfg = dataclasses.replace(module.Config(), **REDUCED)
    validate(cfg)
    grid, hparams, keys, trainer = module.build(cfg)
    state, _ = trainer.run(trainer.init(hparams, keys), hparams, cfg.n_steps)
    W, b = np.asarray(state.params.W), np.asarray(state.params.b)
    exact = phase_common.exact_losses(W, b, hparams, cfg)
    stats = phase_common.extra_feature_stats(W, cfg)
    best = np.argmin(grid.fold(exact), axis=-1)  # (density, importance)
    return {
        "cfg": cfg,
        "phase": _take(grid, stats["phase"], best),
        "W": _take(grid, W, best),
        "all_phases": grid.fold(stats["phase"]),
        "theory": phase_common.theory_diagram(cfg, candidates, module.N_FEATURES),
    }


@pytest.fixture(scope="module")
def two_by_one():
    return _train(phase_2x1, theory.candidates_2x1())


@pytest.fixture(scope="module")
def three_by_two():
    return _train(phase_3x2, theory.candidates_3x2())


@pytest.mark.parametrize("which", ["two_by_one", "three_by_two"])
def test_dense_split_at_r_equal_1(which, request):
    """Density 1: the extra feature is dropped for r = 0.3 and gets its own dimension for r = 3,
    in the trained models (every seed) and in the theory."""
    run = request.getfixturevalue(which)
    assert list(run["all_phases"][DENSE, LOW_R]) == [NOT_REP] * 3
    assert list(run["all_phases"][DENSE, HIGH_R]) == [DEDICATED] * 3
    theory_phase = run["theory"].phase.reshape(2, 3)
    assert theory_phase[DENSE, LOW_R] == NOT_REP and theory_phase[DENSE, HIGH_R] == DEDICATED


def test_dropped_feature_costs_its_variance(two_by_one):
    """W = [1, 0] with its best bias reconstructs feature 1 exactly and predicts E[x₂] = p/2
    for the extra one: expected loss r · Var(x₂) / n with Var = p/3 − p²/4 and n = 2."""
    p, r = np.meshgrid(*phase_common.axes(two_by_one["cfg"]), indexing="ij")
    dropped = two_by_one["theory"].losses[:, 0].reshape(p.shape)
    np.testing.assert_allclose(dropped, r * (p / 3 - p**2 / 4) / 2, rtol=1e-4)


def test_2x1_sparse_extra_feature_is_antipodal_to_feature_1(two_by_one):
    assert two_by_one["phase"][SPARSE, R_NEAR_1] == SUPERPOSED
    w = two_by_one["W"][SPARSE, R_NEAR_1, 0]  # (feature,), m = 1
    assert w[0] * w[1] < 0, w
    np.testing.assert_allclose(np.abs(w), 1.0, atol=0.15, err_msg=str(w))
    assert two_by_one["theory"].phase.reshape(2, 3)[SPARSE, R_NEAR_1] == SUPERPOSED
    W_theory = two_by_one["theory"].W.reshape(2, 3, 1, 2)[SPARSE, R_NEAR_1, 0]
    np.testing.assert_allclose(W_theory * np.sign(W_theory[0]), [1.0, -1.0], atol=0.05)


def test_3x2_sparse_less_important_extra_shares_a_dimension(three_by_two):
    """Sparse, r = 0.3: the extra feature forms an antipodal pair with feature 1 or 2. Sparse,
    r = 3: the extra keeps a dimension and features 1 and 2 share the other as an antipodal pair."""
    W_low = three_by_two["W"][SPARSE, LOW_R]
    unit = W_low / np.linalg.norm(W_low, axis=0)
    assert three_by_two["phase"][SPARSE, LOW_R] == SUPERPOSED
    assert min(unit[:, 2] @ unit[:, 0], unit[:, 2] @ unit[:, 1]) < -0.9, W_low
    W_high = three_by_two["W"][SPARSE, HIGH_R]
    unit = W_high / np.linalg.norm(W_high, axis=0)
    assert three_by_two["phase"][SPARSE, HIGH_R] == DEDICATED
    assert unit[:, 0] @ unit[:, 1] < -0.9, W_high
    assert list(three_by_two["theory"].phase.reshape(2, 3)[SPARSE]) == [SUPERPOSED, SUPERPOSED, DEDICATED]


@pytest.mark.parametrize("override, field", [
    ({"importance_min": 0.0}, "importance_min"),
    ({"importance_max": 0.05}, "importance_max"),
    ({"density_min": 0.0}, "density_min"),
    ({"density_max": 1.5}, "density_max"),
    ({"sparse_features": "some"}, "sparse_features"),
    ({"n_seeds": 0}, "n_seeds"),
    ({"superposition_threshold": -1.0}, "superposition_threshold"),
])
def test_bad_config_names_the_field(override, field):
    cfg = dataclasses.replace(phase_3x2.Config(), **override)
    with pytest.raises(ConfigError, match=f"'{field}'"):
        validate(cfg)


def test_only_the_extra_feature_sparse():
    p = phase_common.probability_vectors(np.array([0.1, 1.0]), 3, "extra")
    np.testing.assert_allclose(p, [[1, 1, 0.1], [1, 1, 1]], rtol=1e-6)
    np.testing.assert_allclose(phase_common.probability_vectors(np.array([0.1]), 2, "all"), [[0.1, 0.1]], rtol=1e-6)

