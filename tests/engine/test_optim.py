"""The optimizer: any optax factory with a per-instance learning rate; `OptimConfig` built from
optax's own schedules, numerically identical to the former AdamW for constant learning rates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superpos_jax import geometric_importance, instance_keys, make_trainer, toy_hparams, toy_task
from superpos_jax.config import ConfigError
from superpos_jax.engine.optim import DEFAULT_LEARNING_RATE, OptimConfig, check_optimizer, make_optimizer

N, M, BATCH = 6, 2, 64


def _hparams(lrs=None, n=2):
    return toy_hparams([0.3] * n, geometric_importance(N, 0.9), ["relu"] * n, lrs)


def _one(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _sgd_step_reference(trainer, state, hp, i):
    """Instance i's parameters after one plain SGD step at learning rate lr, by hand."""
    s, h = _one(state, i), _one(hp, i)
    batch = trainer.batch(s, h)
    grads = jax.grad(trainer.task.loss)(s.params, batch, h)
    return s.params, grads


def test_factory_is_called_with_each_instances_learning_rate():
    trainer = make_trainer(toy_task(N, M, BATCH), lambda lr: optax.sgd(lr))
    hp = _hparams([0.5, 0.01])
    state0 = trainer.init(hp, instance_keys([3, 4]))
    refs = [_sgd_step_reference(trainer, state0, hp, i) for i in range(2)]
    state, _ = trainer.run(state0, hp, 1)
    for i, lr in enumerate([0.5, 0.01]):
        params, grads = refs[i]
        np.testing.assert_allclose(np.asarray(state.params.W[i]), np.asarray(params.W - lr * grads.W), rtol=1e-6, atol=1e-7)


def test_factory_without_hparams_learning_rate_uses_the_default():
    trainer = make_trainer(toy_task(N, M, BATCH), lambda lr: optax.sgd(lr))
    hp = _hparams(None, n=1)
    assert "learning_rate" not in hp
    state0 = trainer.init(hp, instance_keys([5]))
    params, grads = _sgd_step_reference(trainer, state0, hp, 0)
    state, _ = trainer.run(state0, hp, 1)
    expected = params.W - DEFAULT_LEARNING_RATE * grads.W
    np.testing.assert_allclose(np.asarray(state.params.W[0]), np.asarray(expected), rtol=1e-6, atol=1e-9)
    # An OptimConfig's own learning rate is its default.
    assert float(make_trainer(toy_task(N, M, BATCH), OptimConfig(learning_rate=0.25)).learning_rate({})) == 0.25


def test_optax_adam_factory_equals_optim_config_adam():
    hp = _hparams([1e-2, 3e-3])
    keys = instance_keys([0, 1])
    runs = []
    for optimizer in (OptimConfig(name="adam"), lambda lr: optax.adam(lr)):
        t = make_trainer(toy_task(N, M, BATCH), optimizer, log_every=5)
        runs.append(t.run(t.init(hp, keys), hp, 20))
    (a, ta), (b, tb) = runs
    np.testing.assert_array_equal(np.asarray(a.params.W), np.asarray(b.params.W))
    np.testing.assert_array_equal(np.asarray(ta), np.asarray(tb))


def test_any_optax_optimizer_and_schedule_trains():
    t = make_trainer(toy_task(N, M, BATCH), lambda lr: optax.lion(optax.cosine_decay_schedule(lr, 300)), log_every=10)
    hp = _hparams([3e-3, 1e-3])
    state, trace = t.run(t.init(hp, instance_keys([0, 1])), hp, 300)
    trace = np.asarray(trace)
    assert np.isfinite(trace).all() and np.all(trace[:, -1] < trace[:, 0])


def test_constant_adamw_is_bit_identical_to_the_injected_learning_rate_form():
    # The former implementation: optax.inject_hyperparams(adamw) with only the rate injected.
    old = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "weight_decay"))(
        learning_rate=jnp.float32(3e-3), b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01
    )
    new = OptimConfig(name="adamw", learning_rate=3e-3, weight_decay=0.01)(jnp.float32(3e-3))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    s_old, s_new = old.init(params), new.init(params)
    p_old = p_new = params
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(5):
            g = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
            u_old, s_old = jax.jit(old.update)(g, s_old, p_old)
            u_new, s_new = jax.jit(new.update)(g, s_new, p_new)
            np.testing.assert_array_equal(np.asarray(u_old["w"]), np.asarray(u_new["w"]))
            p_old, p_new = optax.apply_updates(p_old, u_old), optax.apply_updates(p_new, u_new)


