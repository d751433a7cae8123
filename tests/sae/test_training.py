"""SAEs on the engine: sweeps equal separate runs, the recipes' in-loop pieces (projection,
warm-up, dead-latent tracking, resampling, BatchTopK threshold), sharding and resumption."""

import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.sae import sources
from superpos_jax.engine.distributed import sweep_mesh
from superpos_jax.engine.execution import Execution
from superpos_jax.sae import architectures as sae
from superpos_jax.sae.training import (
    SAETraining,
    batched_evaluate,
    geometric_median,
    recipe_optim,
    resample,
    sae_hparams,
    sae_task,
)
from superpos_jax.engine.sweep import run_sweep
from superpos_jax.engine.trainer import TrainState, instance_keys, make_trainer
from superpos_jax.sae.model import SAE

D_IN, D_SAE, N_GT = 16, 32, 24


@pytest.fixture(scope="module")
def source():
    dictionary = sources.ground_truth_dictionary(N_GT, D_IN, key=jax.random.key(0))
    return sources.GroundTruthSource(dictionary, sources.decaying_probabilities(N_GT, mean_active=3.0))


def _select(tree, i):
    return jax.tree.map(lambda a: a[i : i + 1], tree)


@pytest.mark.parametrize("kind", ["relu", "topk"])
def test_vmapped_sweep_equals_separate_runs(source, kind):
    training = SAETraining(kind, D_IN, D_SAE, batch_size=64, dead_steps=5,
                           resample_every=10 if kind == "relu" else 0)
    coef = {"l1_coefficient": [0.01, 0.1, 1.0]} if kind == "relu" else {"k": [2, 4, 6]}
    hp = sae_hparams(training, **coef)
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 30, 3e-3), log_every=10)
    keys = instance_keys([0, 1, 2])
    state, trace = trainer.run(trainer.init(hp, keys), hp, 30)
    for i in range(3):
        s_i, t_i = trainer.run(trainer.init(_select(hp, i), keys[i : i + 1]), _select(hp, i), 30)
        np.testing.assert_allclose(np.asarray(t_i[0]), np.asarray(trace[i]), rtol=2e-5)
        np.testing.assert_allclose(np.asarray(s_i.params.W_dec[0]), np.asarray(state.params.W_dec[i]), rtol=1e-4, atol=1e-6)
    assert len(set(np.round(np.asarray(trace[:, -1]), 5))) == 3  # the swept coefficient matters


def test_unit_norm_kept_and_2024_unconstrained(source):
    for recipe, unit in (("2023", True), ("2024", False)):
        training = SAETraining("relu", D_IN, D_SAE, batch_size=64, recipe=recipe, l1_warmup_steps=5)
        hp = sae_hparams(training, l1_coefficient=[0.1])
        trainer = make_trainer(sae_task(training, source), recipe_optim(training, 20, 1e-2))
        state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, 20)
        norms = np.linalg.norm(np.asarray(state.params.W_dec[0]), axis=0)
        if unit:
            np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        else:
            assert np.ptp(norms) > 1e-3 and float(state.extra["input_scale"][0]) != 1.0
            init = trainer.init(hp, instance_keys([0]))
            np.testing.assert_allclose(np.linalg.norm(np.asarray(init.params.W_dec[0]), axis=0), 0.1, rtol=1e-5)
            np.testing.assert_array_equal(np.asarray(init.params.W_enc[0]), np.asarray(init.params.W_dec[0]).T)


def test_input_scale_makes_mean_square_norm_d_in(source):
    training = SAETraining("relu", D_IN, D_SAE, batch_size=64, recipe="2024", stats_samples=20000)
    task = sae_task(training, source)
    trainer = make_trainer(task, recipe_optim(training, 10, 1e-3))
    hp = sae_hparams(training, l1_coefficient=[0.1])
    state = trainer.init(hp, instance_keys([0]))
    scale = float(state.extra["input_scale"][0])
    x = np.asarray(source.sample(jax.random.key(5), 20000)) * scale
    assert abs(np.mean(np.sum(x**2, axis=1)) / D_IN - 1.0) < 0.03


