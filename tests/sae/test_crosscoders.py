"""Crosscoders (`architectures.crosscoder`): forward, loss and gradients against a float64 NumPy
reference; per-layer decoder norms; the own-layout io; and after short trainings through
`SAETraining` (the paper's 2024 recipe), shared features have equal decoder norms on both layers
and features present in one layer only are found with one-sided norms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.interop import saelens as sl
from superpos_jax.sae import architectures as archs
from superpos_jax.sae.architectures import Crosscoder, SAEParams, layer_norms
from superpos_jax.sae.io import load_sae, save_sae
from superpos_jax.sae.metrics import cosine_matrix, fraction_of_variance_unexplained
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import GroundTruthSource, LinearViews
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

L, D, D_SAE, BATCH = 3, 4, 10, 6


def _params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"W_enc": rng.normal(size=(D_SAE, L * D)) / np.sqrt(L * D), "b_enc": 0.3 * rng.normal(size=D_SAE),
            "W_dec": rng.normal(size=(L * D, D_SAE)) / np.sqrt(D), "b_dec": 0.2 * rng.normal(size=L * D)}


def _reference(p: dict[str, np.ndarray], x: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(f, x̂, loss) from the paper, layer by layer: f = ReLU(Σ_l x^l W_enc^lᵀ + b_enc),
    x̂^l = f W_dec^lᵀ + b_dec^l, Σ_l ‖x^l − x̂^l‖² + λ Σ_i f_i Σ_l ‖W_dec,i^l‖."""
    z = p["b_enc"] + sum(x[:, l * D:(l + 1) * D] @ p["W_enc"][:, l * D:(l + 1) * D].T for l in range(L))
    f = np.maximum(z, 0.0)
    blocks = [p["W_dec"][l * D:(l + 1) * D] for l in range(L)]
    x_hat = np.concatenate([f @ W.T + p["b_dec"][l * D:(l + 1) * D] for l, W in enumerate(blocks)], axis=1)
    recon = sum(np.mean(np.sum((x[:, l * D:(l + 1) * D] - x_hat[:, l * D:(l + 1) * D]) ** 2, axis=1))
                for l in range(L))
    weight = sum(np.linalg.norm(W, axis=0) for W in blocks)
    return f, x_hat, float(recon + lam * np.mean(np.sum(f * weight, axis=1)))


def _jax(p):
    return SAEParams(**{name: jnp.asarray(v) for name, v in p.items()})


def test_forward_loss_and_gradients_match_numpy_float64(rng):
    p, x, lam = _params(rng), rng.normal(size=(BATCH, L * D)) + 0.1, 0.4
    f_ref, x_ref, loss_ref = _reference(p, x, lam)
    arch = Crosscoder(n_layers=L)
    with jax.enable_x64(True):
        params = _jax(p)
        f = arch.encode(params, jnp.asarray(x), {})
        np.testing.assert_allclose(np.asarray(f), f_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.decode(params, f)), x_ref, rtol=1e-12)
        np.testing.assert_allclose(float(arch.loss(params, jnp.asarray(x), {"l1_coefficient": lam})[0]), loss_ref,
                                   rtol=1e-12)
        grads = jax.grad(lambda q: arch.loss(q, jnp.asarray(x), {"l1_coefficient": lam})[0])(params)
    assert 0 < np.count_nonzero(f_ref) < f_ref.size
    eps = 1e-6
    for name in p:
        fd = np.zeros_like(p[name])
        for i in np.ndindex(p[name].shape):
            up, down = {**p, name: p[name].copy()}, {**p, name: p[name].copy()}
            up[name][i] += eps
            down[name][i] -= eps
            fd[i] = (_reference(up, x, lam)[2] - _reference(down, x, lam)[2]) / (2 * eps)
        np.testing.assert_allclose(np.asarray(getattr(grads, name)), fd, rtol=1e-5, atol=1e-7, err_msg=name)


def test_layer_norms_and_a_zero_block_has_a_finite_gradient(rng):
    W = rng.normal(size=(L * D, D_SAE))
    W[D:2 * D, 3] = 0.0  # latent 3 does not write layer 1
    expected = np.stack([np.linalg.norm(W[l * D:(l + 1) * D], axis=0) for l in range(L)])
    np.testing.assert_allclose(np.asarray(layer_norms(jnp.asarray(W, jnp.float32), L)), expected, rtol=1e-6)
    g = jax.grad(lambda w: jnp.sum(layer_norms(w, L)))(jnp.asarray(W, jnp.float32))
    assert np.all(np.isfinite(np.asarray(g))) and not np.asarray(g)[D:2 * D, 3].any()
    with pytest.raises(ValueError, match="not a multiple of n_layers=3"):
        layer_norms(jnp.zeros((10, 2)), 3)


def test_sizes_are_checked():
    assert archs.get("crosscoder").n_layers == 2
    with pytest.raises(ValueError, match="needs d_in = n_layers · d, got d_in=7"):
        archs.get("crosscoder").init(7, 4, key=jax.random.key(0))
    with pytest.raises(ValueError, match="n_layers must be an integer >= 1"):
        Crosscoder(n_layers=0)


