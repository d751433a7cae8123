"""Engine equivalences: vmapped sweep == separate runs, determinism, chunking, resume, schedules."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax import Grid, OptimConfig, geometric_importance, instance_keys, make_trainer, run_sweep, toy_hparams, toy_task


def lr_multiplier(optim: OptimConfig):
    """The schedule's factor of the base rate: the schedule of a base rate of 1."""
    return optim.learning_rate_schedule(1.0)


N, M, BATCH = 6, 2, 64


def _hparams(probs, kinds, lrs):
    return toy_hparams(probs, geometric_importance(N, 0.9), kinds, lrs)


@pytest.fixture(scope="module")
def trainer():
    return make_trainer(toy_task(N, M, BATCH), OptimConfig(name="adamw"), log_every=5)


def _select(tree, i):
    return jax.tree.map(lambda a: a[i : i + 1], tree)


def test_vmapped_sweep_equals_separate_runs(trainer):
    hp = _hparams([1.0, 0.1, 0.03], ["linear", "relu", "relu-hidden"], [1e-3, 3e-3, 1e-2])
    keys = instance_keys([0, 1, 2])
    state, trace = trainer.run(trainer.init(hp, keys), hp, n_steps=50)
    for i in range(3):
        s_i, t_i = trainer.run(trainer.init(_select(hp, i), keys[i : i + 1]), _select(hp, i), n_steps=50)
        np.testing.assert_allclose(np.asarray(state.params.W[i]), np.asarray(s_i.params.W[0]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(trace[i]), np.asarray(t_i[0]), rtol=1e-5)


def test_identical_seeds_identical_results_and_different_seeds_differ(trainer):
    hp = _hparams([0.1, 0.1, 0.1], ["relu"] * 3, [1e-3] * 3)
    state, trace = trainer.run(trainer.init(hp, instance_keys([7, 7, 8])), hp, n_steps=20)
    W = np.asarray(state.params.W)
    np.testing.assert_array_equal(W[0], W[1])
    assert not np.allclose(W[0], W[2])
    state2, trace2 = trainer.run(trainer.init(hp, instance_keys([7, 7, 8])), hp, n_steps=20)
    np.testing.assert_array_equal(np.asarray(state2.params.W), W)
    np.testing.assert_array_equal(np.asarray(trace2), np.asarray(trace))


def test_chunked_equals_one_call(trainer):
    hp = _hparams([0.3, 0.05], ["relu", "linear"], [1e-3, 1e-3])
    keys = instance_keys([3, 4])
    one = run_sweep(trainer, hp, keys, n_steps=40, progress=False)
    chunked = run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, progress=False)
    np.testing.assert_array_equal(np.asarray(one.state.params.W), np.asarray(chunked.state.params.W))
    np.testing.assert_array_equal(one.losses, chunked.losses)
    assert one.losses.shape == (2, 8)


