"""Matryoshka BatchTopK (`architectures.matryoshka`): forward, loss and gradients against a float64
NumPy reference; the sparse path and the padded dictionary against the dense reference; after a
short training on synthetic ground truth, the nested prefixes reconstruct in order and the early
latents fire more often."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae import architectures as archs
from superpos_jax.sae.architectures import MatryoshkaBatchTopK, SAEParams, prefix_sizes
from superpos_jax.sae.architectures.base import first_latents
from superpos_jax.sae.metrics import fraction_of_variance_unexplained
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import GroundTruthSource, decaying_probabilities, ground_truth_dictionary
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

D_IN, D_SAE, BATCH = 5, 16, 6
FRACTIONS = (0.25, 0.5, 1.0)  # prefixes 4, 8, 16


def _params(rng: np.random.Generator, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    return {"W_enc": rng.normal(size=(d_sae, D_IN)), "b_enc": 0.3 * rng.normal(size=d_sae),
            "W_dec": rng.normal(size=(D_IN, d_sae)) / np.sqrt(D_IN), "b_dec": 0.2 * rng.normal(size=D_IN)}


def _top_mask(z: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(z.size, bool)
    mask[np.argsort(-z.reshape(-1), kind="stable")[:n]] = True
    return mask.reshape(z.shape)


def _reference(p: dict[str, np.ndarray], x: np.ndarray, hp: dict, fractions=FRACTIONS,
               residual: np.ndarray | None = None) -> tuple[np.ndarray, float, list]:
    """(f, loss, prefix errors) written out from the paper: BatchTopK over the batch, then the SUM
    of the nested prefixes' reconstruction errors, plus α·AuxK on the full residual (`residual`,
    if given, held fixed: AuxK's target carries no gradient)."""
    d_sae = p["W_enc"].shape[0]
    n = hp.get("n_latents", d_sae)
    z = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    z = np.where(np.arange(d_sae) < n, z, -np.inf)
    f = np.where(_top_mask(z, int(hp["k"]) * x.shape[0]), np.maximum(z, 0), 0.0)
    errors = []
    for q in fractions:
        m = max(1, int(np.round(np.float32(q) * np.float32(n))))
        x_hat = f[:, :m] @ p["W_dec"][:, :m].T + p["b_dec"]
        errors.append(float(np.mean(np.sum((x - x_hat) ** 2, axis=1))))
    aux = 0.0
    if "dead" in hp and hp["dead"].any():
        e = x - (f @ p["W_dec"].T + p["b_dec"]) if residual is None else residual
        zd = np.where(hp["dead"], z, -np.inf)
        keep = np.zeros(zd.shape, bool)
        np.put_along_axis(keep, np.argsort(-zd, axis=1, kind="stable")[:, : int(hp["k_aux"])], True, axis=1)
        f_aux = np.where(keep & hp["dead"], np.maximum(z, 0), 0.0)
        aux = float(np.mean(np.sum((e - f_aux @ p["W_dec"].T) ** 2, axis=1)))
    return f, sum(errors) + hp.get("auxk_coefficient", 1 / 32) * aux, errors


def _jax(p: dict[str, np.ndarray]) -> SAEParams:
    return SAEParams(**{name: jnp.asarray(v) for name, v in p.items()})


CASES = [{"k": 2}, {"k": 3, "dead": np.arange(D_SAE) >= 10, "k_aux": 2, "auxk_coefficient": 0.5}]


@pytest.mark.parametrize("hp", CASES, ids=["plain", "auxk"])
def test_forward_loss_and_prefix_errors_match_numpy_float64(hp, rng):
    p, x = _params(rng), rng.normal(size=(BATCH, D_IN))
    arch = MatryoshkaBatchTopK(prefix_fractions=FRACTIONS)
    f_ref, loss_ref, errors_ref = _reference(p, x, hp)
    with jax.enable_x64(True):
        f = arch.encode(_jax(p), jnp.asarray(x), hp)
        value, aux = arch.loss(_jax(p), jnp.asarray(x), hp)
        np.testing.assert_allclose(np.asarray(f), f_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.decode(_jax(p), f)), f_ref @ p["W_dec"].T + p["b_dec"], rtol=1e-12)
        np.testing.assert_allclose(float(value), loss_ref, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(aux["prefix_recon"]), errors_ref, rtol=1e-12)
        assert float(aux["recon"]) == pytest.approx(errors_ref[-1], rel=1e-12)
    assert np.count_nonzero(f_ref) == hp["k"] * BATCH
    assert len(set(np.round(errors_ref, 6))) == len(FRACTIONS)  # the test data distinguishes the prefixes


