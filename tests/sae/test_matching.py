"""`sae.matching`: decoder cosines and activation correlations against float64 closed forms, and
the Hungarian matching against brute force."""

import itertools

import numpy as np
import pytest

from superpos_jax.sae import matching


def test_decoder_cosines_and_hungarian_recover_a_permuted_rescaled_copy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 7))
    perm = rng.permutation(7)
    b = a[:, perm] * rng.uniform(0.5, 3.0, 7)  # column j of b is column perm[j] of a, rescaled
    cos = matching.decoder_cosines(a, b)
    ref = np.array([[u @ v / np.linalg.norm(u) / np.linalg.norm(v) for v in b.T] for u in a.T])
    np.testing.assert_allclose(cos, ref, atol=1e-12)
    m = matching.hungarian_match(cos)
    np.testing.assert_array_equal(m.partner[perm], np.arange(7))  # a's feature perm[j] ↔ b's j
    np.testing.assert_allclose(m.similarity, 1.0, atol=1e-12)
    np.testing.assert_allclose(matching.shared_fraction(m.similarity, [0.99, 1.0 + 1e-9]), [1.0, 0.0])
    assert np.all(matching.decoder_cosines(np.zeros((3, 2)), a[:3]) == 0.0)  # zero columns give 0, not NaN


def test_hungarian_is_optimal_and_leaves_extra_rows_unmatched():
    rng = np.random.default_rng(1)
    for n_a, n_b in ((4, 4), (3, 5), (5, 3)):
        s = rng.uniform(-1, 1, (n_a, n_b))
        m = matching.hungarian_match(s)
        best = max(sum(s[i, j] for i, j in zip(rows, cols))
                   for rows in itertools.combinations(range(n_a), min(n_a, n_b))
                   for cols in itertools.permutations(range(n_b), min(n_a, n_b)))
        assert np.nansum(m.similarity) == pytest.approx(best, abs=1e-12)
        assert len(set(m.partner[m.partner >= 0].tolist())) == min(n_a, n_b)  # one to one
        assert np.sum(np.isnan(m.similarity)) == max(n_a - n_b, 0) == np.sum(m.partner < 0)
        np.testing.assert_allclose(matching.max_similarity(s), s.max(axis=1))
    # NaN (unmatched) is never shared; the fraction is non-increasing in the threshold
    np.testing.assert_allclose(matching.shared_fraction([0.2, np.nan, 0.8, 0.5], [0.0, 0.5, 0.9]), [0.75, 0.5, 0.0])


def test_activation_correlations_match_float64_pearson():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((500, 3))
    a = np.concatenate([np.maximum(base, 0), np.zeros((500, 1))], axis=1)  # the last feature is dead
    b = np.maximum(base @ rng.standard_normal((3, 4)) + 0.1 * rng.standard_normal((500, 4)), 0)
    corr = matching.activation_correlations(a, b)
    ref = np.corrcoef(a[:, :3].T, b.T)[:3, 3:]
    np.testing.assert_allclose(corr[:3], ref, atol=1e-5)
    assert np.all(corr[3] == 0.0)  # a dead (constant) feature correlates with nothing
    np.testing.assert_allclose(np.diag(matching.activation_correlations(a[:, :3], a[:, :3])), 1.0, atol=1e-5)
    d = matching.random_directions(16, 5, seed=0)
    np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1.0)
    with pytest.raises(ValueError, match="same rows"):
        matching.activation_correlations(a, b[:10])


# --- the experiment -------------------------------------------------------------------------
