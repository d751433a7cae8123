"""Superposition metrics against closed-form geometries."""

import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.toy import metrics


def _polygon(k, radius=1.0):
    angles = 2 * np.pi * np.arange(k) / k
    return jnp.asarray(radius * np.stack([np.cos(angles), np.sin(angles)]), jnp.float32)  # (2, k)


def test_dedicated_dimensions():
    W = jnp.asarray(np.concatenate([np.eye(3), np.zeros((3, 2))], axis=1), jnp.float32)  # 3 of 5 learned
    np.testing.assert_allclose(metrics.feature_norms(W), [1, 1, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(metrics.superposition(W), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.feature_dimensionality(W), [1, 1, 1, 0, 0], atol=1e-6)
    assert int(metrics.n_represented(W)) == 3
    np.testing.assert_allclose(metrics.dimensions_per_feature(W), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "W, expected_dim, expected_sup",
    [
        (np.array([[1.0, -1.0]]), 1 / 2, 1.0),  # antipodal pair
        (np.asarray(_polygon(3)), 2 / 3, 0.5),  # triangle: 2 * cos²(120°)
        (np.asarray(_polygon(5)), 2 / 5, 2 * (np.cos(2 * np.pi / 5) ** 2 + np.cos(4 * np.pi / 5) ** 2)),  # pentagon
    ],
)
def test_polytopes(W, expected_dim, expected_sup):
    W = jnp.asarray(W, jnp.float32)
    np.testing.assert_allclose(metrics.feature_dimensionality(W), expected_dim, rtol=1e-5)
    np.testing.assert_allclose(metrics.superposition(W), expected_sup, rtol=1e-5)
    np.testing.assert_allclose(metrics.superposition(W, sqrt=True), np.sqrt(expected_sup), rtol=1e-5)


def test_tetrahedron_has_dimensionality_three_quarters():
    V = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float).T / np.sqrt(3)  # (3, 4)
    np.testing.assert_allclose(metrics.feature_dimensionality(jnp.asarray(V, jnp.float32)), 0.75, rtol=1e-5)


def test_dimensionality_is_scale_invariant_per_feature_set_and_matches_float64(rng):
    W = rng.normal(size=(4, 9))
    norms = np.linalg.norm(W, axis=0)
    unit = W / norms
    overlap = (unit.T @ W) ** 2
    D_ref = norms**2 / overlap.sum(1)
    sup_ref = overlap.sum(1) - np.diag(overlap)
    np.testing.assert_allclose(metrics.feature_dimensionality(jnp.asarray(W, jnp.float32)), D_ref, rtol=1e-4)
    np.testing.assert_allclose(metrics.superposition(jnp.asarray(W, jnp.float32)), sup_ref, rtol=1e-4)
    np.testing.assert_allclose(metrics.dimensions_per_feature(jnp.asarray(W, jnp.float32)), 4 / np.sum(W**2), rtol=1e-5)