def test_crashed_run_resumes_bit_identical(trainer, tmp_path, monkeypatch, crash_after_chunks):
    hp = _hparams([0.3, 0.05], ["relu", "relu"], [1e-3, 2e-3])
    keys = instance_keys([5, 6])
    full = run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, progress=False)

    crash_after_chunks(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["10", "20"]

    resumed = run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    # Every leaf — params, Adam moments, counts, step, keys — is bit-identical.
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(resumed.losses, full.losses)


def test_run_sweep_restores_from_its_checkpoint_dir(trainer, tmp_path):
    hp = _hparams([0.2], ["relu"], [1e-3])
    keys = instance_keys([9])
    done = run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    again = run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    # Nothing left to do: the restored state is the finished one, and no step was re-run.
    np.testing.assert_array_equal(np.asarray(again.state.params.W), np.asarray(done.state.params.W))
    np.testing.assert_array_equal(again.losses, done.losses)
    assert int(again.state.step[0]) == 30


def test_training_reduces_loss(trainer):
    hp = _hparams([0.1] * 2, ["relu"] * 2, [1e-2] * 2)
    state, trace = trainer.run(trainer.init(hp, instance_keys([0, 1])), hp, n_steps=500)
    trace = np.asarray(trace)
    assert np.all(trace[:, -1] < 0.75 * trace[:, 0])
    assert np.all(np.asarray(state.step) == 500)


def test_adam_without_weight_decay_and_schedules():
    t = make_trainer(toy_task(N, M, BATCH), OptimConfig(name="adam", schedule="cosine", warmup_steps=5, total_steps=20))
    hp = _hparams([0.5], ["relu"], [1e-3])
    state, trace = t.run(t.init(hp, instance_keys([0])), hp, n_steps=20)
    assert np.isfinite(np.asarray(trace)).all()
    f = lr_multiplier(OptimConfig(schedule="cosine", warmup_steps=10, total_steps=110))
    np.testing.assert_allclose([float(f(jnp.int32(c))) for c in (0, 9, 10, 60, 110)], [0.1, 1, 1, 0.5, 0], atol=1e-6)
    f = lr_multiplier(OptimConfig(schedule="linear", warmup_steps=0, total_steps=100, final_fraction=0.1))
    np.testing.assert_allclose([float(f(jnp.int32(c))) for c in (0, 50, 100)], [1.0, 0.55, 0.1], atol=1e-6)
    f = lr_multiplier(OptimConfig(schedule="warmup", warmup_steps=4))
    np.testing.assert_allclose([float(f(jnp.int32(c))) for c in (0, 3, 50)], [0.25, 1, 1], atol=1e-6)
    with pytest.raises(ValueError, match="total_steps"):
        OptimConfig(schedule="linear")
    with pytest.raises((ValueError, TypeError), match="sgd"):
        OptimConfig(name="sgd")  # type: ignore[arg-type]


def test_per_instance_learning_rate_is_used(trainer):
    hp = _hparams([0.3, 0.3], ["relu", "relu"], [0.0 + 1e-12, 1e-2])
    state0 = trainer.init(hp, instance_keys([1, 1]))
    W0 = np.asarray(state0.params.W).copy()
    state, _ = trainer.run(state0, hp, n_steps=10)
    moved = np.abs(np.asarray(state.params.W) - W0).max(axis=(1, 2))
    assert moved[0] < 1e-8 < 1e-3 < moved[1]


def test_grid_roundtrip():
    g = Grid({"model": ["linear", "relu"], "p": [1.0, 0.1, 0.01], "seed": range(2)})
    assert g.shape == (2, 3, 2) and g.size == 12
    assert list(g.column("model")[:6]) == ["linear"] * 6
    np.testing.assert_array_equal(g.column("seed"), np.tile([0, 1], 6))
    assert g.coords(7) == {"model": "relu", "p": 1.0, "seed": 1}
    values = np.arange(12)
    folded = g.fold({"v": values})["v"]
    assert folded.shape == (2, 3, 2) and folded[1, 0, 1] == 7
    with pytest.raises(ValueError, match="no values"):
        Grid({"p": []})
    with pytest.raises(KeyError, match="no axis"):
        g.column("lr")


def test_trainer_state_is_a_pytree_of_arrays(trainer):
    hp = _hparams([0.5], ["relu"], [1e-3])
    state = trainer.init(hp, instance_keys([0]))
    leaves = jax.tree.leaves(state)
    assert all(eqx.is_array(x) for x in leaves)
    assert state.key.dtype == jnp.uint32


def test_checkpoints_survive_donation_of_their_state(trainer, tmp_path):
    # Saving is async and the next chunk donates the saved state's buffers: an earlier
    # checkpoint must still hold exactly the state of that step.
    from superpos_jax.engine import checkpoint

    hp = _hparams([0.2, 0.7], ["relu", "linear"], [1e-3, 1e-3])
    keys = instance_keys([1, 2])
    run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    reference = run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, progress=False)
    like = (trainer.init(hp, keys), np.zeros((2, 8), np.float32), None)
    (state, losses, _), step = checkpoint.restore(tmp_path, like, step=30)
    assert step == 30
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(losses[:, :6], reference.losses)
    assert np.isnan(losses[:, 6:]).all()


def test_restore_missing_checkpoint_is_a_clear_error(trainer, tmp_path):
    from superpos_jax.engine import checkpoint

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "nowhere", {"a": np.zeros(2)})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "empty", {"a": np.zeros(2)})


