"""k-sparse probing: closed-form cases, chance, unit selection, float64 reference fit, input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from superpos_jax.sae.probing import fit_logistic, k_sparse_probe, mean_difference_scores


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, d = 3000, 40
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 7] += np.where(x[:, 7] > 0, 0.2, -0.2)       # a margin: the sign of unit 7 is separable
    labels = np.stack([
        x[:, 7] > 0,                                   # exactly one unit's sign
        rng.random(n) < 0.3,                           # random, imbalanced
        (x[:, 3] + x[:, 11]) > 1.0,                    # two units, imbalanced (~24% positive)
        x[:, 5] > 2.5,                                 # rare: 18 positives
    ], axis=1)
    return x, labels


@pytest.fixture(scope="module")
def result(data):
    x, labels = data
    return k_sparse_probe(x, labels, ks=(1, 2, 100), min_class=5)


def test_sign_of_one_unit_is_found_at_k1(result):
    assert result.ks == (1, 2, 40)                        # k clipped to d
    assert result.units[0, 0, 0] == 7 and (result.units[0, 0, 1:] == -1).all()
    assert result.accuracy[0, 0] == 1.0 and result.balanced_accuracy[0, 0] == 1.0


def test_random_labels_are_at_chance(result):
    assert np.all(np.abs(result.balanced_accuracy[:, 1] - 0.5) < 0.06)


def test_two_unit_concept_needs_k2(result):
    assert set(result.units[1, 2, :2]) == {3, 11}
    bal = result.balanced_accuracy[:, 2]
    assert bal[1] > 0.98 and bal[0] < 0.9                  # one of the two units is not enough
    assert 0 <= bal.min() and bal.max() <= 1


def test_rare_label_scored_or_nan(data):
    x, labels = data
    strict = k_sparse_probe(x, labels, ks=(1,), min_class=50)
    assert np.isnan(strict.accuracy[0, 3]) and np.isnan(strict.balanced_accuracy[0, 3])
    assert np.isfinite(strict.accuracy[0, :3]).all() and (strict.units[0, 3] == -1).all()
    n_test = x.shape[0] - int(round(0.8 * x.shape[0]))
    assert strict.n_positive_train[0] + strict.n_positive_test[0] == labels[:, 0].sum()
    assert strict.n_positive_test.shape == (4,) and n_test == 600


def test_mean_difference_scores_closed_form(data):
    x, labels = data
    w = (np.arange(x.shape[0]) % 3 != 0).astype(np.float32)
    got = np.asarray(mean_difference_scores(jnp.asarray(x), jnp.asarray(labels), jnp.asarray(w)))
    m = w > 0
    for j in range(labels.shape[1]):
        pos, neg = m & labels[:, j], m & ~labels[:, j]
        np.testing.assert_allclose(got[j], np.abs(x[pos].mean(0) - x[neg].mean(0)), rtol=1e-4, atol=1e-5)


def test_fit_matches_float64_reference():
    rng = np.random.default_rng(1)
    n, k, l2 = 400, 4, 1e-2
    x = rng.normal(size=(n, k))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + rng.normal(size=n) > 0).astype(np.float64)
    c = np.where(y > 0, 0.5 / y.sum(), 0.5 / (n - y.sum()))

    def objective(theta):
        z = x @ theta[:k] + theta[k]
        return np.sum(c * (np.logaddexp(0.0, z) - y * z)) + 0.5 * l2 * theta[:k] @ theta[:k]

    def gradient(theta):
        p = 1 / (1 + np.exp(-(x @ theta[:k] + theta[k])))
        return np.concatenate([x.T @ (c * (p - y)) + l2 * theta[:k], [np.sum(c * (p - y))]])

    ref = scipy.optimize.minimize(objective, np.zeros(k + 1), jac=gradient, method="L-BFGS-B",
                                  options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10_000}).x
    with jax.enable_x64(True):
        w, b = fit_logistic(jnp.asarray(x), jnp.asarray(y), jnp.asarray(c), l2=l2, n_steps=25)
        assert w.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(w), ref[:k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(b), ref[k], rtol=1e-5, atol=1e-6)
    w32, b32 = fit_logistic(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), jnp.asarray(c, jnp.float32),
                            l2=l2)
    np.testing.assert_allclose(np.asarray(w32), ref[:k], rtol=1e-3, atol=1e-3)


def test_separable_fit_stays_finite():
    x = jnp.asarray(np.linspace(-1, 1, 50)[:, None], jnp.float32)
    y = (x[:, 0] > 0).astype(jnp.float32)
    w, b = fit_logistic(x, y, jnp.full((50,), 1 / 50, jnp.float32), l2=1e-4)
    assert np.isfinite(float(w[0])) and float(w[0]) > 10 and abs(float(b) / float(w[0])) < 0.05


def test_bad_inputs_raise(data):
    x, labels = data
    with pytest.raises(ValueError, match="ks must be"):
        k_sparse_probe(x, labels, ks=(0,))
    with pytest.raises(ValueError, match="same n"):
        k_sparse_probe(x[:10], labels)
    with pytest.raises(ValueError, match="train must be"):
        k_sparse_probe(x, labels, train=np.ones(5, bool))
    with pytest.raises(ValueError, match="train_fraction"):
        k_sparse_probe(x, labels, train_fraction=1.0)