def test_prepare_warms_up_lambda_and_marks_dead(source):
    training = SAETraining("relu", D_IN, D_SAE, batch_size=8, l1_warmup_steps=4)
    task = sae_task(training, source)
    extra = {"since_fired": jnp.zeros(D_SAE, jnp.int32), "arch": {}, "resampled": jnp.int32(0),
             "input_scale": jnp.float32(1)}
    state = TrainState(None, None, jnp.int32(1), jnp.zeros(2, jnp.uint32), extra)
    hp = task.prepare({"l1_coefficient": jnp.float32(2.0)}, state, shared=source)
    np.testing.assert_allclose(float(hp["l1_coefficient"]), 2.0 * 2 / 4)
    topk = SAETraining("topk", D_IN, D_SAE, batch_size=8, dead_steps=3)
    since = jnp.asarray(np.arange(D_SAE) % 5, jnp.int32)
    state = TrainState(None, None, jnp.int32(0), jnp.zeros(2, jnp.uint32), {**extra, "since_fired": since})
    hp = sae_task(topk, source).prepare({"k": jnp.float32(2)}, state, shared=source)
    np.testing.assert_array_equal(np.asarray(hp["dead"]), np.arange(D_SAE) % 5 >= 3)


def test_resampling_revives_dead_latents(source):
    """Latents killed by a large negative bias are resampled in-loop and fire again."""
    training = SAETraining("relu", D_IN, D_SAE, batch_size=128, dead_steps=5, resample_every=10)
    hp = sae_hparams(training, l1_coefficient=[0.01])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 40, 1e-3))
    state = trainer.init(hp, instance_keys([0]))
    killed = np.arange(D_SAE) < 8
    b_enc = jnp.where(killed[None, :], -100.0, state.params.b_enc)
    state = eqx.tree_at(lambda s: s.params.b_enc, state, b_enc)
    state, _ = trainer.run(state, hp, 9)  # before the first resampling: still dead
    x = source.sample(jax.random.key(3), 2048)
    fired = batched_evaluate(training, state, x, hp)["fired"][0]
    assert np.all(fired[killed] == 0)
    state, _ = trainer.run(state, hp, 1)
    assert int(state.extra["resampled"][0]) >= 8
    np.testing.assert_array_equal(np.asarray(state.params.b_enc[0])[killed], 0.0)
    state, _ = trainer.run(state, hp, 20)
    fired = batched_evaluate(training, state, x, hp)["fired"][0]
    assert np.all(fired[killed] > 0), fired[killed]


def test_resample_sets_directions_and_resets_moments():
    key = jax.random.key(0)
    params = sae.get("relu").init(6, 5, key=key)
    moments = jax.tree.map(lambda a: jnp.ones_like(a), params)
    dead = jnp.asarray([True, False, False, True, False])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    sq_err = jnp.asarray([0.0, 0.0, 2.0, 0.0], jnp.float32)  # only example 2 can be drawn
    new, state = resample(sae.get("relu"), params, {"mu": moments}, dead, x, sq_err, key=key)
    unit = np.asarray(x[2] / jnp.linalg.norm(x[2]))
    alive_norm = np.mean(np.linalg.norm(np.asarray(params.W_enc)[[1, 2, 4]], axis=1))
    for i in (0, 3):
        np.testing.assert_allclose(np.asarray(new.W_dec[:, i]), unit, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(new.W_enc[i]), 0.2 * alive_norm * unit, rtol=1e-5)
        assert float(state["mu"].W_enc[i].sum()) == 0.0 and float(state["mu"].W_dec[:, i].sum()) == 0.0
    for i in (1, 2, 4):
        np.testing.assert_array_equal(np.asarray(new.W_dec[:, i]), np.asarray(params.W_dec[:, i]))
        assert float(state["mu"].b_enc[i]) == 1.0


def test_batchtopk_threshold_tracks_smallest_activation(source):
    training = SAETraining("batchtopk", D_IN, D_SAE, batch_size=64, threshold_momentum=0.5)
    hp = sae_hparams(training, k=[3])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 30, 1e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, 30)
    theta = float(state.extra["arch"]["threshold"][0])
    assert theta > 0
    x = source.sample(jax.random.key(9), 4096)
    ev = batched_evaluate(training, state, x, hp)
    assert abs(float(ev["l0"][0]) - 3.0) < 1.0  # the inference JumpReLU keeps about k per example
    no_threshold = eqx.tree_at(lambda s: s.extra["arch"]["threshold"], state,
                               jnp.zeros_like(state.extra["arch"]["threshold"]))
    assert float(batched_evaluate(training, no_threshold, x, hp)["l0"][0]) > 2 * float(ev["l0"][0])