def test_observations_are_recorded_in_the_scan_and_survive_chunking_and_resume(tmp_path):
    from superpos_jax import feature_dimensionality

    observe = lambda params, hparams: {"D": feature_dimensionality(params.W), "W00": params.W[0, 0]}  # noqa: E731
    t = make_trainer(toy_task(N, M, BATCH), OptimConfig(), log_every=5, observe=observe)
    hp = _hparams([0.3, 0.05, 1.0], ["relu", "relu", "linear"], [1e-2] * 3)
    keys = instance_keys([1, 2, 3])
    state, (trace, obs) = t.run(t.init(hp, keys), hp, n_steps=20)
    assert trace.shape == (3, 4) and obs["D"].shape == (3, 4, N) and obs["W00"].shape == (3, 4)
    # The last window's observation is the metric of the final params.
    np.testing.assert_allclose(obs["D"][:, -1], jax.vmap(feature_dimensionality)(state.params.W), rtol=1e-6)
    whole = run_sweep(t, hp, keys, n_steps=40, chunk_steps=40, progress=False)
    chunked = run_sweep(t, hp, keys, n_steps=40, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    resumed = run_sweep(t, hp, keys, n_steps=40, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    assert resumed.start_step == 40
    for r in (chunked, resumed):
        for a, b in zip(jax.tree.leaves(r.observations), jax.tree.leaves(whole.observations), strict=True):
            np.testing.assert_array_equal(a, b)
    assert whole.observations["D"].shape == (3, 8, N) and np.isfinite(whole.observations["D"]).all()


def test_decay_over_the_last_steps_and_clipping():
    factor = lr_multiplier(OptimConfig(schedule="linear", total_steps=100, decay_steps=20))
    np.testing.assert_allclose([float(factor(jnp.int32(t))) for t in (0, 79, 80, 90, 100)], [1, 1, 1, 0.5, 0], atol=1e-6)
    with pytest.raises(ValueError, match="decay_steps"):
        OptimConfig(schedule="constant", decay_steps=10)
    with pytest.raises(ValueError, match="clip_norm"):
        OptimConfig(clip_norm=0.0)
    from superpos_jax.engine.optim import make_optimizer
    import optax

    ours = make_optimizer(OptimConfig(name="adam", learning_rate=0.1, clip_norm=1.0), 0.1)
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    params = {"w": jnp.ones(3, jnp.float32)}
    s_ours, s_ref = ours.init(params), ref.init(params)
    with jax.numpy_dtype_promotion("standard"):
        for g in (50.0, 0.1, -7.0):
            grads = {"w": jnp.asarray([g, 2 * g, -g], jnp.float32)}
            u_ours, s_ours = ours.update(grads, s_ours, params)
            u_ref, s_ref = ref.update(grads, s_ref, params)
            np.testing.assert_allclose(np.asarray(u_ours["w"]), np.asarray(u_ref["w"]), rtol=1e-6)


def test_task_extensions_shared_aux_prepare_after_update():
    """`shared` arrays are call arguments (not baked into the program); `prepare`, the aux
    output and `after_update` see what they should, inside the compiled scan."""
    from superpos_jax.engine.task import Task

    table = jnp.arange(200_000, dtype=jnp.float32)

    def init(hp, *, key, shared):
        return {"w": jnp.zeros((), jnp.float32) + shared[1]}

    def sample(hp, *, key, shared):
        return shared[jax.random.randint(key, (4,), 0, shared.shape[0])] * hp["scale"]

    def loss(params, x, hp, *, shared):
        return jnp.mean(jnp.square(params["w"] - x)), {"mean_x": jnp.mean(x)}

    def prepare(hp, state, *, shared):
        return {**hp, "scale": hp["scale"] * (state.step + 1).astype(jnp.float32)}

    def after_update(state, x, aux, hp, *, shared):
        extra = {"sum_x": state.extra["sum_x"] + aux["mean_x"], "last_scale": hp["scale"]}
        return eqx.tree_at(lambda s: s.extra, state, extra)

    task = Task(init, sample, loss, has_aux=True, shared=table, prepare=prepare, after_update=after_update,
                init_extra=lambda params, hp, *, shared: {"sum_x": jnp.float32(0), "last_scale": jnp.float32(0)})
    trainer = make_trainer(task, OptimConfig(name="adam"))
    hp = {"scale": np.asarray([1.0, 2.0], np.float32)}
    state = trainer.init(hp, instance_keys([0, 1]))
    np.testing.assert_array_equal(np.asarray(state.params["w"]), [1.0, 1.0])
    hlo = trainer.lower_run(state, hp, 3).as_text()
    assert len(hlo) < 200_000  # 800 KB of shared data would be in the text if it were a constant
    state, _ = trainer.run(state, hp, 3)
    np.testing.assert_allclose(np.asarray(state.extra["last_scale"]), [3.0, 6.0])
    assert np.all(np.asarray(state.extra["sum_x"]) > 0)
