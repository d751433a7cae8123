"""Structured synthetic ground truth: the sampled statistics against their closed forms."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from superpos_jax.config import ConfigError
from superpos_jax.sae.synthetic import SyntheticConfig, SyntheticSource, root_probabilities

N = 40000


def _draw(config, n=N, seed=1, key=0):
    source = SyntheticSource.from_config(config, key=jax.random.key(key))
    x, s = eqx.filter_jit(lambda src, k: src.sample_with_features(k, n))(source, jax.random.key(seed))
    return source, np.asarray(x, np.float64), np.asarray(s, np.float64)


def _within_binomial(rate, p, n, sigmas=4.5):
    np.testing.assert_array_less(np.abs(rate - p), sigmas * np.sqrt(p * (1 - p) / n) + 1e-4)


HIER = SyntheticConfig(n_features=48, d_in=32, zipf_exponent=0.5, mean_active=4.0, n_parents=3,
                       branching=(3, 2), child_probability=0.4, n_groups=2, group_size=3, correlation=0.6)


@pytest.fixture(scope="module")
def hier():
    return _draw(HIER)


@pytest.fixture(scope="module")
def hier_exclusive():
    return _draw(dataclasses.replace(HIER, mutually_exclusive=True, child_probability=0.3, n_groups=0))


def test_zipf_probabilities_and_marginal_rates():
    config = SyntheticConfig(n_features=64, d_in=16, zipf_exponent=1.2, mean_active=3.0, magnitude="uniform",
                             magnitude_mean=1.0, magnitude_std=0.2)
    p = root_probabilities(config)
    np.testing.assert_allclose(p.sum(), 3.0, rtol=1e-9)
    np.testing.assert_allclose(p / p[0], np.arange(1, 65.0) ** -1.2, rtol=1e-9)
    source, x, s = _draw(config)
    _within_binomial((s > 0).mean(axis=0), p, N)
    np.testing.assert_allclose(np.asarray(source.firing_probability), p, rtol=1e-6)
    # Clipping at max_probability keeps the expected count: the head is capped, the tail rescaled.
    capped = dataclasses.replace(config, zipf_exponent=2.0, mean_active=3.0, max_probability=0.5)
    q = root_probabilities(capped)
    np.testing.assert_allclose(q.sum(), 3.0, rtol=1e-9)
    k = int(np.sum(q >= 0.5 - 1e-12))
    # the capped head from first principles: with the first c ranks at 0.5, the rest carry
    # 3 − c/2 = λ Σ_{r>c} r^−2; the head is the c for which λ·c^−2 ≥ 0.5 > λ·(c+1)^−2
    rank = np.arange(1, 65.0)
    heads = [c for c in range(1, 64)
             if (lam := (3.0 - 0.5 * c) / np.sum(rank[c:] ** -2.0)) * c**-2.0 >= 0.5 > lam * (c + 1.0) ** -2.0]
    assert heads == [k], (heads, k)
    np.testing.assert_allclose(q[:k], 0.5, rtol=1e-12)  # the capped head is a prefix
    np.testing.assert_allclose(q[k:] / q[k], (rank[k:] / rank[k]) ** -2.0, rtol=1e-9)
    assert q[k] * (rank[k - 1] / rank[k]) ** -2.0 >= 0.5 - 1e-9  # λ·z would exceed the cap there


def test_hierarchy_layout_and_marginals(hier):
    source, x, s = hier
    parent = np.asarray(source.parent)
    # 3 parents, 9 children (3 each), 18 grandchildren (2 each), then free features.
    np.testing.assert_array_equal(parent[:3], -1)
    np.testing.assert_array_equal(parent[3:12], np.repeat(np.arange(3), 3))
    np.testing.assert_array_equal(parent[12:30], np.repeat(np.arange(3, 12), 2))
    np.testing.assert_array_equal(parent[30:], -1)
    active = s > 0
    p_roots = root_probabilities(HIER)
    expected = np.zeros(48)
    expected[:3], expected[30:] = p_roots[:3], p_roots[3:]
    expected[3:12] = np.repeat(p_roots[:3], 3) * 0.4
    expected[12:30] = np.repeat(expected[3:12], 2) * 0.4
    np.testing.assert_allclose(np.asarray(source.firing_probability), expected, rtol=1e-5)
    _within_binomial(active.mean(axis=0), expected, N)
    np.testing.assert_allclose(active.sum(axis=1).mean(), HIER.mean_active, rtol=0.03)


@pytest.mark.parametrize("exclusive", [False, True])
def test_child_fires_only_with_parent(hier, hier_exclusive, exclusive):
    source, _, s = hier_exclusive if exclusive else hier
    parent = np.asarray(source.parent)
    active = s > 0
    kids = np.nonzero(parent >= 0)[0]
    assert active[:, kids].sum() > 1000
    assert not np.any(active[:, kids] & ~active[:, parent[kids]])  # never without the parent
    q = 0.3 if exclusive else 0.4
    for c in kids:
        on = active[:, parent[c]]
        _within_binomial(active[on, c].mean(), q, on.sum())  # P(child | parent) = q
    siblings = active[:, 3:12].reshape(-1, 3, 3).sum(axis=2)
    if exclusive:
        assert siblings.max() == 1
        on = active[:, :3]
        _within_binomial((siblings[on] == 0).mean(), 1 - 3 * q, on.sum())
    else:  # independent siblings: two of three fire together with probability q²
        on = active[:, 0]
        both = (active[on, 3] & active[on, 4]).mean()
        _within_binomial(both, q * q, on.sum())


def test_correlated_groups_copula(hier):
    source, _, s = hier
    active = s > 0
    group = np.asarray(source.group)
    members = [np.nonzero(group == g)[0] for g in range(2)]
    np.testing.assert_array_equal(members[0], [30, 31, 32])
    np.testing.assert_array_equal(members[1], [33, 34, 35])
    p = np.asarray(source.firing_probability, np.float64)
    t = scipy.stats.norm.ppf(p)
    for g in members:
        for i, j in ((g[0], g[1]), (g[0], g[2]), (g[1], g[2])):
            joint = scipy.stats.multivariate_normal(np.zeros(2), [[1, 0.6], [0.6, 1]]).cdf([t[i], t[j]])
            _within_binomial((active[:, i] & active[:, j]).mean(), joint, N)
            assert joint > 1.5 * p[i] * p[j]  # the requested correlation is visible
            phi = (joint - p[i] * p[j]) / np.sqrt(p[i] * (1 - p[i]) * p[j] * (1 - p[j]))
            np.testing.assert_allclose(np.corrcoef(active[:, i], active[:, j])[0, 1], phi, atol=0.03)
    i, j = members[0][0], members[1][0]
    _within_binomial((active[:, i] & active[:, j]).mean(), p[i] * p[j], N)  # across groups: independent


@pytest.mark.parametrize("kind, mean, std", [("uniform", 1.0, 0.3), ("exponential", 2.0, 1.5),
                                             ("lognormal", 1.5, 0.6), ("folded_normal", 0.3, 0.8)])
def test_magnitudes_have_requested_moments(kind, mean, std):
    config = SyntheticConfig(n_features=8, d_in=8, zipf_exponent=0.0, mean_active=4.0, magnitude=kind,
                             magnitude_mean=mean, magnitude_std=std)
    source, _, s = _draw(config, n=20000)
    mags = s[s > 0]
    assert mags.size > 70000 and mags.min() > 0
    expected = float(np.asarray(source.expected_magnitude())[0])
    if kind == "folded_normal":
        ref = scipy.stats.foldnorm(mean / std, scale=std)
        np.testing.assert_allclose(expected, ref.mean(), rtol=1e-5)
        expected_std = ref.std()
    else:
        np.testing.assert_allclose(expected, mean, rtol=1e-6)
        expected_std = std
    np.testing.assert_allclose(mags.mean(), expected, atol=5 * expected_std / np.sqrt(mags.size))
    np.testing.assert_allclose(mags.std(), expected_std, rtol=0.03)
    if kind == "uniform":
        assert mags.min() >= mean - np.sqrt(3) * std - 1e-6 and mags.max() <= mean + np.sqrt(3) * std + 1e-6


def test_per_feature_magnitude_means():
    config = SyntheticConfig(n_features=6, d_in=8, zipf_exponent=0.0, mean_active=3.0, magnitude="lognormal",
                             magnitude_mean=1.0, magnitude_std=0.5, magnitude_spread=0.8)
    source, _, s = _draw(config, n=20000)
    m, sd = np.asarray(source.magnitude_mean), np.asarray(source.magnitude_std)
    assert np.ptp(m) > 0.3
    np.testing.assert_allclose(sd / m, 0.5, rtol=1e-5)
    for i in range(6):
        mags = s[s[:, i] > 0, i]
        np.testing.assert_allclose(mags.mean(), m[i], atol=5 * sd[i] / np.sqrt(mags.size))


def test_directions_and_activations(hier):
    source, x, s = hier
    d = np.asarray(source.directions, np.float64)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(x, s @ d, atol=1e-4)
    ortho = SyntheticSource.from_config(SyntheticConfig(n_features=16, d_in=24, mean_active=2.0, orthogonal=True),
                                        key=jax.random.key(3))
    d = np.asarray(ortho.directions, np.float64)
    np.testing.assert_allclose(d @ d.T, np.eye(16), atol=1e-5)


def test_same_key_same_data_and_jit_vmap():
    source = SyntheticSource.from_config(dataclasses.replace(HIER, generator="threefry"), key=jax.random.key(0))
    one = eqx.filter_jit(lambda src, k: src.sample_with_features(k, 64))
    a, b, c = one(source, jax.random.key(7)), one(source, jax.random.key(7)), one(source, jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    keys = jax.random.split(jax.random.key(9), 3)
    over_keys = eqx.filter_jit(jax.vmap(lambda k: source.sample(k, 64)))(keys)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(over_keys[i]), np.asarray(one(source, keys[i])[0]), rtol=1e-5, atol=1e-6)
    # A sweep over sources: stacked arrays (traced correlation), one vmap.
    sources_ = [SyntheticSource.from_config(dataclasses.replace(HIER, correlation=r), key=jax.random.key(0))
                for r in (0.0, 0.3, 0.9)]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *sources_)
    batched = eqx.filter_jit(eqx.filter_vmap(lambda src, k: src.sample_with_features(k, 64)[1]))(stacked, keys)
    for i, src in enumerate(sources_):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(one(src, keys[i])[1]), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(np.asarray(batched[0]), np.asarray(batched[2]))  # ρ is a traced input
    assert source.d_in == 32 and source.n_features == 48


@pytest.mark.parametrize("changes, field", [
    ({"n_parents": 20}, "n_parents"),
    ({"mutually_exclusive": True, "child_probability": 0.6}, "child_probability"),
    ({"n_groups": 20}, "n_groups"),
    ({"orthogonal": True, "n_features": 64}, "orthogonal"),
    ({"magnitude": "uniform", "magnitude_std": 0.9}, "magnitude_std"),
    ({"magnitude": "exponential", "magnitude_std": 1.5}, "magnitude_std"),
    ({"mean_active": 60.0}, "mean_active"),
    ({"magnitude": "gamma"}, "magnitude"),
    ({"branching": (2, 0)}, "branching"),
    ({"correlation": 1.0}, "correlation"),
    ({"child_probability": 0.0}, "child_probability"),
    ({"group_size": 1}, "group_size"),
])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        SyntheticSource.from_config(dataclasses.replace(HIER, **changes), key=jax.random.key(0))