def test_geometric_median_closed_forms():
    pts = jnp.asarray([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0]], jnp.float32)
    # Equilateral triangle: the Fermat point is the centroid; 1-D: the median.
    tri = jnp.asarray([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)]], jnp.float32)
    np.testing.assert_allclose(np.asarray(geometric_median(tri)), [1.0, np.sqrt(3.0) / 3], atol=1e-4)
    line = jnp.asarray([[0.0], [1.0], [10.0]], jnp.float32)
    np.testing.assert_allclose(np.asarray(geometric_median(line, n_iter=500)), [1.0], atol=1e-2)
    m = np.asarray(geometric_median(pts, n_iter=500), np.float64)
    units = (np.asarray(pts) - m) / np.linalg.norm(np.asarray(pts) - m, axis=1, keepdims=True)
    assert np.linalg.norm(units.sum(axis=0)) < 1e-3  # optimality: the unit vectors to the points cancel
    assert np.linalg.norm(m) < 0.5 < np.linalg.norm(np.asarray(pts).mean(axis=0))  # robust to the outlier


def test_bad_inputs_fail_before_compiling(source):
    with pytest.raises(ValueError, match="architecture"):
        SAETraining("nope", D_IN, D_SAE, batch_size=8)
    with pytest.raises(ValueError, match="AuxK"):
        SAETraining("topk", D_IN, D_SAE, batch_size=8, resample_every=10)
    with pytest.raises(ValueError, match="needs k"):
        sae_hparams(SAETraining("topk", D_IN, D_SAE, batch_size=8))
    with pytest.raises(ValueError, match="k must be in"):
        sae_hparams(SAETraining("topk", D_IN, D_SAE, batch_size=8), k=[0])
    with pytest.raises(ValueError, match="l1_coefficient must be"):
        sae_hparams(SAETraining("relu", D_IN, D_SAE, batch_size=8), l1_coefficient=[-1.0])
    with pytest.raises(ValueError, match="d_in"):
        sae_task(SAETraining("relu", D_IN + 1, D_SAE, batch_size=8), source)


def test_sharded_resumed_sweep_equals_uninterrupted(source, tmp_path):
    """On an 8-device mesh, checkpoint + resume mid-run (extra state included) == one plain run."""
    training = SAETraining("topk", D_IN, D_SAE, batch_size=32, dead_steps=4)
    hp = sae_hparams(training, k=[1, 2, 3, 4, 5])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 40, 3e-3), log_every=10)
    keys = instance_keys(np.arange(5))
    plain = run_sweep(trainer, hp, keys, n_steps=40, progress=False, execution=Execution(mesh=sweep_mesh(8)))
    ckpt = tmp_path / "ckpt"
    run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=20, checkpoint_dir=ckpt, progress=False,
              execution=Execution(mesh=sweep_mesh(8)))
    shutil.rmtree(ckpt / "40")  # as if killed after the first chunk's checkpoint
    resumed = run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=20, checkpoint_dir=ckpt,
                        progress=False, execution=Execution(mesh=sweep_mesh(8)))
    assert resumed.start_step == 20
    np.testing.assert_allclose(resumed.losses, plain.losses, rtol=1e-5)
    np.testing.assert_array_equal(resumed.state.extra["since_fired"], plain.state.extra["since_fired"])
    np.testing.assert_allclose(resumed.state.params.W_dec, plain.state.params.W_dec, rtol=1e-4, atol=1e-6)