@pytest.mark.parametrize("hp", CASES, ids=["plain", "auxk"])
def test_gradients_match_float64_finite_differences(hp, rng):
    p, x = _params(rng), rng.normal(size=(BATCH, D_IN))
    arch = MatryoshkaBatchTopK(prefix_fractions=FRACTIONS)
    with jax.enable_x64(True):
        grads = jax.grad(lambda q: arch.loss(q, jnp.asarray(x), hp)[0])(_jax(p))
    z = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    f = np.where(_top_mask(z, hp["k"] * BATCH), np.maximum(z, 0), 0.0)
    e = x - (f @ p["W_dec"].T + p["b_dec"])
    eps = 1e-6
    for name in p:
        g = np.asarray(getattr(grads, name))
        fd = np.zeros_like(p[name])
        for i in np.ndindex(p[name].shape):
            up, down = {**p, name: p[name].copy()}, {**p, name: p[name].copy()}
            up[name][i] += eps
            down[name][i] -= eps
            fd[i] = (_reference(up, x, hp, residual=e)[1] - _reference(down, x, hp, residual=e)[1]) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(g).max() > 0, name


def test_sparse_path_matches_dense_reference(rng):
    p, x = _params(rng), rng.normal(size=(BATCH, D_IN))
    dense = MatryoshkaBatchTopK(prefix_fractions=FRACTIONS)
    sparse = MatryoshkaBatchTopK(prefix_fractions=FRACTIONS, k_max=4, row_cap=D_SAE)
    hp = {"k": jnp.float32(3.0), "dead": jnp.asarray(np.arange(D_SAE) >= 10), "k_aux": jnp.int32(2)}
    params = SAEParams(**{name: jnp.asarray(v, jnp.float32) for name, v in p.items()})
    fn = lambda arch: jax.jit(jax.value_and_grad(lambda q: arch.loss(q, jnp.asarray(x, jnp.float32), hp), has_aux=True))  # noqa: E731
    (v_d, aux_d), g_d = fn(dense)(params)
    (v_s, aux_s), g_s = fn(sparse)(params)
    np.testing.assert_allclose(float(v_s), float(v_d), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux_s["prefix_recon"]), np.asarray(aux_d["prefix_recon"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_d)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_padded_dictionary_has_the_prefixes_of_its_own_size(rng):
    """n_latents = 8 in a 16-latent program: prefixes round(q·8) = 2, 4, 8, as a size-8 SAE."""
    p, x = _params(rng), rng.normal(size=(BATCH, D_IN))
    arch = MatryoshkaBatchTopK(prefix_fractions=FRACTIONS)
    np.testing.assert_array_equal(np.asarray(prefix_sizes(FRACTIONS, jnp.float32(8.0))), [2, 4, 8])
    np.testing.assert_array_equal(np.asarray(prefix_sizes((0.01, 1.0), 16)), [1, 16])  # never empty
    with jax.enable_x64(True):
        padded = arch.loss(_jax(p), jnp.asarray(x), {"k": 2, "n_latents": jnp.float32(8.0)})
        small = arch.loss(first_latents(_jax(p), 8), jnp.asarray(x), {"k": 2})
        np.testing.assert_allclose(float(padded[0]), float(small[0]), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(padded[1]["prefix_recon"]), np.asarray(small[1]["prefix_recon"]),
                                   rtol=1e-12)
        _, loss_ref, _ = _reference(p, x, {"k": 2, "n_latents": 8})
        np.testing.assert_allclose(float(padded[0]), loss_ref, rtol=1e-12)


def test_bad_prefix_fractions_are_refused():
    for bad in [(0.5, 0.25, 1.0), (0.5,), (0.0, 1.0), (0.5, 1.5), ()]:
        with pytest.raises(ValueError, match="prefix_fractions must be a tuple of strictly increasing"):
            MatryoshkaBatchTopK(prefix_fractions=bad)
    assert archs.get("matryoshka_batchtopk").prefix_fractions == (0.125, 0.25, 0.5, 1.0)


def test_inference_form_is_jumprelu_at_the_running_threshold(rng):
    arch = archs.get("matryoshka_batchtopk")
    params = arch.init(D_IN, D_SAE, key=jax.random.key(0))
    sae = SAE(arch, params, {"k": 3.0}, {"threshold": jnp.float32(0.4)}).inference()
    assert sae.architecture.name == "jumprelu"
    np.testing.assert_allclose(np.exp(np.asarray(sae.params.log_threshold)), 0.4, rtol=1e-6)
    x = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    z = np.asarray(x) - np.asarray(params.b_dec)
    z = z @ np.asarray(params.W_enc).T + np.asarray(params.b_enc)
    np.testing.assert_allclose(np.asarray(sae.encode(x)), np.where(z > 0.4, z, 0.0), rtol=1e-6)


# ---------------------------------------------------------------- science: nested prefixes


@pytest.fixture(scope="module")
def trained():
    """A Matryoshka BatchTopK (prefixes 4, 8, 16, 32 of 32 latents) trained through `SAETraining`
    on 48 ground-truth features with decaying firing probabilities."""
    n_gt, d, d_sae = 48, 24, 32
    source = GroundTruthSource(ground_truth_dictionary(n_gt, d, key=jax.random.key(0)),
                               decaying_probabilities(n_gt, 0.93, 4.0))
    training = SAETraining("matryoshka_batchtopk", d_in=d, d_sae=d_sae, batch_size=256, dead_steps=200)
    hp = sae_hparams(training, k=[4.0])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 800, 3e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, 800)
    return SAE.from_sweep(training, state, hp, 0), source.sample(jax.random.key(99), 4096)


