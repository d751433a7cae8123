"""Transcoders and skip-transcoders (`architectures.transcoder`): forward, loss and gradients
against float64 NumPy references; the training rows [x | y]; the `SAE` module's prediction; and
after short trainings through `SAETraining`, a transcoder learns a known sparse linear map and a
skip-transcoder puts the dense linear part of its target into W_skip."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae import architectures as archs
from superpos_jax.sae.architectures import SkipTranscoderParams, Transcoder, TranscoderParams
from superpos_jax.sae.metrics import fraction_of_variance_unexplained, mmcs
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import GroundTruthSource, LinearViews
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

D_IN, D_OUT, D_SAE, BATCH = 5, 3, 12, 6


def _params(rng: np.random.Generator, skip: bool) -> dict[str, np.ndarray]:
    p = {"W_enc": rng.normal(size=(D_SAE, D_IN)), "b_enc": 0.3 * rng.normal(size=D_SAE),
         "W_dec": rng.normal(size=(D_OUT, D_SAE)) / np.sqrt(D_OUT), "b_dec": 0.2 * rng.normal(size=D_OUT)}
    if skip:
        p["W_skip"] = rng.normal(size=(D_OUT, D_IN)) / np.sqrt(D_IN)
    return p


def _reference(p: dict[str, np.ndarray], rows: np.ndarray, hp: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """(f, ŷ, loss) of a (skip-)transcoder on rows [x | y], from the formulas: no b_dec centring,
    ŷ = f W_decᵀ + b_dec (+ x W_skipᵀ), ‖y − ŷ‖² + λ Σ_i f_i w_i."""
    x, y = rows[:, :D_IN], rows[:, D_IN:]
    f = np.maximum(x @ p["W_enc"].T + p["b_enc"], 0.0)
    y_hat = f @ p["W_dec"].T + p["b_dec"] + (x @ p["W_skip"].T if "W_skip" in p else 0.0)
    w = np.linalg.norm(p["W_dec"], axis=0) if hp.get("decoder_norm_l1", 0.0) else np.ones(D_SAE)
    loss = np.mean(np.sum((y - y_hat) ** 2, axis=1)) + hp["l1_coefficient"] * np.mean(np.sum(f * w, axis=1))
    return f, y_hat, float(loss)


def _jax(p: dict[str, np.ndarray]):
    cls = SkipTranscoderParams if "W_skip" in p else TranscoderParams
    return cls(**{name: jnp.asarray(v) for name, v in p.items()})


def _arch(skip: bool) -> Transcoder:
    return archs.SkipTranscoder(d_out=D_OUT) if skip else archs.Transcoder(d_out=D_OUT)


CASES = [(False, {"l1_coefficient": 0.3}), (False, {"l1_coefficient": 0.3, "decoder_norm_l1": 1.0}),
         (True, {"l1_coefficient": 0.2}), (True, {"l1_coefficient": 0.2, "decoder_norm_l1": 1.0})]
IDS = ["transcoder", "transcoder-norm", "skip", "skip-norm"]


@pytest.mark.parametrize("skip,hp", CASES, ids=IDS)
def test_forward_and_loss_match_numpy_float64(skip, hp, rng):
    p, rows = _params(rng, skip), rng.normal(size=(BATCH, D_IN + D_OUT)) + 0.2
    f_ref, y_ref, loss_ref = _reference(p, rows, hp)
    arch = _arch(skip)
    with jax.enable_x64(True):
        params, x = _jax(p), jnp.asarray(rows[:, :D_IN])
        f = arch.encode(params, x, hp)
        np.testing.assert_allclose(np.asarray(f), f_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.encode(params, jnp.asarray(rows), hp)), f_ref, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.reconstruct(params, x, hp)), y_ref, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(arch.decode(params, f) + arch.direct(params, x)), y_ref, rtol=1e-12)
        value, aux = arch.loss(params, jnp.asarray(rows), hp)
        np.testing.assert_allclose(float(value), loss_ref, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(aux["sq_err"]), np.sum((rows[:, D_IN:] - y_ref) ** 2, axis=1), rtol=1e-12)
    assert 0 < np.count_nonzero(f_ref) < f_ref.size


@pytest.mark.parametrize("skip,hp", CASES, ids=IDS)
def test_gradients_match_float64_finite_differences(skip, hp, rng):
    p, rows = _params(rng, skip), rng.normal(size=(BATCH, D_IN + D_OUT)) + 0.2
    with jax.enable_x64(True):
        grads = jax.grad(lambda q: _arch(skip).loss(q, jnp.asarray(rows), hp)[0])(_jax(p))
    eps = 1e-6
    for name in p:
        fd = np.zeros_like(p[name])
        for i in np.ndindex(p[name].shape):
            up, down = {**p, name: p[name].copy()}, {**p, name: p[name].copy()}
            up[name][i] += eps
            down[name][i] -= eps
            fd[i] = (_reference(up, rows, hp)[2] - _reference(down, rows, hp)[2]) / (2 * eps)
        g = np.asarray(getattr(grads, name))
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7, err_msg=name)
        assert np.abs(g).max() > 0, name


def test_rows_must_be_x_then_y_and_sizes_are_static():
    arch = archs.get("skip_transcoder")
    params = arch.init(4, 8, key=jax.random.key(0), b_dec=np.arange(8.0))
    assert arch.d_out is None and arch.row_width(4) == 8 and arch.d_in(params) == 4
    assert params.W_dec.shape == (4, 8) and params.W_skip.shape == (4, 4) and not np.asarray(params.W_skip).any()
    np.testing.assert_array_equal(np.asarray(params.b_dec), [4.0, 5.0, 6.0, 7.0])  # the y part of a row median
    np.testing.assert_array_equal(np.asarray(params.W_enc), np.asarray(params.W_dec).T)
    wide = archs.Transcoder(d_out=3).init(5, 8, key=jax.random.key(0))
    assert wide.W_enc.shape == (8, 5) and wide.W_dec.shape == (3, 8) and wide.b_dec.shape == (3,)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(wide.W_enc), axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"rows must be \[x \| y\] of width d_in \+ d_out = 4 \+ 4, got width 7"):
        arch.loss(params, jnp.zeros((2, 7)), {"l1_coefficient": 0.1})
    with pytest.raises(ValueError, match="d_out must be None or an integer >= 1"):
        archs.Transcoder(d_out=0)


def test_resampling_splits_each_row_into_encoder_and_decoder_directions(rng):
    arch = archs.get("transcoder")
    params = arch.init(4, 6, key=jax.random.key(0))
    rows = jnp.asarray(rng.normal(size=(6, 8)), jnp.float32)
    dead = jnp.asarray([True, False, False, True, False, False])
    new = arch.resample(params, dead, rows / jnp.linalg.norm(rows, axis=1, keepdims=True), 0.5)
    x, y = np.asarray(rows[:, :4]), np.asarray(rows[:, 4:])
    for i in (0, 3):
        np.testing.assert_allclose(np.asarray(new.W_enc[i]), 0.5 * x[i] / np.linalg.norm(x[i]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(new.W_dec[:, i]), y[i] / np.linalg.norm(y[i]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(new.W_dec[:, 1]), np.asarray(params.W_dec[:, 1]))


def test_sae_module_predicts_the_target_in_raw_units(rng):
    """An SAE trained on s·[x | y] predicts raw y from raw x, skip term included (folded or not)."""
    p = _params(rng, True)
    sae = SAE(_arch(True), _jax({k: v.astype(np.float32) for k, v in p.items()}), {}, None, input_scale=1.7)
    x = rng.normal(size=(BATCH, D_IN)).astype(np.float32)
    _, y_scaled, _ = _reference(p, np.concatenate([1.7 * x, np.zeros((BATCH, D_OUT))], 1), {"l1_coefficient": 0.0})
    np.testing.assert_allclose(np.asarray(sae.reconstruct(jnp.asarray(x))), y_scaled / 1.7, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sae.folded()(jnp.asarray(x))), y_scaled / 1.7, rtol=1e-5, atol=1e-6)
    assert sae.d_in == D_IN and sae.decoder.shape == (D_OUT, D_SAE)


def test_training_checks_the_row_width():
    training = SAETraining("transcoder", d_in=4, d_sae=8, batch_size=16)
    source = GroundTruthSource(np.eye(4), np.full(4, 0.5))
    with pytest.raises(ValueError, match=r"the source gives d_in=4 but the SAE expects d_in=8 \(rows \[x \| y\]"):
        sae_task(training, source)
    sae_task(training, LinearViews(source, (np.eye(4), np.eye(4))))


def test_linear_views_concatenate_maps_of_one_draw(rng):
    base = GroundTruthSource(np.eye(6), np.full(6, 0.5))
    B, A = rng.normal(size=(3, 6)), rng.normal(size=(2, 6))
    views = LinearViews(base, (B, A))
    key = jax.random.key(3)
    s = np.asarray(base.sample(key, 10))
    assert views.d_in == 5 and views.widths == (3, 2)
    np.testing.assert_allclose(np.asarray(views.sample(key, 10)), np.concatenate([s @ B.T, s @ A.T], 1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"maps must be a non-empty sequence of \(d_view, 6\) matrices"):
        LinearViews(base, (rng.normal(size=(3, 5)),))


# ---------------------------------------------------------------- science


class SparsePlusDense(eqx.Module):
    """Rows [s | u]: sparse ground-truth codes s and i.i.d. standard normal u."""

    sparse: GroundTruthSource
    n_dense: int = eqx.field(static=True)

    @property
    def d_in(self) -> int:
        return self.sparse.d_in + self.n_dense

    def sample(self, key, batch_size):
        k_s, k_u = jax.random.split(key)
        u = jax.random.normal(k_u, (batch_size, self.n_dense), jnp.float32)
        return jnp.concatenate([self.sparse.sample(k_s, batch_size), u], axis=1)


N_GT, D, D_LATENT, STEPS = 24, 12, 32, 1200


def _train(arch: str, source, l1: float) -> SAE:
    training = SAETraining(arch, d_in=D, d_sae=D_LATENT, batch_size=256, dead_steps=200, resample_every=250,
                           resample_until=STEPS // 2)
    hp = sae_hparams(training, l1_coefficient=[l1])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, STEPS, 3e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, STEPS)
    return SAE.from_sweep(training, state, hp, 0)


def _least_squares_fvu(x: np.ndarray, y: np.ndarray) -> float:
    X1 = np.concatenate([x, np.ones((x.shape[0], 1))], 1)
    return float(fraction_of_variance_unexplained(y, X1 @ np.linalg.lstsq(X1, y, rcond=None)[0]))


def test_transcoder_learns_a_sparse_linear_map():
    """x = B s, y = A s for sparse s (24 features in 12 dimensions): ŷ has low FVU on held-out
    rows (well below the best linear map's) and the decoder columns match A's columns."""
    rng = np.random.default_rng(0)
    B, A = rng.normal(size=(D, N_GT)), rng.normal(size=(D, N_GT))
    B, A = B / np.linalg.norm(B, axis=0), A / np.linalg.norm(A, axis=0)
    source = LinearViews(GroundTruthSource(np.eye(N_GT), np.full(N_GT, 0.1)), (B, A))
    sae = _train("transcoder", source, 0.1)
    rows = np.asarray(source.sample(jax.random.key(99), 8192))
    x, y = rows[:, :D], rows[:, D:]
    fvu = float(fraction_of_variance_unexplained(y, sae.reconstruct(jnp.asarray(x))))
    match = float(mmcs(sae.decoder, A.T))
    assert fvu < 0.35 and fvu < 0.7 * _least_squares_fvu(x, y), (fvu, _least_squares_fvu(x, y))
    assert match > 0.85, match


def test_skip_transcoder_puts_the_linear_part_in_w_skip():
    """y = M x + A s with x = B s + 0.2 u (u dense): A's rows are orthogonal to B's, so A s has no
    linear part in x, and the best linear map of y on x is M; W_skip ≈ M, the latents fit A s."""
    rng = np.random.default_rng(1)
    B = rng.normal(size=(D, N_GT))
    B = B / np.linalg.norm(B, axis=0)
    A = rng.normal(size=(D, N_GT)) @ (np.eye(N_GT) - np.linalg.pinv(B) @ B)
    A = A / np.linalg.norm(A, axis=0).mean()  # one scale for all columns keeps A Bᵀ = 0
    M = rng.normal(size=(D, D)) / np.sqrt(D)
    np.testing.assert_allclose(A @ B.T, 0.0, atol=1e-12)
    read, write = np.concatenate([B, 0.2 * np.eye(D)], 1), np.concatenate([M @ B + A, 0.2 * M], 1)
    source = LinearViews(SparsePlusDense(GroundTruthSource(np.eye(N_GT), np.full(N_GT, 0.1)), D), (read, write))
    sae = _train("skip_transcoder", source, 0.1)
    error = float(np.linalg.norm(np.asarray(sae.params.W_skip) - M) / np.linalg.norm(M))
    rows = np.asarray(source.sample(jax.random.key(99), 8192))
    x, y = rows[:, :D], rows[:, D:]
    fvu = float(fraction_of_variance_unexplained(y, sae.reconstruct(jnp.asarray(x))))
    assert error < 0.2, error
    assert fvu < 0.85 * _least_squares_fvu(x, y), (fvu, _least_squares_fvu(x, y))
    assert float(mmcs(sae.decoder, A.T)) > 0.75


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder"])
def test_losses_vmap_over_traced_hparams(kind, rng):
    arch = archs.get(kind)
    params = arch.init(D_IN, D_SAE, key=jax.random.key(1))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    rows = jnp.asarray(rng.normal(size=(BATCH, arch.row_width(D_IN))), jnp.float32)
    hp = {"l1_coefficient": jnp.asarray([0.1, 1.0], jnp.float32), "decoder_norm_l1": jnp.asarray([0.0, 1.0])}
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda q, h: arch.loss(q, rows, h), has_aux=True)))
    (values, _), grads = fn(stacked, hp)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))
    for i in range(2):
        single = arch.loss(params, rows, jax.tree.map(lambda a: a[i], hp))[0]
        np.testing.assert_allclose(float(values[i]), float(single), rtol=1e-5)
    assert float(values[1]) > float(values[0])
