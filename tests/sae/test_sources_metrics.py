"""SAE activation sources (synthetic ground truth, array streaming) and SAE metrics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.sae.sources import (
    ArraySource,
    decaying_probabilities,
    ground_truth_dictionary,
    sample_ground_truth,
)
from superpos_jax.sae.metrics import (
    cosine_matrix,
    dead_fraction,
    dense_fraction,
    feature_density_histogram,
    firing_counts,
    fraction_of_variance_unexplained,
    hungarian_matching_score,
    l0,
    linear_sum_assignment,
    mmcs,
    mse,
)

# ---------------------------------------------------------------------------------------------
# Ground-truth sampler


def test_dictionary_unit_norm_and_shape():
    D = ground_truth_dictionary(64, 16, key=jax.random.key(0))
    assert D.shape == (64, 16) and D.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(D), axis=1), 1.0, atol=1e-5)


def test_decaying_probabilities():
    p = decaying_probabilities(512, base=0.99, mean_active=5)
    assert p.shape == (512,) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(), 5.0, rtol=1e-5)
    np.testing.assert_allclose(p[1:] / p[:-1], 0.99, rtol=1e-5)
    with pytest.raises(ValueError, match="p_0"):
        decaying_probabilities(4, base=0.99, mean_active=5)
    with pytest.raises(ValueError, match="base"):
        decaying_probabilities(4, base=1.5)


def test_sampler_statistics():
    n_gt, d, batch = 40, 16, 20000
    D = ground_truth_dictionary(n_gt, d, key=jax.random.key(1))
    p = decaying_probabilities(n_gt, base=0.95, mean_active=5)
    x, codes = jax.jit(sample_ground_truth, static_argnums=3)(jax.random.key(2), D, p, batch)
    x, codes, D = np.asarray(x, np.float64), np.asarray(codes, np.float64), np.asarray(D, np.float64)
    assert x.shape == (batch, d) and codes.shape == (batch, n_gt)
    np.testing.assert_allclose(x, codes @ D, atol=1e-5)
    active = codes > 0
    rate = active.mean(axis=0)
    np.testing.assert_array_less(np.abs(rate - p), 4 * np.sqrt(p * (1 - p) / batch) + 1e-3)
    np.testing.assert_allclose(active.sum(axis=1).mean(), 5.0, rtol=0.03)
    mags = codes[active]
    assert mags.min() >= 0 and mags.max() <= 1
    np.testing.assert_allclose(mags.mean(), 0.5, atol=0.01)
    # Independent features: co-firing of the two most frequent features factorises.
    both = np.mean(active[:, 0] & active[:, 1])
    np.testing.assert_allclose(both, rate[0] * rate[1], atol=0.006)


def test_sampler_correlation_model():
    n_gt, batch, rho = 6, 40000, 0.6
    D = ground_truth_dictionary(n_gt, 8, key=jax.random.key(3))
    p = np.array([0.3, 0.2, 0.1, 0.3, 0.05, 0.15], np.float32)
    _, codes = sample_ground_truth(jax.random.key(4), D, p, batch, correlation=rho)
    active = np.asarray(codes) > 0
    rate = active.mean(axis=0)
    np.testing.assert_allclose(rate, p, atol=0.01)
    joint = (active[:, :, None] & active[:, None, :]).mean(axis=0)
    pi, pj = p[:, None].astype(np.float64), p[None, :].astype(np.float64)
    expected = rho**2 * np.minimum(pi, pj) + (1 - rho**2) * pi * pj
    off = ~np.eye(n_gt, dtype=bool)
    np.testing.assert_allclose(joint[off], expected[off], atol=0.01)


def test_sampler_vmaps_over_traced_probabilities():
    D = ground_truth_dictionary(10, 4, key=jax.random.key(5))
    probs = jnp.stack([jnp.full((10,), 0.1), jnp.full((10,), 0.5)])
    rho = jnp.array([0.0, 0.5])
    keys = jax.random.split(jax.random.key(6), 2)
    fn = jax.jit(jax.vmap(lambda k, p, r: sample_ground_truth(k, D, p, 4000, correlation=r)))
    x, codes = fn(keys, probs, rho)
    assert x.shape == (2, 4000, 4) and codes.shape == (2, 4000, 10)
    rates = np.asarray(jnp.mean(codes > 0, axis=(1, 2)))
    np.testing.assert_allclose(rates, [0.1, 0.5], atol=0.02)
    single_x, _ = sample_ground_truth(keys[1], D, probs[1], 4000, correlation=0.5)
    np.testing.assert_allclose(np.asarray(x[1]), np.asarray(single_x), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ArraySource


def _rows(n: int = 24, d: int = 3) -> np.ndarray:
    # Row r is constant r, so a batch's rows identify themselves.
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)


def _epoch_rows(src: ArraySource, epoch: int) -> np.ndarray:
    return np.concatenate([b[:, 0] for b in src.epoch(epoch)]).astype(np.int64)


def test_array_source_every_row_once_per_epoch_and_reshuffled():
    src = ArraySource(_rows(), 6, seed=0)
    assert (src.n_rows, src.d_in, src.steps_per_epoch) == (24, 3, 4)
    e0, e1 = _epoch_rows(src, 0), _epoch_rows(src, 1)
    np.testing.assert_array_equal(np.sort(e0), np.arange(24))
    np.testing.assert_array_equal(np.sort(e1), np.arange(24))
    assert not np.array_equal(e0, e1)
    b = src.batch(0)
    assert b.shape == (6, 3) and b.dtype == np.float32


def test_array_source_remainder_rows_at_most_once():
    src = ArraySource(_rows(26), 6, seed=1)
    assert src.steps_per_epoch == 4
    e0 = _epoch_rows(src, 0)
    assert len(e0) == 24 and len(np.unique(e0)) == 24


def test_array_source_deterministic_and_resumable():
    a = ArraySource(_rows(), 5, seed=7)
    b = ArraySource(_rows(), 5, seed=7)
    c = ArraySource(_rows(), 5, seed=8)
    steps = list(range(12))
    forward = [a.batch(s) for s in steps]
    backward = {s: b.batch(s) for s in reversed(steps)}
    for s in steps:
        np.testing.assert_array_equal(forward[s], backward[s])
    # Resume mid-way in a fresh object: same batches.
    resumed = ArraySource(_rows(), 5, seed=7)
    for s in (9, 3, 10, 0):
        np.testing.assert_array_equal(resumed.batch(s), forward[s])
    assert any(not np.array_equal(c.batch(s), forward[s]) for s in steps)


def test_array_source_memmap(tmp_path):
    data = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    path = tmp_path / "acts.npy"
    np.save(path, data)
    from_file = ArraySource(path, 10, seed=3)
    from_str = ArraySource(str(path), 10, seed=3)
    in_memory = ArraySource(data, 10, seed=3)
    assert isinstance(from_file.data, np.memmap)
    for s in range(6):
        np.testing.assert_array_equal(from_file.batch(s), in_memory.batch(s))
        np.testing.assert_array_equal(from_str.batch(s), in_memory.batch(s))
        np.testing.assert_array_equal(from_file.batch(s), data[from_file.indices(s)])


def test_array_source_errors(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        ArraySource(np.zeros(10, np.float32), 2, seed=0)
    with pytest.raises(ValueError, match="2-D"):
        ArraySource(np.zeros((2, 3, 4), np.float32), 2, seed=0)
    with pytest.raises(ValueError, match="at least one batch"):
        ArraySource(np.zeros((3, 2), np.float32), 4, seed=0)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        ArraySource(tmp_path / "missing.npy", 4, seed=0)
    with pytest.raises(TypeError, match="floating"):
        ArraySource(np.zeros((8, 2), np.int32), 4, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        ArraySource(np.zeros((8, 2), np.float32), 0, seed=0)
    with pytest.raises(ValueError, match="step"):
        ArraySource(np.zeros((8, 2), np.float32), 4, seed=0).batch(-1)


# ---------------------------------------------------------------------------------------------
# Reconstruction and sparsity metrics


def test_reconstruction_metrics_closed_form(rng):
    x = rng.normal(size=(50, 8)).astype(np.float32)
    assert float(mse(x, x)) == 0.0
    assert float(fraction_of_variance_unexplained(x, x)) == 0.0
    mean = np.broadcast_to(x.mean(axis=0, keepdims=True), x.shape)
    np.testing.assert_allclose(float(fraction_of_variance_unexplained(x, mean)), 1.0, rtol=1e-5)
    x_hat = x + np.float32(0.5)
    np.testing.assert_allclose(float(mse(x, x_hat)), 0.25, rtol=1e-6)
    x64 = x.astype(np.float64)
    expected = 0.25 * x.size / np.sum((x64 - x64.mean(axis=0)) ** 2)
    np.testing.assert_allclose(float(fraction_of_variance_unexplained(x, x_hat)), expected, rtol=1e-5)


def test_sparsity_metrics_closed_form():
    f = np.array([[0, 1, 0, 2], [0, 0, 0, 3], [0, 5, 0, 1]], np.float32)
    np.testing.assert_allclose(float(l0(f)), (2 + 1 + 2) / 3, rtol=1e-6)
    counts = firing_counts(f)
    np.testing.assert_array_equal(np.asarray(counts), [0, 2, 0, 3])
    assert float(dead_fraction(counts)) == 0.5
    assert float(dense_fraction(counts, 3, threshold=0.7)) == 0.25
    assert float(dense_fraction(np.array([0, 10, 11, 200], np.int32), 100)) == 0.5


def test_feature_density_histogram():
    counts = np.array([0, 0, 1, 10, 100, 1000, 1000], np.int64)
    hist, edges, n_dead = feature_density_histogram(counts, 1000, bins=3)
    np.testing.assert_allclose(edges, [-3, -2, -1, 0])
    np.testing.assert_array_equal(hist, [1, 1, 3])
    assert n_dead == 2 and hist.sum() + n_dead == counts.size
    hist, _, _ = feature_density_histogram(counts, 1000, bins=[-3.5, -1.5, 0.5])
    np.testing.assert_array_equal(hist, [2, 3])
    with pytest.raises(ValueError, match="n_tokens"):
        feature_density_histogram(counts, 10)


# ---------------------------------------------------------------------------------------------
# Dictionary recovery


def test_mmcs_and_matching_perfect_recovery(rng):
    gt = np.asarray(ground_truth_dictionary(12, 8, key=jax.random.key(9)))
    perm = rng.permutation(12)
    decoder = (gt[perm] * rng.uniform(0.5, 2.0, size=(12, 1))).T.astype(np.float32)  # scaled columns
    np.testing.assert_allclose(float(mmcs(decoder, gt)), 1.0, atol=1e-5)
    np.testing.assert_allclose(hungarian_matching_score(decoder, gt), 1.0, atol=1e-6)
    # Extra decoder columns do not hurt; flipped signs do (signed cosine) unless absolute=True.
    wider = np.concatenate([decoder, rng.normal(size=(8, 5)).astype(np.float32)], axis=1)
    np.testing.assert_allclose(hungarian_matching_score(wider, gt), 1.0, atol=1e-6)
    flipped = -decoder
    assert float(mmcs(flipped, gt)) < 0.9
    np.testing.assert_allclose(float(mmcs(flipped, gt, absolute=True)), 1.0, atol=1e-5)
    np.testing.assert_allclose(hungarian_matching_score(flipped, gt, absolute=True), 1.0, atol=1e-6)


def test_matching_is_stricter_than_mmcs():
    gt = np.eye(3, dtype=np.float32)
    decoder = np.stack([gt[0], gt[0], gt[0]], axis=1)  # every column is feature 0
    assert float(mmcs(decoder, gt)) == pytest.approx(1 / 3)
    assert hungarian_matching_score(decoder, gt) == pytest.approx(1 / 3)
    decoder = np.stack([gt[0], (gt[0] + gt[1]) / np.sqrt(2)], axis=1).astype(np.float32)
    # MMCS: features 0 and 1 both pick their best column; matching gives each a different one.
    np.testing.assert_allclose(float(mmcs(decoder, gt)), (1 + np.sqrt(0.5)) / 3, rtol=1e-5)
    np.testing.assert_allclose(hungarian_matching_score(decoder, gt), (1 + np.sqrt(0.5)) / 3, rtol=1e-6)
    decoder = np.stack([(gt[0] + gt[1]) / np.sqrt(2), gt[2]], axis=1).astype(np.float32)
    np.testing.assert_allclose(float(mmcs(decoder, gt)), (2 * np.sqrt(0.5) + 1) / 3, rtol=1e-5)
    np.testing.assert_allclose(hungarian_matching_score(decoder, gt), (np.sqrt(0.5) + 1) / 3, rtol=1e-6)


def test_cosine_matrix_against_float64(rng):
    dec = rng.normal(size=(6, 9)).astype(np.float32)
    gt = rng.normal(size=(4, 6)).astype(np.float32)
    d64, g64 = dec.astype(np.float64), gt.astype(np.float64)
    ref = (g64 / np.linalg.norm(g64, axis=1, keepdims=True)) @ (d64 / np.linalg.norm(d64, axis=0))
    np.testing.assert_allclose(np.asarray(cosine_matrix(dec, gt)), ref, atol=1e-6)
    np.testing.assert_allclose(float(mmcs(dec, gt)), ref.max(axis=1).mean(), atol=1e-6)


def _brute_force(cost: np.ndarray, maximize: bool) -> float:
    n, m = cost.shape
    sign = -1.0 if maximize else 1.0
    if n <= m:
        totals = [cost[np.arange(n), list(c)].sum() for c in itertools.permutations(range(m), n)]
    else:
        totals = [cost[list(r), np.arange(m)].sum() for r in itertools.permutations(range(n), m)]
    return sign * min(sign * t for t in totals)


@pytest.mark.parametrize("maximize", [False, True])
def test_hungarian_against_brute_force(maximize):
    rng = np.random.default_rng(11)
    for case in range(30):
        n, m = rng.integers(1, 6, size=2)
        cost = rng.normal(size=(n, m))
        if case % 5 == 0:
            cost = np.round(cost)  # ties
        rows, cols = linear_sum_assignment(cost, maximize=maximize)
        k = min(n, m)
        assert len(rows) == len(cols) == k
        assert len(set(rows.tolist())) == k and len(set(cols.tolist())) == k
        assert np.all(np.diff(rows) > 0)
        np.testing.assert_allclose(cost[rows, cols].sum(), _brute_force(cost, maximize), atol=1e-9)


def test_hungarian_larger_and_errors(rng):
    cost = rng.normal(size=(40, 60))
    rows, cols = linear_sum_assignment(cost)
    assert len(set(cols.tolist())) == 40
    # Optimality certificate: no 2-swap improves a square optimum.
    square = rng.normal(size=(30, 30))
    r, c = linear_sum_assignment(square)
    total = square[r, c].sum()
    for i, j in itertools.combinations(range(30), 2):
        swapped = total - square[i, c[i]] - square[j, c[j]] + square[i, c[j]] + square[j, c[i]]
        assert swapped >= total - 1e-9
    rows, cols = linear_sum_assignment(np.zeros((0, 3)))
    assert rows.size == cols.size == 0
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        linear_sum_assignment(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="decoder"):
        hungarian_matching_score(np.zeros((3, 2)), np.zeros((2, 4)))


@pytest.mark.parametrize("shape", [(3, 6), (6, 3), (5, 5), (1, 4), (4, 1)])
def test_assignment_equals_brute_force_on_rectangular(shape):
    """scipy-backed assignment: the brute-force optimum on wide, tall and square matrices, rows
    ascending and int64 whichever side is longer."""
    rng = np.random.default_rng(sum(shape))
    for _ in range(8):
        cost = rng.uniform(-1, 1, size=shape)
        for maximize in (False, True):
            rows, cols = linear_sum_assignment(cost, maximize=maximize)
            assert rows.dtype == cols.dtype == np.int64 and rows.size == min(shape)
            assert np.all(np.diff(rows) > 0) and len(set(cols.tolist())) == min(shape)
            np.testing.assert_allclose(cost[rows, cols].sum(), _brute_force(cost, maximize), atol=1e-12)
