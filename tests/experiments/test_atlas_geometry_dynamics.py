"""Feature geometry across sparsity and its learning dynamics, on reduced configs.

geometry: n=40 features in m=8 dims, uniform importance, 1 − S from 1 to 0.2, one seed.
learning-dynamics: n=20 in m=5 at 1 − S = 0.5, two seeds, D_i recorded inside the scan.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import geometry, learning_dynamics
from superpos_jax.toy import metrics
from superpos_jax.config import ConfigError, validate

FRACTIONS = (1.0, 0.75, 2 / 3, 0.5, 0.4, 0.375)
WITH_ZERO = np.array((*FRACTIONS, 0.0))


def _distance_to_fractions(values):
    return np.min(np.abs(np.asarray(values, np.float64).reshape(-1, 1) - WITH_ZERO[None, :]), axis=1)


@pytest.fixture(scope="module")
def geometry_trained():
    cfg = geometry.Config(
        n_features=40, d_hidden=8, min_feature_probability=0.2, n_probabilities=6, n_seeds=1,
        n_steps=4000, chunk_steps=4000, log_every=100,
    )
    validate(cfg)
    grid, hparams, keys, trainer = geometry.build(cfg)
    state, _ = trainer.run(trainer.init(hparams, keys), hparams, cfg.n_steps)
    W = np.asarray(state.params.W)  # (probability, m, n): one seed
    return np.asarray(geometry.feature_probabilities(cfg)), W


@pytest.fixture(scope="module")
def dynamics_trained():
    cfg = learning_dynamics.Config(feature_probabilities=(0.5,), n_seeds=2, n_steps=20_000, chunk_steps=20_000)
    validate(cfg)
    grid, hparams, keys, trainer = learning_dynamics.build(cfg)
    state, (losses, observed) = trainer.run(trainer.init(hparams, keys), hparams, cfg.n_steps)
    steps = (np.arange(losses.shape[1]) + 1) * cfg.log_every
    return cfg, np.asarray(state.params.W), np.asarray(losses), jax.tree.map(np.asarray, observed), steps


def test_dims_per_feature_sticks_at_one_then_one_half(geometry_trained):
    probs, W = geometry_trained
    dpf = np.array([float(metrics.dimensions_per_feature(w)) for w in W])
    assert probs[0] == 1.0 and abs(dpf[0] - 1.0) < 0.03, dpf
    # A plateau, not a passing value: at least two sparsities sit at 1/2 ...
    at_half = np.flatnonzero(np.abs(dpf - 0.5) < 0.04)
    assert at_half.size >= 2, dpf.round(3)
    # ... between the dense regime and sparser models that pack more features per dimension.
    assert dpf[at_half].min() > dpf[-1] + 0.05 and dpf[-1] < 0.45, dpf.round(3)


def test_feature_dimensionalities_cluster_at_polytope_fractions(geometry_trained):
    probs, W = geometry_trained
    near = []
    for w in W[1:]:  # every sparse model
        D = np.asarray(metrics.feature_dimensionality(w))
        represented = np.asarray(metrics.feature_norms(w)) > 0.5
        near.append(_distance_to_fractions(D[represented]) < 0.05)
    near = np.concatenate(near)
    assert near.size > 50 and near.mean() > 0.8, (near.size, near.mean())


def test_represented_dimensionality_ignores_residual_weights():
    # A digon on axis 0, a dedicated feature on axis 1, three unlearned features (norm 0.2) on axis 1.
    W = np.zeros((2, 6), np.float32)
    W[0, 0], W[0, 1], W[1, 2] = 1.0, -1.0, 1.0
    W[1, 3:] = -0.2
    paper = np.asarray(metrics.feature_dimensionality(jnp.asarray(W)))
    np.testing.assert_allclose(paper[:3], [0.5, 0.5, 1.0 / (1.0 + 3 * 0.04)], rtol=1e-5)
    rep = np.asarray(metrics.represented_dimensionality(jnp.asarray(W), 0.5))
    np.testing.assert_allclose(rep, [0.5, 0.5, 1.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_observations_are_recorded_inside_the_scan(dynamics_trained):
    cfg, W, losses, observed, _ = dynamics_trained
    n_windows = cfg.n_steps // cfg.log_every
    assert observed["dimensionality"].shape == (2, n_windows, cfg.n_features)
    assert losses.shape == (2, n_windows)
    final = np.asarray(jax.vmap(metrics.feature_dimensionality)(jnp.asarray(W)))
    np.testing.assert_allclose(observed["dimensionality"][:, -1], final, atol=1e-5)
    np.testing.assert_allclose(observed["feature_norms"][:, -1], np.linalg.norm(W, axis=1), rtol=1e-5)


def test_dimensionality_jumps_between_plateaus(dynamics_trained):
    cfg, _, _, observed, steps = dynamics_trained
    jumps = [
        j
        for D in observed["dimensionality"]
        for j in learning_dynamics.detect_jumps(
            D, steps, threshold=cfg.jump_threshold, jump_decades=cfg.jump_decades,
            plateau_tolerance=cfg.plateau_tolerance, plateau_decades=cfg.plateau_decades,
        )
    ]
    # A discrete jump: a large change, completed within a fraction of the time already trained,
    # ending on one of the geometric values.
    discrete = [
        j for j in jumps
        if abs(j["after"] - j["before"]) > 0.3
        and j["end_step"] - j["start_step"] < 0.6 * j["start_step"]
        and _distance_to_fractions([j["after"]])[0] < 0.06
    ]
    assert discrete, jumps


def test_final_dimensionalities_sit_at_fractions(dynamics_trained):
    cfg, W, _, observed, _ = dynamics_trained
    final = observed["dimensionality"][:, -1]
    assert np.all(_distance_to_fractions(final) < 0.06), final.round(3)
    rep = np.asarray(jax.vmap(lambda w: metrics.represented_dimensionality(w, 0.5))(jnp.asarray(W)))
    represented = np.linalg.norm(W, axis=1) > 0.5
    assert represented.sum() >= 2 * cfg.d_hidden
    assert np.all(_distance_to_fractions(rep[represented]) < 0.03), rep[represented].round(3)


def test_detect_jumps_on_synthetic_traces():
    steps = np.arange(1, 4001) * 10.0
    rng = np.random.default_rng(0)
    jump = 0.5 / (1.0 + np.exp(-(steps - 8000.0) / 150.0))  # 0 -> 1/2 around step 8000
    flat = np.full_like(steps, 0.5)
    ramp = 0.5 * np.log10(steps / 10.0) / np.log10(4000.0)  # 0 -> 1/2 evenly over 3.6 decades
    D = np.stack([jump, flat, ramp], axis=1) + rng.normal(0.0, 0.003, (steps.size, 3))
    found = learning_dynamics.detect_jumps(D, steps, threshold=0.15, jump_decades=0.2, plateau_tolerance=0.05, plateau_decades=0.3)
    assert len(found) == 1, found
    (j,) = found
    assert j["feature"] == 0 and 6000 < j["start_step"] < 8000 < j["end_step"] < 11000
    assert abs(j["before"]) < 0.03 and abs(j["after"] - 0.5) < 0.03


@pytest.mark.parametrize(
    "module, changes, field",
    [
        (geometry, {"min_feature_probability": 0.0}, "min_feature_probability"),
        (geometry, {"d_hidden": 40, "n_features": 40}, "d_hidden"),
        (geometry, {"fractions": (1.0, 1.5)}, "fractions"),
        (learning_dynamics, {"init_scale": 0.0}, "init_scale"),
        (learning_dynamics, {"plateau_tolerance": 0.2}, "plateau_tolerance"),
        (learning_dynamics, {"n_steps": 1000}, "n_steps"),
    ],
)
def test_bad_config_names_the_field(module, changes, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        validate(module.Config(**changes))
