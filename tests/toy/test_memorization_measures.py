"""Finite training sets (`toy.datasets`) and the memorisation toy model (`toy.memorization`):
the data-point dimensionality against closed forms and a float64 reference, the minibatch
rule, and the exactness of the padded hidden width."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.toy import datasets, memorization as mem
from superpos_jax.toy.models import ToyParams


def _polygon(k, radius=1.0, phase=0.3):
    angles = phase + 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(angles), np.sin(angles)])


def _reference_dt(H, mask):
    """D_t by the definition, in float64 loops."""
    H = np.asarray(H, np.float64)
    out = np.zeros(H.shape[1])
    for t in range(H.shape[1]):
        if not mask[t]:
            continue
        denom = sum((H[:, t] @ H[:, s]) ** 2 for s in range(H.shape[1]) if mask[s])
        out[t] = (H[:, t] @ H[:, t]) ** 2 / denom if denom > 0 else 0.0
    return out


def test_datapoint_dimensionality_closed_forms():
    with jax.enable_x64(True):
        # orthogonal vectors of different lengths: one dimension each
        H = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0] @ np.diag([0.5, 2.0, 1.3])
        np.testing.assert_allclose(mem.datapoint_dimensionality(jnp.asarray(H)), 1.0, rtol=1e-12)
        # antipodal pairs in orthogonal directions: 1/2 each
        e = np.eye(3)
        H = np.stack([e[0], 2 * e[1], -e[0], -2 * e[1]], axis=1)
        np.testing.assert_allclose(mem.datapoint_dimensionality(jnp.asarray(H)), 0.5, rtol=1e-12)
        # a regular k-gon in a plane: 2/k
        for k in (3, 4, 5, 8):
            np.testing.assert_allclose(mem.datapoint_dimensionality(jnp.asarray(_polygon(k, 1.7))), 2.0 / k, rtol=1e-12)
        # a zero vector gets 0 and does not change the others
        H = np.concatenate([np.eye(2), np.zeros((2, 1))], axis=1)
        np.testing.assert_allclose(mem.datapoint_dimensionality(jnp.asarray(H)), [1.0, 1.0, 0.0], atol=1e-12)


def test_datapoint_dimensionality_mask_and_reference():
    rng = np.random.default_rng(1)
    H = rng.normal(size=(3, 9))
    mask = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], np.float64)
    with jax.enable_x64(True):
        got = np.asarray(mem.datapoint_dimensionality(jnp.asarray(H), jnp.asarray(mask)))
        np.testing.assert_allclose(got, _reference_dt(H, mask.astype(bool)), rtol=1e-10, atol=1e-14)
        # masked points are excluded entirely: the same as dropping their columns
        np.testing.assert_allclose(got[:6], np.asarray(mem.datapoint_dimensionality(jnp.asarray(H[:, :6]))), rtol=1e-12)
    assert np.all(got[6:] == 0)
    # antipodal pair plus its masked-out copies: still 1/2 each
    H = np.array([[1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    got = np.asarray(mem.datapoint_dimensionality(jnp.asarray(H), jnp.asarray([1.0, 1.0, 0.0, 0.0])))
    np.testing.assert_allclose(got, [0.5, 0.5, 0, 0], rtol=1e-6)


@pytest.mark.parametrize("n_train", [1, 5, 64])
def test_batch_indices_full_batch(n_train):
    idx, w = datasets.batch_indices(jax.random.key(0), n_train, 64)
    idx, w = np.asarray(idx), np.asarray(w)
    assert idx.max() < n_train
    np.testing.assert_array_equal(idx[:n_train], np.arange(n_train))  # every training point once
    np.testing.assert_allclose(w[:n_train], 1.0 / n_train, rtol=1e-6)
    assert np.all(w[n_train:] == 0)
    assert abs(w.sum() - 1.0) < 1e-6


def test_batch_indices_sampled_and_traced():
    draw = jax.jit(jax.vmap(lambda k, t: datasets.batch_indices(k, t, 256)))
    keys = jax.random.split(jax.random.key(1), 200)
    idx, w = draw(keys, jnp.full((200,), 1000, jnp.int32))
    idx = np.asarray(idx)
    assert idx.min() >= 0 and idx.max() < 1000
    np.testing.assert_allclose(np.asarray(w), 1 / 256)
    counts = np.bincount(idx.ravel(), minlength=1000)  # uniform over [0, T): 51.2 per index
    assert abs(counts.mean() - 51.2) < 1e-9 and counts.std() < 1.3 * np.sqrt(51.2)
    # the drawn indices do not depend on how far the pool is padded beyond T
    a, _ = datasets.batch_indices(jax.random.key(7), jnp.int32(300), 128)
    rows = datasets.gather_batch(jnp.arange(2000.0)[:, None], a)
    np.testing.assert_array_equal(np.asarray(rows)[0], np.asarray(a))


def test_pool_and_train_mask():
    pool = np.asarray(datasets.sample_pool(jax.random.key(2), 0.05, 100, 4000))
    assert pool.shape == (4000, 100)
    assert abs((pool > 0).mean() - 0.05) < 0.003 and pool.max() <= 1 and pool.min() >= 0
    np.testing.assert_array_equal(np.asarray(datasets.train_mask(3, 5)), [1, 1, 1, 0, 0])


def _params(rng, m, n):
    return ToyParams(W=jnp.asarray(rng.normal(size=(m, n)) * 0.3, jnp.float32),
                     b=jnp.asarray(rng.normal(size=n) * 0.1, jnp.float32))


def test_pool_loss_matches_float64_reference():
    rng = np.random.default_rng(3)
    p = _params(rng, 3, 20)
    pool = np.asarray(datasets.sample_pool(jax.random.key(4), 0.2, 20, 50))
    importance = rng.uniform(0.5, 1.0, 20)
    W = np.asarray(p.W, np.float64)[:2]  # d_hidden = 2: the third row is masked
    out = np.maximum(W.T @ W @ pool[:30].T + np.asarray(p.b, np.float64)[:, None], 0)
    expected = np.mean(importance[:, None] * (pool[:30].T - out) ** 2)
    got = mem.pool_loss(p, pool, importance, 2, 30)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_padded_width_is_exact():
    """A width-2 model padded to 4 hidden units: same init rows, zero padding, same loss and
    gradients, exactly zero gradient on the padding rows."""
    n = 30
    key = jax.random.key(5)
    padded = mem.init_masked(n, 4, 2, key=key)
    plain = mem.init_masked(n, 2, 2, key=key)
    np.testing.assert_array_equal(np.asarray(padded.W[:2]), np.asarray(plain.W))
    assert np.all(np.asarray(padded.W[2:]) == 0)
    assert abs(float(jnp.std(mem.init_masked(n, 4, 4, key=key).W)) - np.sqrt(2 / (n + 4))) < 0.02

    rng = np.random.default_rng(6)
    wide = _params(rng, 4, n)  # padding rows non-zero on purpose: the mask must hide them
    narrow = ToyParams(W=wide.W[:2], b=wide.b)
    pool = datasets.sample_pool(jax.random.key(8), 0.1, n, 40)
    imp = jnp.ones(n)
    grad = jax.jit(jax.value_and_grad(mem.pool_loss))
    loss_w, g_w = grad(wide, pool, imp, 2)
    loss_n, g_n = grad(narrow, pool, imp, 2)
    np.testing.assert_allclose(float(loss_w), float(loss_n), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_w.W[:2]), np.asarray(g_n.W), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.asarray(g_w.b), np.asarray(g_n.b), rtol=1e-5, atol=1e-8)
    assert np.all(np.asarray(g_w.W[2:]) == 0)


def test_memorization_hparams_checks():
    hp = mem.memorization_hparams(np.array([2, 8]), np.array([1, 2]), np.array([0, 1]), np.ones(5), 1e-3,
                                  pool_shape=(2, 8), max_hidden=2)
    assert hp["n_train"].dtype == np.int32 and hp["importance"].shape == (2, 5) and hp["learning_rate"].shape == (2,)
    with pytest.raises(ValueError, match="n_train <= 8"):
        mem.memorization_hparams(np.array([9]), np.array([1]), np.array([0]), np.ones(5), pool_shape=(1, 8))
    with pytest.raises(ValueError, match="max_hidden=2"):
        mem.memorization_hparams(np.array([2]), np.array([3]), np.array([0]), np.ones(5), max_hidden=2)
    with pytest.raises(ValueError, match=">= 1"):
        mem.memorization_hparams(np.array([0]), np.array([1]), np.array([0]), np.ones(5))
    with pytest.raises(ValueError, match="integer"):
        mem.memorization_hparams(np.array([2.5]), np.array([1]), np.array([0]), np.ones(5))
