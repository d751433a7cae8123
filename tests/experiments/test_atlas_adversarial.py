"""Adversarial attacks: projection, PGD against the closed-form optimum of a linear model
(float64 reference), the conditional input sampler, and the science on a reduced config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import adversarial as experiment
from superpos_jax.config import validate
from superpos_jax.toy.adversarial import attack_toy, pgd_l2, project_l2_ball, sphere_starts, toy_attack_loss
from superpos_jax.toy.models import ToyParams, kind_flags

LINEAR = kind_flags("linear")


def _ball_max(A: np.ndarray, r: np.ndarray, D: np.ndarray, epsilon: float) -> float:
    """max_{‖δ‖≤ε} mean(D (r + A δ)²) in float64: the trust-region optimum, (λI − H) δ = g with
    H = AᵀDA, g = AᵀDr, λ > λ_max(H) and ‖δ‖ = ε, found by bisection on λ."""
    H = A.T @ (D[:, None] * A)
    g = A.T @ (D * r)
    lam, Q = np.linalg.eigh(H)
    c = Q.T @ g

    def norm(mu: float) -> float:
        return float(np.linalg.norm(c / (mu - lam)))

    lo, hi = lam[-1] + 1e-15, lam[-1] + 1.0
    while norm(hi) > epsilon:
        hi = lam[-1] + 2 * (hi - lam[-1])
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > epsilon else (lo, mid)
    delta = Q @ (c / (hi - lam))
    return float(np.mean(D * np.square(r + A @ delta)))


def _random_linear(rng: np.random.Generator, n: int, m: int) -> ToyParams:
    return ToyParams(W=jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
                     b=jnp.asarray(rng.normal(size=n) * 0.1, jnp.float32))


def test_projection_keeps_the_ball_and_leaves_inside_points(rng):
    deltas = rng.normal(size=(64, 7)) * rng.uniform(0.01, 3.0, size=(64, 1))
    eps = 0.5
    out = np.asarray(jax.vmap(lambda d: project_l2_ball(d, eps))(jnp.asarray(deltas, jnp.float32)))
    norms = np.linalg.norm(deltas, axis=1)
    assert np.all(np.linalg.norm(out, axis=1) <= eps * (1 + 1e-6))
    inside = norms <= eps
    np.testing.assert_allclose(out[inside], deltas[inside], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[~inside], axis=1), eps, rtol=1e-6)
    cos = np.sum(out * deltas, axis=1) / (np.linalg.norm(out, axis=1) * norms)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)  # same direction


def test_pgd_finds_top_eigenvector_when_the_loss_is_pure_quadratic(rng):
    # Linear model, b = 0, x = 0: L(δ) = mean(I (WᵀW δ)²) = δᵀ H δ / n, maximised by ±ε v_top.
    n, m, eps = 8, 3, 0.3
    params = ToyParams(W=jnp.asarray(rng.normal(size=(m, n)), jnp.float32), b=jnp.zeros(n, jnp.float32))
    importance = np.power(0.8, np.arange(n)).astype(np.float32)
    objective = lambda d: toy_attack_loss(params, jnp.zeros(n), d, importance, LINEAR)  # noqa: E731
    found = pgd_l2(objective, sphere_starts(4, n, eps, key=jax.random.key(0)), eps, n_steps=200)
    J = np.asarray(params.W, np.float64).T @ np.asarray(params.W, np.float64)
    H = J.T @ (importance[:, None].astype(np.float64) * J)
    lam, vecs = np.linalg.eigh(H)
    np.testing.assert_allclose(float(found.value), eps**2 * lam[-1] / n, rtol=1e-4)
    delta = np.asarray(found.delta, np.float64)
    assert np.linalg.norm(delta) <= eps * (1 + 1e-6)
    assert abs(delta @ vecs[:, -1]) / eps == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("target", ["clean", "perturbed"])
def test_attack_matches_closed_form_optimum_on_linear_models(rng, target):
    # Two linear models × 6 inputs, attacked in one vmapped call, against the float64 optimum.
    n, m, eps = 6, 2, 0.25
    models = [_random_linear(rng, n, m) for _ in range(2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *models)
    x = rng.uniform(0, 1, size=(2, 6, n)) * (rng.uniform(size=(2, 6, n)) < 0.5)
    importance = np.power(0.7, np.arange(n)).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), 12).reshape(2, 6)
    attack = lambda p, xb, k: attack_toy(p, xb, importance, LINEAR, eps, key=k, n_steps=200, target=target)  # noqa: E731
    found = jax.jit(jax.vmap(jax.vmap(attack, in_axes=(None, 0, 0))))(stacked, jnp.asarray(x, jnp.float32), keys)
    values = np.asarray(found.value)
    assert np.all(np.linalg.norm(np.asarray(found.delta), axis=-1) <= eps * (1 + 1e-6))
    for i, p in enumerate(models):
        W = np.asarray(p.W, np.float64)
        J = W.T @ W
        A = -J if target == "clean" else np.eye(n) - J
        for j in range(6):
            xb = x[i, j]
            r = xb - (J @ xb + np.asarray(p.b, np.float64))
            exact = _ball_max(A, r, importance.astype(np.float64), eps)
            assert values[i, j] <= exact * (1 + 1e-4)
            np.testing.assert_allclose(values[i, j], exact, rtol=2e-4)


def test_nonzero_sampler_is_the_exact_conditional(rng):
    p = np.asarray([0.05, 0.2, 0.01, 0.1, 0.3], np.float32)
    sample = jax.jit(experiment.sample_nonzero_features, static_argnums=(2, 3))
    x = np.asarray(sample(jax.random.key(3), p, 5, 200_000))
    assert np.all(np.any(x != 0, axis=0))
    freq = np.mean(x != 0, axis=1)
    expected = p / (1 - np.prod(1 - p.astype(np.float64)))
    np.testing.assert_allclose(freq, expected, rtol=0.03)
    present = x[x != 0]
    assert present.min() >= 0 and present.max() < 1 and abs(present.mean() - 0.5) < 0.01
    dense = np.asarray(sample(jax.random.key(4), np.ones(5, np.float32), 5, 100))
    assert np.all(dense > 0)


@pytest.fixture(scope="module")
def attacked():
    """ReLU models, dense (1−S = 1) and sparse (1−S = 0.01), 2 seeds: trained, then attacked."""
    cfg = experiment.Config(
        models=("relu",), feature_probabilities=(1.0, 0.01), n_seeds=2, n_steps=4000, chunk_steps=4000,
        log_every=100, learning_rate=3e-3, n_inputs=64, attack_steps=40,
    )
    validate(cfg)
    grid, hparams, keys, trainer = experiment.build(cfg)
    state, _ = trainer.run(trainer.init(hparams, keys), hparams, n_steps=cfg.n_steps)
    found = jax.tree.map(np.asarray, experiment.attack_all(cfg)(state.params, hparams, jax.random.key(9)))
    vul = experiment.vulnerability(found["clean"], found["attacked"], found["epsilon"], cfg.n_features)
    W = np.asarray(state.params.W)
    fpd = np.sum(W * W, axis=(1, 2)) / cfg.d_hidden
    return grid.fold({**vul, "features_per_dimension": fpd, "epsilon": found["epsilon"],
                      "norm_ratio": np.max(found["delta_norm"], axis=1) / found["epsilon"]})


def test_superposition_makes_relu_models_more_vulnerable(attacked):
    dense, sparse = attacked["vulnerability"][0, 0], attacked["vulnerability"][0, 1]
    assert np.all(attacked["norm_ratio"] <= 1 + 1e-5)
    assert np.all(dense > 0.5) and np.all(dense < 1.5), dense  # no superposition: ≈ 1
    assert np.all(sparse > 1.6 * dense.max()), (dense, sparse)
    rel = attacked["relative_increase"][0]
    assert np.all(rel[1] > 1.5 * rel[0].max()), rel
    fpd = attacked["features_per_dimension"][0]
    assert np.all(fpd[1] > 1.8 * fpd[0].max()), fpd