def test_resampling_stops_after_resample_until_and_jumprelu_threshold_init(source):
    training = SAETraining("relu", D_IN, D_SAE, batch_size=64, dead_steps=1, resample_every=2, resample_until=4)
    hp = sae_hparams(training, l1_coefficient=[0.01])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 12, 1e-3))
    state = trainer.init(hp, instance_keys([0]))
    state = eqx.tree_at(lambda s: s.params.b_enc, state, jnp.full_like(state.params.b_enc, -100.0))  # all dead
    state, _ = trainer.run(state, hp, 4)
    resampled = int(state.extra["resampled"][0])
    assert resampled > 0
    state = eqx.tree_at(lambda s: s.params.b_enc, state, jnp.full_like(state.params.b_enc, -100.0))
    state, _ = trainer.run(state, hp, 8)
    assert int(state.extra["resampled"][0]) == resampled  # still dead, but past resample_until
    jr = SAETraining("jumprelu", D_IN, D_SAE, batch_size=8, jumprelu_threshold=0.1)
    params = make_trainer(sae_task(jr, source)).init(sae_hparams(jr, l1_coefficient=[0.1]), instance_keys([0])).params
    np.testing.assert_allclose(np.exp(np.asarray(params.log_threshold)), 0.1, rtol=1e-6)


def test_resample_resets_every_per_latent_leaf_of_any_architecture():
    """Gated: the magnitude path of a resampled latent is zeroed; for every architecture the
    optimizer moments of its per-latent leaves (log θ, r_mag, ...) are reset, b_dec's kept."""
    key = jax.random.key(0)
    dead = jnp.asarray([True, False, False, True, False])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    sq_err = jnp.ones(4, jnp.float32)
    for kind in ("gated", "jumprelu"):
        arch = sae.get(kind)
        params = jax.tree.map(lambda a: a + 0.5, arch.init(6, 5, key=key))
        moments = jax.tree.map(jnp.ones_like, params)
        new, state = resample(arch, params, {"nu": moments}, dead, x, sq_err, key=key)
        for name, axis in type(params).LATENT_AXES.items():
            m = np.asarray(getattr(state["nu"], name))
            if axis is None:
                assert np.all(m == 1.0), name
            else:
                picked = np.take(m, np.flatnonzero(np.asarray(dead)), axis=axis)
                kept = np.take(m, np.flatnonzero(~np.asarray(dead)), axis=axis)
                assert np.all(picked == 0.0) and np.all(kept == 1.0), name
        if kind == "gated":
            np.testing.assert_array_equal(np.asarray(new.r_mag)[[0, 3]], 0.0)
            np.testing.assert_array_equal(np.asarray(new.b_mag)[[0, 3]], 0.0)
            np.testing.assert_array_equal(np.asarray(new.r_mag)[[1, 2, 4]], np.asarray(params.r_mag)[[1, 2, 4]])
        else:  # the learned threshold itself is kept
            np.testing.assert_array_equal(np.asarray(new.log_threshold), np.asarray(params.log_threshold))


def test_recipe_must_suit_the_architecture_and_errors_name_the_field():
    from superpos_jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"'recipe' = '2024'.*for topk"):
        SAETraining("topk", D_IN, D_SAE, batch_size=8, recipe="2024")
    with pytest.raises(ConfigError, match="'d_sae'"):
        SAETraining("relu", D_IN, 0, batch_size=8)
    with pytest.raises(ConfigError, match="'threshold_momentum'"):
        SAETraining("batchtopk", D_IN, D_SAE, batch_size=8, threshold_momentum=0.0)
    assert SAETraining("gated", D_IN, D_SAE, batch_size=8, recipe="2024").april_2024


def test_sae_from_sweep_is_what_batched_evaluate_scores(source):
    training = SAETraining("batchtopk", D_IN, D_SAE, batch_size=64)
    hp = sae_hparams(training, k=[2, 4])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 20, 1e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0, 1])), hp, 20)
    x = source.sample(jax.random.key(4), 512)
    ev = batched_evaluate(training, state, x, hp)
    for i in range(2):
        model = SAE.from_sweep(training, state, hp, i)
        assert float(model.state["threshold"]) == float(state.extra["arch"]["threshold"][i]) > 0
        f = np.asarray(model.encode(x))
        np.testing.assert_allclose(np.mean(np.sum(f > 0, axis=1)), ev["l0"][i], rtol=1e-6)
        np.testing.assert_array_equal(np.sum(f > 0, axis=0), ev["fired"][i])
