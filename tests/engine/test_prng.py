"""Statistics of the counter-hash generator: uniformity and independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.engine import prng


def _uniforms(key, shape, generator="hash"):
    return np.asarray(prng.uniform(key, shape, generator))


def test_range_dtype_and_determinism():
    key = jax.random.key(1)
    u = prng.uniform(key, (64, 1000))
    assert u.dtype == jnp.float32 and u.shape == (64, 1000)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # The all-zero key maps counter 0 to hash 0; the uniform must still be > 0.
    assert float(prng.uniform(jax.random.key(0), (1,))[0]) > 0.0
    np.testing.assert_array_equal(np.asarray(u), _uniforms(key, (64, 1000)))
    assert not np.array_equal(np.asarray(u), _uniforms(jax.random.key(2), (64, 1000)))


def test_uniformity_chi_square_and_moments():
    u = _uniforms(jax.random.key(0), (1_000_000,))
    counts, _ = np.histogram(u, bins=100, range=(0, 1))
    expected = u.size / 100
    chi2 = np.sum((counts - expected) ** 2 / expected)
    # 99 degrees of freedom: mean 99, sd ~14; 160 is p ~ 1e-4.
    assert chi2 < 160, chi2
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 1e-3


def test_every_output_bit_is_fair():
    bits = np.asarray(prng.hash_bits(jax.random.key(3), (200_000,)))
    frac = np.array([((bits >> k) & 1).mean() for k in range(32)])
    assert np.all(np.abs(frac - 0.5) < 5 * 0.5 / np.sqrt(bits.size)), frac


def test_small_values_keep_resolution():
    # Values below 2**-7 are used for rare features (p = 0.001): they must not be quantised coarsely.
    u = _uniforms(jax.random.key(4), (4_000_000,))
    small = u[u < 1e-3]
    assert small.size > 3000
    assert np.unique(small).size > 0.99 * small.size


def _max_abs_corr(a, b):
    a = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    b = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    return np.abs(a @ b.T / a.shape[1])


def test_independent_across_features():
    # Rows = features of one stream (as in sample_features' (feature, batch) layout).
    u = _uniforms(jax.random.key(5), (20, 100_000))
    corr = _max_abs_corr(u, u)
    np.fill_diagonal(corr, 0.0)
    assert corr.max() < 5 / np.sqrt(u.shape[1]), corr.max()


def test_independent_across_instances_and_steps():
    base = jax.random.key(6)
    inst_keys = jax.random.split(base, 16)
    # Same step, different instances; same instance, consecutive steps (fold_in as the trainer does).
    by_instance = np.stack([_uniforms(jax.random.fold_in(k, 0), (50_000,)) for k in inst_keys])
    by_step = np.stack([_uniforms(jax.random.fold_in(inst_keys[0], s), (50_000,)) for s in range(16)])
    for block in (by_instance, by_step):
        corr = _max_abs_corr(block, block)
        np.fill_diagonal(corr, 0.0)
        assert corr.max() < 5 / np.sqrt(block.shape[1]), corr.max()
    # Pairs of neighbouring elements within a stream are uncorrelated too (lag-1).
    u = by_step[0]
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(u.size)


def test_threefry_option_and_bad_generator():
    u = _uniforms(jax.random.key(0), (1000,), "threefry")
    np.testing.assert_array_equal(u, np.asarray(jax.random.uniform(jax.random.key(0), (1000,))))
    with pytest.raises((ValueError, TypeError), match="generator"):
        prng.uniform(jax.random.key(0), (10,), "mt19937")  # type: ignore[arg-type]