def test_scheduled_adam_scales_adams_direction_by_the_schedule():
    cfg = OptimConfig(name="adam", learning_rate=0.1, schedule="cosine", warmup_steps=3, total_steps=10)
    schedule = cfg.learning_rate_schedule(0.1)
    ours, direction = cfg(0.1), optax.scale_by_adam()
    params = {"w": jnp.ones(3, jnp.float32)}
    s_ours, s_dir = ours.init(params), direction.init(params)
    with jax.numpy_dtype_promotion("standard"):
        for t in range(12):
            g = {"w": jnp.asarray([1.0, -2.0, 0.5], jnp.float32) * (t + 1)}
            u, s_ours = ours.update(g, s_ours, params)
            d, s_dir = direction.update(g, s_dir, params)
            np.testing.assert_allclose(np.asarray(u["w"]), -float(schedule(t)) * np.asarray(d["w"]), rtol=1e-5, atol=1e-9)


def test_schedule_pieces_warmup_hold_and_decay():
    f = OptimConfig(schedule="linear", warmup_steps=10, total_steps=110, decay_steps=50, final_fraction=0.2)
    s = f.learning_rate_schedule(2.0)
    # Warm-up (t + 1) / 10, held at the base until step 60, then linear to 0.2 of it at 110.
    np.testing.assert_allclose([float(s(t)) for t in (0, 4, 9, 10, 59, 60, 85, 110, 500)],
                               [0.2, 1.0, 2.0, 2.0, 2.0, 2.0, 1.2, 0.4, 0.4], rtol=1e-6)
    assert not OptimConfig().scheduled and not OptimConfig(warmup_steps=1).scheduled
    assert OptimConfig(schedule="warmup", warmup_steps=5).scheduled


def test_make_optimizer_chains_the_task_transform_first():
    transform = optax.scale(0.5)
    ours = make_optimizer(lambda lr: optax.sgd(lr), 0.1, transform)
    params = {"w": jnp.ones(2, jnp.float32)}
    u, _ = ours.update({"w": jnp.asarray([2.0, 4.0], jnp.float32)}, ours.init(params), params)
    np.testing.assert_allclose(np.asarray(u["w"]), [-0.1, -0.2], rtol=1e-6)


def test_bad_optimizers_are_clear_errors():
    task = toy_task(N, M, BATCH)
    # (Under the tests' runtime type checks, make_trainer rejects non-callables by annotation first.)
    with pytest.raises(ValueError, match="pass a factory of the learning rate"):
        check_optimizer(optax.adam(1e-3))
    with pytest.raises(ValueError, match="OptimConfig or a callable"):
        check_optimizer("adam")
    with pytest.raises((ValueError, TypeError)):
        make_trainer(task, optax.adam(1e-3))
    with pytest.raises(ValueError, match="not an optax.GradientTransformation"):
        make_trainer(task, lambda lr: lr * 2)
    with pytest.raises(ValueError, match="log_every"):
        make_trainer(task, log_every=0)


@pytest.mark.parametrize("fields, name", [
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"b1": 1.0}, "b1"),
    ({"final_fraction": 1.5}, "final_fraction"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"schedule": "cosine", "total_steps": 10, "warmup_steps": 10}, "total_steps"),
    ({"schedule": "linear", "total_steps": 100, "warmup_steps": 10, "decay_steps": 91}, "decay_steps"),
    ({"clip_norm": -1.0}, "clip_norm"),
])
def test_optim_config_validation_names_the_field(fields, name):
    with pytest.raises(ConfigError, match=f"'{name}'"):
        OptimConfig(**fields)


@pytest.mark.parametrize("fields, name", [({"warmup_steps": 2.5}, "warmup_steps"), ({"schedule": "exponential"}, "schedule")])
def test_optim_config_type_errors_name_the_field(fields, name):
    # A ConfigError from `validate`, or (under the tests' runtime type checks) a TypeError first.
    with pytest.raises((ConfigError, TypeError), match=f"'{name}'"):
        OptimConfig(**fields)