def test_saved_in_its_own_layout_and_loaded_back_exactly(tmp_path, rng):
    arch = Crosscoder(n_layers=L)
    params = SAEParams(**{k: jnp.asarray(v, jnp.float32) for k, v in _params(rng).items()})
    sae = SAE(arch, params, {"l1_coefficient": 0.5}, None, input_scale=1.7)
    save_sae(sae, tmp_path / "cc", hook_name="blocks.0.hook_resid_post", model_name="toy")
    cfg = json.loads((tmp_path / "cc" / "cfg.json").read_text())
    assert cfg["architecture"] == "crosscoder" and cfg["architecture_fields"] == {"n_layers": L}
    loaded = load_sae(tmp_path / "cc")
    assert loaded.architecture == arch and float(loaded.input_scale) == 1.0
    x = jnp.asarray(rng.normal(size=(BATCH, L * D)), jnp.float32)
    np.testing.assert_allclose(np.asarray(loaded.encode(x)), np.asarray(sae.encode(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(sae(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(sl.SAELensFormatError, match="field 'architecture' = 'crosscoder' is invalid"):
        sl.from_saelens(tmp_path / "cc")


# ---------------------------------------------------------------- science


N_SHARED, N_ONLY_2, D_LAYER, D_LATENT, STEPS = 20, 8, 12, 40, 1000


def _train(source) -> SAE:
    training = SAETraining("crosscoder", d_in=2 * D_LAYER, d_sae=D_LATENT, batch_size=256, recipe="2024",
                           l1_warmup_steps=STEPS // 10, dead_steps=200, resample_every=250, resample_until=STEPS // 2)
    hp = sae_hparams(training, l1_coefficient=[1.0])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, STEPS, 3e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, STEPS)
    return SAE.from_sweep(training, state, hp, 0)


def _share_on_layer_1(sae: SAE) -> np.ndarray:
    """n¹_i / (n¹_i + n²_i) of each latent's raw-unit decoder norms."""
    n = np.asarray(sae.architecture.layer_norms(sae.folded().params))
    return n[0] / np.maximum(n[0] + n[1], 1e-12)


def test_two_copies_of_one_layer_give_shared_features():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(D_LAYER, N_SHARED))
    B = B / np.linalg.norm(B, axis=0)
    source = LinearViews(GroundTruthSource(np.eye(N_SHARED), np.full(N_SHARED, 0.1)), (B, B))
    sae = _train(source)
    x = source.sample(jax.random.key(99), 4096)
    alive = np.asarray(jnp.mean(sae.encode(x) > 0, axis=0)) > 1e-3
    share = _share_on_layer_1(sae)
    assert alive.sum() >= N_SHARED // 2
    assert np.all(np.abs(share[alive] - 0.5) < 0.03), share[alive]
    assert float(fraction_of_variance_unexplained(x, sae(x))) < 0.2


def test_features_of_one_layer_only_have_one_sided_norms():
    """h¹ = B¹ s_shared, h² = B² [s_shared, s_only]: the latent matching each feature (by the
    cosine of its whole decoder column with the feature's [B¹ e_i | B² e_i]) writes layer 2 only
    for a layer-2 feature, and both layers (about equally) for a shared feature."""
    rng = np.random.default_rng(0)
    n = N_SHARED + N_ONLY_2
    B1, B2 = rng.normal(size=(D_LAYER, N_SHARED)), rng.normal(size=(D_LAYER, n))
    B1, B2 = B1 / np.linalg.norm(B1, axis=0), B2 / np.linalg.norm(B2, axis=0)
    B1 = np.concatenate([B1, np.zeros((D_LAYER, N_ONLY_2))], 1)
    source = LinearViews(GroundTruthSource(np.eye(n), np.full(n, 0.08)), (B1, B2))
    sae = _train(source)
    truth = np.concatenate([B1, B2], 0).T  # (feature, 2·d)
    cos = np.asarray(cosine_matrix(sae.decoder, truth))
    best, match = cos.argmax(axis=1), cos.max(axis=1)
    share = _share_on_layer_1(sae)[best]
    assert np.all(match[N_SHARED:] > 0.95), match[N_SHARED:]
    assert np.all(share[N_SHARED:] < 0.05), share[N_SHARED:]
    found = match[:N_SHARED] > 0.95
    assert found.sum() >= 0.75 * N_SHARED, match[:N_SHARED]
    shared = share[:N_SHARED][found]  # two-sided (a few lean to one layer), far from the one-sided
    assert np.all(np.abs(shared - 0.5) < 0.25) and abs(np.median(shared) - 0.5) < 0.05, shared


def test_losses_vmap_over_traced_hparams(rng):
    arch = archs.get("crosscoder")
    params = arch.init(2 * D, D_SAE, key=jax.random.key(1))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    x = jnp.asarray(rng.normal(size=(BATCH, 2 * D)), jnp.float32)
    hp = {"l1_coefficient": jnp.asarray([0.1, 1.0], jnp.float32), "n_latents": jnp.asarray([D_SAE, 4.0])}
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda q, h: arch.loss(q, x, h), has_aux=True)))
    (values, aux), grads = fn(stacked, hp)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))
    assert not np.asarray(aux["f"][1][:, 4:]).any() and not np.asarray(grads.W_dec[1][:, 4:]).any()
    for i in range(2):
        single = arch.loss(params, x, jax.tree.map(lambda a: a[i], hp))[0]
        np.testing.assert_allclose(float(values[i]), float(single), rtol=1e-5)
