"""The sparse feature sampler: firing rates, conditional magnitudes, schedules, validation."""

import jax
import numpy as np
import pytest

from superpos_jax.toy import samplers


def _ks_uniform(samples, lo=0.0, hi=1.0):
    s = np.sort((samples - lo) / (hi - lo))
    n = s.size
    cdf = np.arange(1, n + 1) / n
    return max(np.max(cdf - s), np.max(s - (cdf - 1 / n)))


@pytest.mark.parametrize("generator", ["hash", "threefry"])
def test_per_feature_rate_and_conditional_magnitude(generator):
    p = np.array([1.0, 0.5, 0.1, 0.03, 0.01, 0.0], np.float32)
    batch = 200_000
    x = np.asarray(samplers.sample_features(jax.random.key(0), p, p.size, batch, generator=generator))
    assert x.shape == (p.size, batch)
    present = x != 0
    rate = present.mean(axis=1)
    tolerance = 5 * np.sqrt(p * (1 - p) / batch) + 1e-9
    assert np.all(np.abs(rate - p) <= tolerance), (rate, p)
    for i in range(p.size - 1):
        mags = x[i][present[i]]
        assert mags.min() >= 0 and mags.max() <= 1
        # Kolmogorov-Smirnov against U[0, 1]; 1.63/sqrt(n) is the 1% critical value.
        assert _ks_uniform(mags) < 1.63 / np.sqrt(mags.size), (i, _ks_uniform(mags))


def test_signed_magnitudes_are_uniform_on_minus_one_one():
    x = np.asarray(samplers.sample_features(jax.random.key(1), 0.2, 4, 100_000, signed=True)).ravel()
    mags = x[x != 0]
    assert mags.min() >= -1 and mags.max() <= 1
    assert _ks_uniform(mags, -1.0, 1.0) < 1.63 / np.sqrt(mags.size)
    assert abs((x != 0).mean() - 0.2) < 0.005


def test_probability_per_instance_and_per_feature_under_vmap():
    probs = np.array([[1.0, 0.0, 0.5], [0.1, 0.9, 0.0]], np.float32)  # (instance, feature)
    keys = jax.random.split(jax.random.key(2), 2)
    x = np.asarray(jax.vmap(lambda k, p: samplers.sample_features(k, p, 3, 50_000))(keys, probs))
    rate = (x != 0).mean(axis=-1)
    np.testing.assert_allclose(rate, probs, atol=0.01)


def test_importance_schedules():
    np.testing.assert_allclose(samplers.geometric_importance(4, 0.7), 0.7 ** np.arange(4), rtol=1e-6)
    np.testing.assert_array_equal(samplers.uniform_importance(3), np.ones(3))
    np.testing.assert_array_equal(samplers.explicit_importance([3, 2, 1]), [3, 2, 1])
    with pytest.raises(ValueError, match="importance"):
        samplers.explicit_importance([1.0, -1.0])
    with pytest.raises(ValueError, match="n_features"):
        samplers.geometric_importance(-2, 0.7)
    with pytest.raises(ValueError, match="base"):
        samplers.geometric_importance(3, 0.0)


def test_probability_validation_names_the_bad_values():
    assert samplers.check_feature_probability([0, 0.5, 1]).dtype == np.float32
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        samplers.check_feature_probability([0.5, 1.5])
    with pytest.raises(ValueError, match="feature_probability"):
        samplers.check_feature_probability([-0.1])
    with pytest.raises(ValueError):
        samplers.check_feature_probability([float("nan")])
