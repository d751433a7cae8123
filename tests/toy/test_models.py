"""Toy models' forward, loss and gradients against float64 NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.toy import models
from superpos_jax.toy.models import AbsParams, ToyParams


def _np_toy(W, b, x, I, kind):
    hidden_relu, output_relu = models.MODEL_KINDS[kind]
    h = W @ x
    if hidden_relu:
        h = np.maximum(h, 0)
    z = W.T @ h + b[:, None]
    out = np.maximum(z, 0) if output_relu else z
    return out, np.mean(I[:, None] * (x - out) ** 2)


def _np_toy_grads(W, b, x, I, kind):
    """Hand-derived gradient of the loss (float64)."""
    hidden_relu, output_relu = models.MODEL_KINDS[kind]
    n, B = x.shape
    a = W @ x
    h = np.maximum(a, 0) if hidden_relu else a
    z = W.T @ h + b[:, None]
    out = np.maximum(z, 0) if output_relu else z
    d_out = -2.0 * I[:, None] * (x - out) / (n * B)
    dz = d_out * (z > 0) if output_relu else d_out
    db = dz.sum(1)
    dh = W @ dz
    da = dh * (a > 0) if hidden_relu else dh
    dW = h @ dz.T + da @ x.T
    return dW, db


class TestToy(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_loss_and_grad(self):
        rng = np.random.default_rng(0)
        n, m, B = 7, 3, 33
        W = rng.normal(size=(m, n)) * 0.6
        b = rng.normal(size=n) * 0.1
        x = rng.uniform(size=(n, B)) * (rng.uniform(size=(n, B)) < 0.4)
        I = 0.8 ** np.arange(n)
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        params = ToyParams(W=f32(W), b=f32(b))
        for kind in models.MODEL_KINDS:
            flags = models.kind_flags(kind)
            out_ref, loss_ref = _np_toy(W, b, x, I, kind)
            out = self.variant(models.toy_forward)(params, f32(x), flags)
            np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6, err_msg=kind)
            loss, grads = self.variant(jax.value_and_grad(models.toy_loss))(params, f32(x), f32(I), flags)
            np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, err_msg=kind)
            dW, db = _np_toy_grads(W, b, x, I, kind)
            np.testing.assert_allclose(grads.W, dW, rtol=1e-4, atol=1e-7, err_msg=kind)
            np.testing.assert_allclose(grads.b, db, rtol=1e-4, atol=1e-7, err_msg=kind)


def test_abs_model_against_float64(rng):
    n, m, B = 4, 6, 25
    W1, W2, b = rng.normal(size=(m, n)), rng.normal(size=(n, m)), rng.normal(size=n) * 0.1
    x = rng.uniform(-1, 1, size=(n, B))
    I = 0.8 ** np.arange(n)
    out_ref = np.maximum(W2 @ np.maximum(W1 @ x, 0) + b[:, None], 0)
    loss_ref = np.mean(I[:, None] * (np.abs(x) - out_ref) ** 2)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    params = AbsParams(W1=f32(W1), W2=f32(W2), b=f32(b))
    np.testing.assert_allclose(models.abs_forward(params, f32(x)), out_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models.abs_loss(params, f32(x), f32(I)), loss_ref, rtol=1e-5)
    # Gradient by central finite differences of the float64 reference, on W2.
    g = jax.grad(models.abs_loss)(params, f32(x), f32(I)).W2
    eps = 1e-6
    num = np.zeros_like(W2)
    for idx in np.ndindex(W2.shape):
        Wp, Wm = W2.copy(), W2.copy()
        Wp[idx] += eps
        Wm[idx] -= eps
        fp = np.mean(I[:, None] * (np.abs(x) - np.maximum(Wp @ np.maximum(W1 @ x, 0) + b[:, None], 0)) ** 2)
        fm = np.mean(I[:, None] * (np.abs(x) - np.maximum(Wm @ np.maximum(W1 @ x, 0) + b[:, None], 0)) ** 2)
        num[idx] = (fp - fm) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-3, atol=1e-6)


def test_init_is_per_instance_xavier():
    p = models.init_toy(400, 100, key=jax.random.key(0))
    assert p.W.shape == (100, 400) and p.b.shape == (400,)
    np.testing.assert_allclose(np.std(np.asarray(p.W)), np.sqrt(2 / 500), rtol=0.02)
    assert float(jnp.abs(p.b).max()) == 0.0


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown toy model kind"):
        models.kind_flags("sigmoid")


def test_toy_hparams_shapes_and_errors():
    hp = models.toy_hparams([1.0, 0.1], 0.7 ** np.arange(4), ["linear", "relu"], 1e-3)
    assert hp["feature_probability"].shape == (2, 4) and hp["importance"].shape == (2, 4)
    np.testing.assert_array_equal(hp["flags"], [[0, 0], [0, 1]])
    np.testing.assert_allclose(hp["learning_rate"], [1e-3, 1e-3])
    per_feature = models.toy_hparams(np.full((2, 4), 0.5), np.ones(4), ["relu", "relu"])
    assert "learning_rate" not in per_feature
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        models.toy_hparams([1.2, 0.1], np.ones(4), ["relu", "relu"])
    with pytest.raises(ValueError, match="expected"):
        models.toy_hparams([0.1, 0.1, 0.1], np.ones(4), ["relu", "relu"])
    with pytest.raises(ValueError, match="unknown toy model kind"):
        models.toy_hparams([0.1], np.ones(4), ["tanh"])
