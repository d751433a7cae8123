"""A dictionary-size sweep in one program (pad and mask): a sweep over N × λ (or k) × seeds
trained at d_sae = max N with `n_latents` = N equals one plain size-N sweep per N (params of
the first N latents, loss traces, firing counts, resampling counts, held-out metrics); masked
latents stay inert; init is prefix-consistent; the SAE built from a padded instance is a
size-N SAE."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.engine.sweep import Grid, run_sweep
from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae import architectures as sae
from superpos_jax.sae import sources
from superpos_jax.sae.architectures.base import first_latents, latent_mask, mask_latents
from superpos_jax.sae.metrics import dead_fraction, dense_fraction, evaluate, feature_density_histogram
from superpos_jax.sae.model import SAE
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task

D_IN, N_GT, STEPS = 16, 24, 40
SIZES = (8, 16, 32)

# (architecture, recipe, swept values, learning rate, extra SAETraining fields); the resampling
# cases use a large rate so that latents die (and are resampled) within the 40 steps.
RESAMPLE = {"dead_steps": 2, "resample_every": 10}
CASES = {
    "relu-2023": ("relu", "2023", (0.3, 3.0), 3e-2, RESAMPLE),
    "relu-2024": ("relu", "2024", (0.03, 0.3), 3e-3, {"l1_warmup_steps": 10}),
    "jumprelu": ("jumprelu", "2023", (0.1, 1.0), 3e-2, {"jumprelu_threshold": 0.05, **RESAMPLE}),
    "gated": ("gated", "2023", (0.3, 3.0), 3e-2, RESAMPLE),
    "topk": ("topk", "2023", (2, 4), 3e-3, {"dead_steps": 4}),
    "batchtopk": ("batchtopk", "2023", (2, 4), 3e-3, {"dead_steps": 4}),
}
DEFAULT_RUN = ("relu-2023",)  # the others (about a minute each on 2 loaded cores) run with -m faults_full


def _ksparse_masks() -> bool:
    """Whether the k-sparse architectures honour `n_latents` (the other half of the contract,
    in ksparse.py): latents ≥ n_latents never selected."""
    arch = sae.get("topk")
    params = arch.init(4, 6, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    f = arch.encode(params, x, {"k": jnp.float32(6), "n_latents": jnp.float32(2)})
    return bool(jnp.all(f[:, 2:] == 0))


def _marks(case: str):
    marks = [] if case in DEFAULT_RUN else [pytest.mark.faults_full]
    if CASES[case][0] in ("topk", "batchtopk"):
        marks.append(pytest.mark.skipif(not _ksparse_masks(), reason="ksparse.py does not apply n_latents yet"))
    return marks


@pytest.fixture(scope="module")
def source():
    dictionary = sources.ground_truth_dictionary(N_GT, D_IN, key=jax.random.key(0))
    return sources.GroundTruthSource(dictionary, sources.decaying_probabilities(N_GT, mean_active=3.0))


def _training(case: str, d_sae: int) -> SAETraining:
    arch, recipe, _, _, extra = CASES[case]
    return SAETraining(arch, D_IN, d_sae, batch_size=64, recipe=recipe, **extra)


def _sweep(training: SAETraining, source, grid: Grid, masked: bool, lr: float):
    swept = {training.arch.swept: np.asarray(grid.column("coef"), np.float32)}
    if masked:
        swept["n_latents"] = np.asarray(grid.column("d_sae"), np.float32)
    hp = sae_hparams(training, **swept)
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, STEPS, lr), log_every=10)
    keys = instance_keys(grid.column("seed"))
    return hp, run_sweep(trainer, hp, keys, n_steps=STEPS, progress=False)


@pytest.mark.parametrize("case", [pytest.param(c, marks=_marks(c)) for c in CASES])
def test_masked_sweep_equals_one_sweep_per_size(source, case):
    """Tolerances: float32 rounding (the padded reductions sum more, zero, terms in another
    order; measured differences are ~1e-7 relative after 40 steps)."""
    _, _, coefs, lr, extra = CASES[case]
    n_max = max(SIZES)
    grid = Grid({"d_sae": SIZES, "coef": coefs, "seed": (0, 1)})
    big = _training(case, n_max)
    hp, masked = _sweep(big, source, grid, masked=True, lr=lr)
    x = source.sample(jax.random.key(99), 2048)
    ev_masked = batched_evaluate(big, masked.state, x, hp)
    assert np.all(np.isfinite(masked.losses))
    init = make_trainer(sae_task(big, source), recipe_optim(big, STEPS, lr)).init(hp, instance_keys(grid.column("seed")))
    for n in SIZES:
        sub = Grid({"coef": coefs, "seed": (0, 1)})
        small = _training(case, n)
        hp_n, alone = _sweep(small, source, sub, masked=False, lr=lr)
        rows = np.flatnonzero(grid.column("d_sae") == n)
        np.testing.assert_allclose(masked.losses[rows], alone.losses, rtol=2e-5, atol=1e-7)
        for name, axis in type(alone.state.params).LATENT_AXES.items():
            got = np.asarray(getattr(masked.state.params, name))[rows]
            want = np.asarray(getattr(alone.state.params, name))
            if axis is not None:
                got = got[:, :n] if axis == 0 else got[:, :, :n]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"{case} N={n} {name}")
        since = np.asarray(masked.state.extra["since_fired"])[rows]
        np.testing.assert_array_equal(since[:, :n], np.asarray(alone.state.extra["since_fired"]))
        np.testing.assert_array_equal(since[:, n:], 0)  # masked latents never count as dead
        np.testing.assert_array_equal(masked.state.extra["resampled"][rows], alone.state.extra["resampled"])
        ev = batched_evaluate(small, alone.state, x, hp_n)
        for metric in ("l0", "mse", "fvu", "dead_fraction"):
            np.testing.assert_allclose(ev_masked[metric][rows], ev[metric], rtol=1e-4, atol=1e-6, err_msg=metric)
        # a held-out pre-activation within rounding of its threshold may flip: counts agree to ±2
        np.testing.assert_allclose(ev_masked["fired"][rows][:, :n], ev["fired"], rtol=0, atol=2)
        np.testing.assert_array_equal(ev_masked["fired"][rows][:, n:], 0)
        # masked latents are inert: their encoder rows, decoder columns and biases never moved
        for name, axis in type(alone.state.params).LATENT_AXES.items():
            if axis is None:
                continue
            now = np.asarray(getattr(masked.state.params, name))[rows]
            then = np.asarray(getattr(init.params, name))[rows]
            pad = (slice(None), slice(n, None)) if axis == 0 else (slice(None), slice(None), slice(n, None))
            np.testing.assert_allclose(now[pad], then[pad], rtol=1e-6, atol=1e-7, err_msg=f"{name} moved")
        # the SAE of a padded instance is a size-N SAE, equal to the separately trained one
        trimmed = SAE.from_sweep(big, masked.state, hp, int(rows[0]))
        plain = SAE.from_sweep(small, alone.state, hp_n, 0)
        assert trimmed.d_sae == n and "n_latents" not in trimmed.hparams
        np.testing.assert_allclose(np.asarray(trimmed(x[:64])), np.asarray(plain(x[:64])), rtol=1e-4, atol=1e-5)
    if "resample_every" in extra:
        assert np.sum(masked.state.extra["resampled"]) > 0  # resampling was exercised


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "gated", "topk", "batchtopk"])
def test_init_is_prefix_consistent(kind):
    arch = sae.get(kind)
    for recipe in arch.recipes:
        big = arch.init(D_IN, 32, key=jax.random.key(3), recipe=recipe, b_dec=np.ones(D_IN))
        small = arch.init(D_IN, 8, key=jax.random.key(3), recipe=recipe, b_dec=np.ones(D_IN))
        jax.tree.map(np.testing.assert_array_equal, first_latents(big, 8), small)


@pytest.mark.parametrize("kind", ["relu", "jumprelu", "gated"])
def test_masked_latents_are_zero_and_get_no_gradient(kind):
    arch = sae.get(kind)
    params = arch.init(D_IN, 12, key=jax.random.key(0), threshold=0.01)
    x = jax.random.normal(jax.random.key(1), (32, D_IN))
    hp = {"l1_coefficient": jnp.float32(0.5), "n_latents": jnp.float32(5)}
    # make every latent fire where it exists, so that masking is what zeroes the rest
    params = eqx.tree_at(lambda p: p.b_enc, params, jnp.full(12, 3.0, jnp.float32))
    f = arch.encode(params, x, hp)
    assert np.all(np.asarray(f[:, 5:]) == 0) and np.any(np.asarray(f[:, :5]) != 0)
    grads = jax.grad(lambda p: arch.loss(p, x, hp)[0])(params)
    for name, axis in type(params).LATENT_AXES.items():
        g = np.asarray(getattr(grads, name))
        if axis is None:
            continue
        pad = g[5:] if axis == 0 else g[:, 5:]
        np.testing.assert_array_equal(pad, 0.0, err_msg=name)
    # the loss equals that of the size-5 SAE (float32 rounding)
    small = first_latents(params, 5)
    plain_hp = {"l1_coefficient": jnp.float32(0.5)}
    np.testing.assert_allclose(float(arch.loss(params, x, hp)[0]), float(arch.loss(small, x, plain_hp)[0]), rtol=1e-6)
    g_small = jax.grad(lambda p: arch.loss(p, x, plain_hp)[0])(small)
    # atol: a few float32 ulps of the O(1) terms an entry sums (an entry near 0 is a cancellation;
    # 1e-7 was below one ulp and failed on some CPUs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), first_latents(grads, 5), g_small)


def test_mask_helpers_and_metrics_over_existing_latents():
    hp = {"n_latents": jnp.float32(3)}
    np.testing.assert_array_equal(np.asarray(latent_mask(hp, 5)), [True, True, True, False, False])
    np.testing.assert_array_equal(np.asarray(latent_mask({}, 4)), True)
    f = jnp.ones((2, 5), jnp.float32)
    assert mask_latents(f, {}) is f
    np.testing.assert_array_equal(np.asarray(mask_latents(f, hp)).sum(axis=1), 3)
    counts = np.array([0, 4, 10, 0, 0])  # latents 3, 4 do not exist
    assert float(dead_fraction(counts, 3)) == pytest.approx(1 / 3)
    assert float(dead_fraction(counts)) == pytest.approx(3 / 5)
    assert float(dense_fraction(counts, 10, 0.5, n_latents=3)) == pytest.approx(1 / 3)
    assert float(dense_fraction(counts, 10, 0.5)) == pytest.approx(1 / 5)
    hist, _, n_dead = feature_density_histogram(counts, 10, bins=4, n_latents=3)
    assert n_dead == 1 and hist.sum() == 2
    with pytest.raises(ValueError, match="n_latents"):
        feature_density_histogram(counts, 10, n_latents=6)


def test_padded_sae_evaluates_and_trims_like_a_small_one():
    arch = sae.get("relu")
    params = arch.init(D_IN, 12, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (64, D_IN))
    padded = SAE(arch, params, {"n_latents": 5.0})
    trimmed = padded.trimmed()
    assert trimmed.d_sae == 5 and padded.d_sae == 12
    np.testing.assert_allclose(np.asarray(padded(x)), np.asarray(trimmed(x)), rtol=1e-5, atol=1e-6)
    got, want = evaluate(padded, x), evaluate(trimmed, x)
    for metric in ("l0", "mse", "fvu", "dead_fraction"):
        np.testing.assert_allclose(float(got[metric]), float(want[metric]), rtol=1e-5)
    seen = []  # inside jit n_latents is traced: the SAE keeps its padded latents, masked
    jax.jit(lambda p, n: seen.append(SAE(arch, p, {"n_latents": n}).trimmed().d_sae) or p.b_enc)(params, jnp.float32(5))
    assert seen == [12]
    assert padded.inference().d_sae == 5
    with pytest.raises(ValueError, match="n_latents"):
        SAE(arch, params, {"n_latents": 13.0}).trimmed()


def test_sae_hparams_checks_n_latents():
    training = SAETraining("topk", D_IN, 32, batch_size=8)
    hp = sae_hparams(training, k=[2, 4], n_latents=[8, 32])
    assert hp["n_latents"].dtype == np.float32 and hp["n_latents"].tolist() == [8, 32]
    with pytest.raises(ValueError, match="n_latents must be integers"):
        sae_hparams(training, k=2.0, n_latents=[8, 33])
    with pytest.raises(ValueError, match="n_latents must be integers"):
        sae_hparams(training, k=2.0, n_latents=[7.5])
    with pytest.raises(ValueError, match="k must not exceed n_latents"):
        sae_hparams(training, k=[4, 4], n_latents=[2, 32])
