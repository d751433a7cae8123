"""The paper atlas: the intro figure (5 features in 2 dims) and correlated / anticorrelated
feature pairs — the paired sampler's statistics and the science on reduced configs (the
geometry classifier's exact configurations are in tests/toy/test_geometry.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import correlated, intro
from superpos_jax.toy import samplers
from superpos_jax.toy.geometry import classify_geometry
from superpos_jax.toy import metrics
from superpos_jax.config import ConfigError, validate
from superpos_jax.toy.correlated import correlated_hparams, correlated_task

CORR, ANTI, INDEP = samplers.PAIR_KINDS["correlated"], samplers.PAIR_KINDS["anticorrelated"], samplers.PAIR_KINDS["independent"]


def _ks_uniform(samples):
    s = np.sort(samples)
    cdf = np.arange(1, s.size + 1) / s.size
    return max(np.max(cdf - s), np.max(s - (cdf - 1 / s.size)))


# ---------------------------------------------------------------- the paired sampler


@pytest.mark.parametrize("generator", ["hash", "threefry"])
def test_paired_sampler_statistics(generator):
    # pairs: correlated (0.1, 0.1), anticorrelated (0.2, 0.3), independent (0.4, 0.5), correlated
    # with unequal rates (0.05, 0.2); then one unpaired feature (0.3).
    p = np.array([0.1, 0.1, 0.2, 0.3, 0.4, 0.5, 0.05, 0.2, 0.3], np.float32)
    kinds = np.array([CORR, ANTI, INDEP, CORR], np.int32)
    batch = 200_000
    x = np.asarray(samplers.sample_paired_features(jax.random.key(3), p, kinds, p.size, batch, generator=generator))
    assert x.shape == (p.size, batch)
    on = x != 0
    tol = 5 * np.sqrt(p * (1 - p) / batch)
    np.testing.assert_array_less(np.abs(on.mean(axis=1) - p), tol)  # every marginal rate is p_i
    # correlated, equal rates: both or neither
    np.testing.assert_array_equal(on[0], on[1])
    # anticorrelated: never together, pair active with probability p0 + p1
    assert not np.any(on[2] & on[3])
    assert abs((on[2] | on[3]).mean() - 0.5) < 5 * np.sqrt(0.25 / batch)
    # independent pair and unpaired feature: co-occurrence p_i p_j
    for i, j in [(4, 5), (0, 8), (2, 4)]:
        expected = p[i] * p[j]
        assert abs((on[i] & on[j]).mean() - expected) < 5 * np.sqrt(expected / batch), (i, j)
    # correlated, unequal rates: nested, co-occurrence = min
    assert not np.any(on[6] & ~on[7])
    # magnitudes: U[0, 1] and, within a correlated pair, independent of each other
    for i in range(p.size):
        mags = x[i][on[i]]
        assert 0 < mags.min() and mags.max() <= 1
        assert _ks_uniform(mags) < 1.63 / np.sqrt(mags.size), i
    both = x[:2, on[0]]
    assert abs(np.corrcoef(both)[0, 1]) < 5 / np.sqrt(both.shape[1])


def test_paired_sampler_pair_kind_is_per_instance_data():
    """One vmapped (jitted) call with different pair structures per instance."""
    kinds = jnp.asarray([[CORR, CORR], [ANTI, ANTI], [INDEP, INDEP]], jnp.int32)
    p = jnp.full((3, 4), 0.3, jnp.float32)
    keys = jax.random.split(jax.random.key(5), 3)
    sample = jax.jit(jax.vmap(lambda k, q, c: samplers.sample_paired_features(k, q, c, 4, 100_000)))
    on = np.asarray(sample(keys, p, kinds)) != 0  # (instance, feature, batch)
    together = (on[:, 0] & on[:, 1]).mean(axis=-1)
    np.testing.assert_allclose(together, [0.3, 0.0, 0.09], atol=0.01)
    np.testing.assert_allclose(on.mean(axis=-1), 0.3, atol=0.01)


def test_paired_sampler_validation():
    with pytest.raises(ValueError, match="p_first \\+ p_second <= 1"):
        samplers.check_pair_probabilities([0.6, 0.5, 0.1, 0.1], [ANTI, CORR])
    samplers.check_pair_probabilities([0.6, 0.5, 0.5, 0.5], [CORR, ANTI])  # fine: sums only matter when anticorrelated
    with pytest.raises(ValueError, match="unknown pair kind"):
        samplers.pair_kind_codes(["correlated", "sideways"])
    with pytest.raises(ValueError, match="codes must be in"):
        samplers.pair_kind_codes([0, 7])
    with pytest.raises(ValueError, match="need at least 4 features"):
        samplers.check_pair_probabilities([0.1, 0.1, 0.1], [CORR, CORR])
    np.testing.assert_array_equal(samplers.pair_kind_codes([["anticorrelated", "independent"]]), [[ANTI, INDEP]])


def test_correlated_hparams_and_unused_features_stay_zero():
    hp = correlated_hparams(
        np.array([[0.1, 0.1, 0.0, 0.0]], np.float32), np.array([[1, 1, 0, 0]], np.float32), ["correlated", "independent"], ["relu"]
    )
    assert hp["pair_kind"].dtype == np.int32 and hp["pair_kind"].tolist() == [[CORR, INDEP]]
    with pytest.raises(ValueError, match="anticorrelated"):
        correlated_hparams([0.7], np.ones(4), ["anticorrelated", "correlated"], ["relu"])
    task = correlated_task(4, 2, 64)
    one = jax.tree.map(lambda a: a[0], hp)
    params = jax.jit(lambda h, k: task.init(h, key=k))(one, jax.random.key(0))
    W = np.asarray(params.W)
    assert np.all(W[:, 2:] == 0) and np.all(np.abs(W[:, :2]) > 0)
    x = jax.jit(lambda h, k: task.sample(h, key=k))(one, jax.random.key(1))
    grads = jax.jit(jax.grad(task.loss))(params, x, one)
    assert np.all(np.asarray(grads.W)[:, 2:] == 0)


def test_pair_labels():
    W = np.array([[1.0, -1.0, 1.0, 0.0, 1.0, 0.2], [0.0, 0.0, 0.0, 1.0, 0.0, 0.1]])
    cos = correlated.pair_cosines(W, 3)
    assert cos[:2] == [-1.0, 0.0] and cos[2] is None
    assert [correlated.pair_label(c) for c in cos] == ["antipodal", "orthogonal", "not represented"]
    assert correlated.pair_label(0.97) == "collapsed" and correlated.pair_label(0.5) == "acute"


def test_configs_validate_and_reject_bad_values():
    for module in (intro, correlated):
        validate(module.Config())
    with pytest.raises(ConfigError, match="'setups'"):
        validate(correlated.Config(setups=("correlated-pairs", "diagonal")))
    with pytest.raises(ConfigError, match="<= 0.5 with an anticorrelated setup"):
        validate(correlated.Config(feature_probabilities=(0.6,)))
    validate(correlated.Config(setups=("correlated-pairs",), feature_probabilities=(0.6,)))
    with pytest.raises(ConfigError, match="'model'"):
        validate(intro.Config(model="tanh"))


# ---------------------------------------------------------------- the science, reduced configs


def _train(module, cfg):
    validate(cfg)
    grid, hparams, keys, trainer = module.build(cfg)
    state, losses = trainer.run(trainer.init(hparams, keys), hparams, cfg.n_steps)
    W = grid.fold(np.asarray(state.params.W))
    final = grid.fold(np.asarray(losses)[:, -5:].mean(axis=1))
    return W, final


@pytest.fixture(scope="module")
def intro_trained():
    """Dense, 80% and 95% sparsity, 3 seeds each, one compiled sweep: W (prob, seed, 2, 5)."""
    cfg = intro.Config(feature_probabilities=(1.0, 0.2, 0.05), n_seeds=3, n_steps=4000, chunk_steps=4000,
                       log_every=100, learning_rate=3e-3)
    return _train(intro, cfg)


def _best(W, final, cell):
    return W[cell][int(np.argmin(final[cell]))]


def test_intro_dense_keeps_two_most_important_features_orthogonal(intro_trained):
    w = _best(*intro_trained, 0)
    norms = np.linalg.norm(w, axis=0)
    np.testing.assert_array_equal(np.flatnonzero(norms > 0.5), [0, 1], err_msg=str(norms.round(2)))
    assert norms[2:].max() < 0.1
    np.testing.assert_allclose(w[:, :2].T @ w[:, :2], np.eye(2), atol=0.05)
    assert classify_geometry(w) == "orthogonal pair"


def test_intro_eighty_percent_sparsity_gives_two_antipodal_pairs(intro_trained):
    w = _best(*intro_trained, 1)
    norms = np.linalg.norm(w, axis=0)
    kept = norms > 0.5
    assert np.sum(kept) == 4, norms.round(2)
    np.testing.assert_allclose(np.asarray(metrics.feature_dimensionality(w))[kept], 0.5, atol=0.05)
    assert classify_geometry(w) == "two antipodal pairs"


def test_intro_high_sparsity_gives_pentagon(intro_trained):
    w = _best(*intro_trained, 2)
    norms = np.linalg.norm(w, axis=0)
    assert np.all(norms > 0.9), norms.round(2)
    np.testing.assert_allclose(np.asarray(metrics.feature_dimensionality(w)), 0.4, atol=0.03)
    angles = np.sort(np.arctan2(w[1], w[0]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
    np.testing.assert_allclose(gaps, 2 * np.pi / 5, atol=np.radians(10))
    assert classify_geometry(w) == "pentagon"


@pytest.fixture(scope="module")
def correlated_trained():
    """Two correlated pairs, two anticorrelated pairs, three correlated pairs; 1−S = 0.1; 3 seeds."""
    cfg = correlated.Config(
        setups=("correlated-pairs", "anticorrelated-pairs", "three-correlated-pairs"), feature_probabilities=(0.1,),
        n_seeds=3, n_steps=4000, chunk_steps=4000, log_every=100, learning_rate=3e-3,
    )
    W, final = _train(correlated, cfg)
    return {s: (W[a, 0], final[a, 0]) for a, s in enumerate(cfg.setups)}


def test_anticorrelated_pairs_end_up_antipodal(correlated_trained):
    W, final = correlated_trained["anticorrelated-pairs"]
    w = W[int(np.argmin(final))]
    cos = correlated.pair_cosines(w[:, :4], 2)
    assert all(c is not None and c < -0.95 for c in cos), cos


def test_correlated_pairs_are_orthogonal_not_antipodal(correlated_trained):
    W, final = correlated_trained["correlated-pairs"]
    w = W[int(np.argmin(final))]
    cos = correlated.pair_cosines(w[:, :4], 2)
    assert all(c is not None and abs(c) < 0.2 for c in cos), cos
    for w in W:  # no seed puts a correlated pair antipodal
        assert all(c is None or c > -0.5 for c in correlated.pair_cosines(w[:, :4], 2))


def test_three_correlated_pairs_collapse_or_stay_together_never_antipodal(correlated_trained):
    W, final = correlated_trained["three-correlated-pairs"]
    for w in W:
        cos = correlated.pair_cosines(w, 3)
        assert all(c is None or c > -0.5 for c in cos), cos
    best = correlated.pair_cosines(W[int(np.argmin(final))], 3)
    # with no room for three orthogonal pairs, at least one pair shares a direction (PCA-like)
    assert max(c for c in best if c is not None) > 0.25, best
