"""Magnitude masks, masked updates and the masked toy task (`superpos_jax.toy.pruning`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.toy.models import init_toy, toy_hparams, toy_task
from superpos_jax.toy.pruning import keep_count, magnitude_mask, masked_toy_task, masked_updates
from superpos_jax.toy.samplers import geometric_importance

N, M, BATCH = 8, 3, 64


def _reference_mask(W, n_keep, mask=None):
    """NumPy: the n_keep largest |W| among alive entries, ties to the lower flat index."""
    flat = np.abs(np.asarray(W, np.float64)).reshape(-1)
    alive = np.ones(flat.shape, bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    order = sorted(np.flatnonzero(alive), key=lambda i: (-flat[i], i))
    out = np.zeros(flat.shape, np.float32)
    out[order[:n_keep]] = 1.0
    return out.reshape(np.shape(W))


def test_keep_count_is_the_rounded_geometric_schedule_with_a_floor_of_one():
    np.testing.assert_array_equal(keep_count(100, 0.2, np.arange(4)), [100, 80, 64, 51])
    np.testing.assert_array_equal(keep_count(100, np.array([0.0, 0.5]), 3), [100, 12])
    assert keep_count(10, 0.9, 5) == 1
    with pytest.raises(ValueError, match="prune rate"):
        keep_count(10, 1.0, 1)
    with pytest.raises(ValueError, match="rounds"):
        keep_count(10, 0.5, -1)


def test_magnitude_mask_matches_a_numpy_reference(rng):
    for n_keep in (0, 1, 7, 24):
        W = rng.normal(size=(M, N)).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(magnitude_mask(W, n_keep)), _reference_mask(W, n_keep))
    tied = np.array([[1.0, -1.0, 0.5], [0.5, -1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(magnitude_mask(tied, 2)), [[1, 1, 0], [0, 0, 0]])


def test_magnitude_mask_never_revives_a_pruned_weight(rng):
    W = rng.normal(size=(M, N)).astype(np.float32)
    previous = (rng.uniform(size=(M, N)) < 0.5).astype(np.float32)
    alive = int(previous.sum())
    for n_keep in (alive // 2, alive, alive + 5):
        mask = np.asarray(magnitude_mask(W, n_keep, previous))
        assert np.all(mask <= previous)
        assert mask.sum() == min(n_keep, alive)
        np.testing.assert_array_equal(mask, _reference_mask(W, min(n_keep, alive), previous))


def test_magnitude_mask_takes_traced_counts_under_vmap_and_jit(rng):
    W = rng.normal(size=(4, M, N)).astype(np.float32)
    n_keep = np.array([0, 3, 10, 24], np.int32)
    masks = np.asarray(jax.jit(jax.vmap(magnitude_mask))(W, n_keep, jnp.ones_like(W)))
    for w, k, mask in zip(W, n_keep, masks):
        np.testing.assert_array_equal(mask, _reference_mask(w, int(k)))


def test_masked_updates_zero_exactly_the_masked_entries():
    mask = {"a": jnp.array([1.0, 0.0, 1.0]), "b": jnp.zeros((2,))}
    tx = masked_updates(mask)
    updates = {"a": jnp.array([2.0, 3.0, -4.0]), "b": jnp.array([5.0, 6.0])}
    out, _ = tx.update(updates, tx.init(updates))
    np.testing.assert_array_equal(out["a"], [2.0, 0.0, -4.0])
    np.testing.assert_array_equal(out["b"], [0.0, 0.0])
    # Chained before AdamW with weight decay, a zero parameter under a zero mask does not move.
    chain = optax.chain(masked_updates(mask["a"]), optax.adamw(0.1, weight_decay=0.5))
    params = jnp.array([1.0, 0.0, -1.0])
    with jax.numpy_dtype_promotion("standard"):  # optax's own b1 ** count
        state = chain.init(params)
        for _ in range(3):
            step, state = chain.update(jnp.array([1.0, 1.0, 1.0]), state, params)
            params = optax.apply_updates(params, step)
    assert float(params[1]) == 0.0 and float(params[0]) != 1.0


def _hparams(n_instances, mask, init_W, rewind_step=0, probability=0.2):
    hp = toy_hparams(np.full(n_instances, probability), geometric_importance(N, 0.8), ["relu"] * n_instances, 1e-2)
    return {**hp, "mask": mask.astype(np.float32), "init_W": init_W.astype(np.float32),
            "init_b": np.zeros((n_instances, N), np.float32), "rewind_step": np.full(n_instances, rewind_step, np.int32)}


def test_pruned_weights_stay_exactly_zero_through_adamw(rng):
    n = 4
    init_W = rng.normal(size=(n, M, N)).astype(np.float32)  # non-zero where masked too
    mask = (rng.uniform(size=(n, M, N)) < 0.4).astype(np.float32)
    hp = _hparams(n, mask, init_W)
    trainer = make_trainer(masked_toy_task(N, M, BATCH), OptimConfig(weight_decay=0.1), log_every=10)
    keys = jax.vmap(jax.random.key)(jnp.arange(n, dtype=jnp.uint32))
    state, losses = trainer.run(trainer.init(hp, keys), hp, 200)
    W = np.asarray(state.params.W)
    assert np.all(W[mask == 0] == 0.0)
    assert np.all(np.abs(W[mask == 1] - init_W[mask == 1]) > 0)  # every surviving weight trained
    assert np.all(np.isfinite(np.asarray(losses)))


def test_an_all_ones_mask_is_the_plain_toy_task():
    """masked_toy_task from the θ_0 that toy_task would draw trains to the same weights."""
    n = 3
    keys = jax.vmap(jax.random.key)(jnp.arange(n, dtype=jnp.uint32))
    init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)  # the trainer's init key
    W0 = np.asarray(jax.vmap(lambda k: init_toy(N, M, key=k).W)(init_keys))
    hp = _hparams(n, np.ones_like(W0), W0)
    plain = {k: hp[k] for k in ("feature_probability", "importance", "flags", "learning_rate")}
    masked_trainer = make_trainer(masked_toy_task(N, M, BATCH), OptimConfig(), log_every=10)
    plain_trainer = make_trainer(toy_task(N, M, BATCH), OptimConfig(), log_every=10)
    a, la = masked_trainer.run(masked_trainer.init(hp, keys), hp, 300)
    b, lb = plain_trainer.run(plain_trainer.init(plain, keys), plain, 300)
    np.testing.assert_allclose(np.asarray(a.params.W), np.asarray(b.params.W), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-6)


def test_extra_holds_the_params_after_rewind_step_updates(rng):
    n, k = 2, 37
    init_W = rng.normal(size=(n, M, N)).astype(np.float32) * 0.3
    mask = np.ones_like(init_W)
    trainer = make_trainer(masked_toy_task(N, M, BATCH), OptimConfig(), log_every=1)
    keys = jax.vmap(jax.random.key)(jnp.arange(n, dtype=jnp.uint32))
    hp = _hparams(n, mask, init_W, rewind_step=k)
    full, _ = trainer.run(trainer.init(hp, keys), hp, 100)
    at_k, _ = trainer.run(trainer.init(hp, keys), hp, k)
    np.testing.assert_array_equal(np.asarray(full.extra.W), np.asarray(at_k.params.W))
    np.testing.assert_array_equal(np.asarray(full.extra.b), np.asarray(at_k.params.b))
    assert not np.allclose(np.asarray(full.extra.W), np.asarray(full.params.W))
    hp0 = _hparams(n, mask, init_W, rewind_step=0)
    zero, _ = trainer.run(trainer.init(hp0, keys), hp0, 20)
    np.testing.assert_array_equal(np.asarray(zero.extra.W), init_W)
