"""Naming feature geometry: the classifier on exact configurations, the 2-D projection, and
placing dimensionalities at polytope fractions."""

import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.toy import geometry, metrics
from superpos_jax.toy.geometry import classify_geometry, fraction_counts, fraction_label, nearest_fraction

FRACTIONS = (1.0, 0.75, 2 / 3, 0.5, 0.4, 0.375)


def _polygon(k, radius=1.0, phase=0.3):
    angles = phase + 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(angles), np.sin(angles)])


@pytest.mark.parametrize(
    "W, name",
    [
        (np.array([[1.0, 0.0, 0.01], [0.0, 1.0, 0.02]]), "orthogonal pair"),
        (np.array([[1.0, -1.0], [0.0, 0.0]]), "antipodal pair"),
        (_polygon(4)[:, [0, 2, 1, 3]], "two antipodal pairs"),
        (_polygon(3), "triangle"),
        (_polygon(5), "pentagon"),
        (_polygon(6), "hexagon"),
        (np.array([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]), "1 antipodal pair + 1 orthogonal feature"),
        (np.array([[0.7, 0.7, 0.0], [0.0, 0.02, 1.0]]), "orthogonal pair (1 collapsed)"),
        (np.array([[1.0, np.cos(1.0)], [0.0, np.sin(1.0)]]), "pair at 57°"),
        (np.zeros((2, 3)), "nothing represented"),
        (np.eye(3), "3 orthogonal features"),
    ],
)
def test_classify_geometry(W, name):
    assert classify_geometry(W) == name


def test_pentagon_has_dimensionality_two_fifths():
    D = np.asarray(metrics.feature_dimensionality(jnp.asarray(_polygon(5), jnp.float32)))
    np.testing.assert_allclose(D, 0.4, atol=1e-5)


def test_classify_geometry_counts_only_features_above_the_represented_norm():
    # A pentagon at radius 1 plus two short residual features, which must not count.
    W = np.concatenate([_polygon(5), 0.99 * metrics.REPRESENTED_NORM * np.array([[1.0, 0.0], [0.0, 1.0]])], axis=1)
    assert classify_geometry(W) == "pentagon"
    assert classify_geometry(W, threshold=0.1) != "pentagon"
    just_above = 1.01 * metrics.REPRESENTED_NORM * _polygon(5)
    assert classify_geometry(just_above) == "pentagon"
    assert classify_geometry(0.99 * metrics.REPRESENTED_NORM * _polygon(5)) == "nothing represented"


def test_classify_geometry_sees_a_polygon_in_three_dimensions():
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    W = rotation @ np.concatenate([_polygon(5), np.zeros((1, 5))])
    assert classify_geometry(W) == "pentagon"


def test_project_to_plane_keeps_two_dims_pads_one_and_projects_more():
    W2 = np.arange(6.0).reshape(2, 3)
    points, projected = geometry.project_to_plane(W2)
    np.testing.assert_array_equal(points, W2)
    assert not projected
    points, projected = geometry.project_to_plane(np.array([[1.0, -2.0]]))
    np.testing.assert_array_equal(points, [[1.0, -2.0], [0.0, 0.0]])
    assert not projected
    # A rank-2 W in 4-D: the projection keeps every Gram entry (an isometry of its plane).
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.standard_normal((4, 2)))
    W = basis @ rng.standard_normal((2, 6))
    points, projected = geometry.project_to_plane(W)
    assert projected and points.shape == (2, 6)
    np.testing.assert_allclose(points.T @ points, W.T @ W, atol=1e-10)


def test_fraction_label():
    assert [fraction_label(f) for f in FRACTIONS] == ["1", "3/4", "2/3", "1/2", "2/5", "3/8"]
    assert fraction_label(0.0) == "0" and fraction_label(0.6667) == "2/3"


def test_nearest_fraction_and_counts():
    values = np.array([0.99, 0.74, 0.66, 0.52, 0.41, 0.37, 0.01, 0.3, 0.9, np.nan])
    labels = nearest_fraction(values, FRACTIONS, 0.03)
    assert labels == ["1", "3/4", "2/3", "1/2", "2/5", "3/8", "0", "other", "other", "other"]
    counts = fraction_counts(values, FRACTIONS, 0.03)
    assert counts == {"1": 1, "3/4": 1, "2/3": 1, "1/2": 1, "2/5": 1, "3/8": 1, "0": 1, "other": 2}
    assert geometry.NOT_LEARNED == "0" and geometry.OTHER == "other"


def test_represented_norm_is_the_default_threshold_everywhere():
    W = jnp.asarray(np.diag([1.0, metrics.REPRESENTED_NORM, 0.2]), jnp.float32)  # norms 1, 0.5 (not >), 0.2
    assert int(metrics.n_represented(W)) == 1
    np.testing.assert_allclose(np.asarray(metrics.represented_dimensionality(W)), [1.0, 0.0, 0.0])
    from superpos_jax.toy import theory

    assert int(theory.feature_phase(W, 1)) == theory.NOT_REPRESENTED
    assert int(theory.feature_phase(W, 0)) == theory.DEDICATED