def test_prefixes_reconstruct_in_order(trained):
    sae, x = trained
    f = sae.encode(x)
    sizes = np.asarray(prefix_sizes(sae.architecture.prefix_fractions, sae.d_sae))
    fvu = [float(fraction_of_variance_unexplained(x, f[:, :m] @ sae.decoder[:, :m].T + sae.params.b_dec[None, :]))
           for m in sizes]
    assert list(sizes) == [4, 8, 16, 32]
    assert all(a > b for a, b in zip(fvu, fvu[1:])), fvu
    assert fvu[0] < 0.9 and fvu[-1] < 0.3, fvu  # the first 4 latents already explain a share on their own


def test_early_latents_fire_more_often(trained):
    sae, x = trained
    rate = np.asarray(jnp.mean(sae.encode(x) > 0, axis=0))
    blocks = [rate[:4].mean(), rate[4:8].mean(), rate[8:16].mean(), rate[16:].mean()]
    assert blocks[0] > blocks[1] > blocks[3] and blocks[2] > blocks[3], blocks


def test_losses_vmap_over_traced_hparams(rng):
    arch = archs.get("matryoshka_batchtopk")
    params = arch.init(D_IN, D_SAE, key=jax.random.key(1))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    x = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    hp = {"k": jnp.asarray([2.0, 4.0], jnp.float32), "n_latents": jnp.asarray([D_SAE, 8.0]),
          "dead": jnp.asarray(np.stack([np.arange(D_SAE) < 4, np.arange(D_SAE) >= 4])), "k_aux": jnp.asarray([2, 3])}
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda q, h: arch.loss(q, x, h), has_aux=True)))
    (values, aux), grads = fn(stacked, hp)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))
    assert aux["prefix_recon"].shape == (2, len(arch.prefix_fractions))
    for i in range(2):
        single = arch.loss(params, x, jax.tree.map(lambda a: a[i], hp))[0]
        np.testing.assert_allclose(float(values[i]), float(single), rtol=1e-5)
