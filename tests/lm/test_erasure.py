"""LEACE: zero cross-covariance, probes drop to chance, minimal change, idempotence, hook use."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.lm.erasure import LeaceEraser, apply, fit_leace


def _anisotropic_binary(rng, n=4000, d=8):
    """x = A g + 2.5 z δ with A of very unequal scales; z ~ Bernoulli(0.4)."""
    z = (rng.random(n) < 0.4).astype(np.int32)
    scales = np.geomspace(0.2, 5.0, d)
    mix, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = mix * scales[None, :]
    delta = rng.normal(size=d)
    delta /= np.linalg.norm(delta)
    x = rng.normal(size=(n, d)) @ a.T + 2.5 * z[:, None] * delta[None, :]
    return x.astype(np.float32), z


def _cross_cov(x, z_onehot):
    x = np.asarray(x, np.float64)
    z = np.asarray(z_onehot, np.float64)
    return (x - x.mean(0)).T @ (z - z.mean(0)) / x.shape[0]


def _onehot(z):
    return (z[:, None] == np.unique(z)[None, :]).astype(np.float64)


def _reference_leace(x, z):
    """Direct float64 transcription of r(x) = x − W⁺ P W (x − μ) with full matrices."""
    x = np.asarray(x, np.float64)
    mu = x.mean(0)
    zc = z - z.mean(0)
    sxx = (x - mu).T @ (x - mu) / len(x)
    sxz = (x - mu).T @ zc / len(x)
    lam, v = np.linalg.eigh(sxx)
    w = v @ np.diag(lam**-0.5) @ v.T
    w_pinv = v @ np.diag(lam**0.5) @ v.T
    m = w @ sxz
    # m has rank k - 1 for one-hot z (its centred columns sum to zero): cut the null singular
    # value explicitly rather than trust pinv's default cutoff, which changed between NumPy versions.
    p = m @ np.linalg.pinv(m, rcond=1e-10)
    return x - (x - mu) @ (w_pinv @ p @ w).T


@jax.jit
def _fit_logistic(x, y):
    """400 steps of full-batch gradient descent (lr 0.5) on the logistic loss, from zero."""

    def loss(params):
        w, b = params
        logits = x @ w + b
        return jnp.mean(jax.nn.softplus(logits) - y * logits)

    def step(p, _):
        g = jax.grad(loss)(p)
        return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), None

    init = (jnp.zeros(x.shape[1], jnp.float32), jnp.zeros((), jnp.float32))
    return jax.lax.scan(step, init, None, length=400)[0]


def _logistic_probe_accuracy(x, z):
    x = jnp.asarray(x, jnp.float32)
    x = (x - x.mean(0, keepdims=True)) / (x.std(0, keepdims=True) + 1e-6)
    y = jnp.asarray(z, jnp.float32)
    w, b = _fit_logistic(x, y)
    return float(jnp.mean(((x @ w + b) > 0) == (y > 0.5)))


def test_matches_float64_reference_and_zeroes_cross_covariance(rng):
    x, z = _anisotropic_binary(rng)
    eraser = fit_leace(x, z)
    assert isinstance(eraser, LeaceEraser) and eraser.rank == 1
    erased = np.asarray(eraser(jnp.asarray(x)))
    np.testing.assert_allclose(erased, _reference_leace(x, _onehot(z)), atol=2e-4)
    before = np.abs(_cross_cov(x, _onehot(z))).max()
    after = np.abs(_cross_cov(erased, _onehot(z))).max()
    assert before > 0.3 and after < 1e-5 * max(before, 1.0) * 10


def test_linear_probe_drops_to_chance(rng):
    x, z = _anisotropic_binary(rng, n=6000)
    train, test = slice(0, 4000), slice(4000, None)
    eraser = fit_leace(x[train], z[train])
    majority = max(z[train].mean(), 1 - z[train].mean())
    assert _logistic_probe_accuracy(x[train], z[train]) > 0.9
    erased = np.asarray(eraser(jnp.asarray(x)))
    assert _logistic_probe_accuracy(erased[train], z[train]) <= majority + 0.01
    majority_test = max(z[test].mean(), 1 - z[test].mean())
    assert _logistic_probe_accuracy(erased[test], z[test]) <= majority_test + 0.03


def test_least_change_beats_mean_difference_projection(rng):
    x, z = _anisotropic_binary(rng)
    erased = np.asarray(fit_leace(x, z)(jnp.asarray(x)), np.float64)
    x64 = x.astype(np.float64)
    u = _cross_cov(x64, _onehot(z))[:, 1]
    u /= np.linalg.norm(u)
    naive = x64 - np.outer((x64 - x64.mean(0)) @ u, u)
    assert np.abs(_cross_cov(naive, _onehot(z))).max() < 1e-8  # the naive eraser also erases
    leace_cost = np.mean(np.sum((erased - x64) ** 2, axis=1))
    naive_cost = np.mean(np.sum((naive - x64) ** 2, axis=1))
    assert leace_cost < 0.8 * naive_cost


def test_idempotent(rng):
    x, z = _anisotropic_binary(rng)
    eraser = fit_leace(x, z)
    once = eraser(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(eraser(once)), np.asarray(once), atol=1e-4)
    far = jnp.asarray(rng.normal(size=(50, 8)) * 10.0, jnp.float32)
    np.testing.assert_allclose(np.asarray(eraser(eraser(far))), np.asarray(eraser(far)), atol=1e-3)


def test_multiclass_equalises_class_means(rng):
    n, d, k = 3000, 6, 3
    z = rng.integers(0, k, size=n).astype(np.int32)
    means = rng.normal(size=(k, d)) * 2.0
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + means[z]).astype(np.float32)
    eraser = fit_leace(x, z)
    assert eraser.rank == k - 1
    erased = np.asarray(eraser(jnp.asarray(x)), np.float64)
    class_means = np.stack([erased[z == c].mean(0) for c in range(k)])
    np.testing.assert_allclose(class_means, np.broadcast_to(erased.mean(0), (k, d)), atol=1e-4)
    np.testing.assert_allclose(erased, _reference_leace(x, _onehot(z)), atol=2e-4)


def test_continuous_concept_and_rank_deficient_x(rng):
    n, d = 2000, 8
    basis, _ = np.linalg.qr(rng.normal(size=(d, 5)))
    latent = rng.normal(size=(n, 5)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2])
    x = (latent @ basis.T).astype(np.float32)  # rank 5 in R^8
    concept = np.stack([latent[:, 0] + 0.1 * rng.normal(size=n), latent[:, 3] * latent[:, 1]], axis=1)
    eraser = fit_leace(x, concept)
    assert all(bool(jnp.isfinite(a).all()) for a in (eraser.mean, eraser.left, eraser.right))
    assert eraser.rank == 2
    erased = np.asarray(eraser(jnp.asarray(x)), np.float64)
    assert np.abs(_cross_cov(erased, concept)).max() < 1e-4
    change = erased - x
    np.testing.assert_allclose(change - change @ basis @ basis.T, 0.0, atol=1e-4)  # stays in the data span


def test_hook_on_batch_pos_d_under_jit_vmap_grad(rng):
    x, z = _anisotropic_binary(rng, n=500)
    eraser = fit_leace(x, z)
    acts = jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32)
    out = eqx.filter_jit(lambda e, a: e(a))(eraser, acts)
    assert out.shape == (4, 5, 8) and out.dtype == jnp.float32
    flat = apply(eraser, acts.reshape(20, 8))
    np.testing.assert_allclose(np.asarray(out).reshape(20, 8), np.asarray(flat), atol=1e-6)
    per_example = jax.vmap(eraser)(acts)
    np.testing.assert_allclose(np.asarray(per_example), np.asarray(out), atol=1e-6)
    g = jax.grad(lambda a: jnp.sum(eraser(a)))(acts)
    assert g.shape == acts.shape and bool(jnp.isfinite(g).all())
    assert eraser(acts.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_bad_inputs_raise(rng):
    x = rng.normal(size=(10, 3)).astype(np.float32)
    with pytest.raises(TypeError, match="integer class labels"):
        fit_leace(x, rng.normal(size=10))
    with pytest.raises((TypeError, ValueError)):  # jaxtyping's shape check under test, else ValueError
        fit_leace(x, np.zeros(9, np.int32))


def test_eraser_as_a_transformer_hook_removes_a_token_concept():
    """Fit LEACE on a transformer's residual stream (concept: is the current token < 20),
    apply it through the hook at that point: the probe on what the model then sees is at chance."""
    from superpos_jax.lm.transformer import TransformerConfig, forward, init_transformer

    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=64)
    params = init_transformer(cfg, key=jax.random.key(0))
    small = (jnp.arange(64) < 20).astype(jnp.float32)
    params = eqx.tree_at(lambda p: p.W_E, params, params.W_E.at[:, 0].add(0.05 * small))  # a linear concept
    tokens = jax.random.randint(jax.random.key(1), (200, 16), 0, 64)
    concept = np.asarray(tokens < 20).reshape(-1).astype(np.int64)  # "token is small": linear in the embedding
    name = "blocks.0.resid_pre"
    _, cache = forward(params, tokens, cache_names=(name,))
    x = np.asarray(cache[name]).reshape(-1, cfg.d_model)
    majority = max(concept.mean(), 1 - concept.mean())
    assert _logistic_probe_accuracy(x, concept) > majority + 0.1
    eraser = fit_leace(x, concept)
    _, erased_cache = forward(params, tokens, {name: eraser}, cache_names=(name,))
    erased = np.asarray(erased_cache[name]).reshape(-1, cfg.d_model)
    assert _logistic_probe_accuracy(erased, concept) <= majority + 0.01
