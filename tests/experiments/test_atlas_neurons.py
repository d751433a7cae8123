"""Neuron-level experiments: privileged basis (ReLU hidden layer) and the absolute-value model.

Closed-form checks of the neuron metrics, the motif detector and the in-graph best-seed
selection, then the science on reduced configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import abs_computation, privileged_basis
from superpos_jax.config import validate
from superpos_jax.toy.models import AbsParams, abs_forward

N, M = 10, 5
_structure = jax.jit(abs_computation.abs_structure)


def test_neuron_metrics_closed_form():
    W = np.zeros((4, 6), np.float32)
    W[0, 2] = 1.3                        # monosemantic
    W[1, [0, 1]] = [0.8, -0.8]           # two equal features: score 1/2
    W[2, [3, 4, 5]] = [1.0, 0.2, 0.5]    # 0.2 < 0.25 · 1.0 does not count
    st = jax.tree.map(np.asarray, privileged_basis.neuron_metrics(W))  # row 3 unused
    np.testing.assert_array_equal(st["alive"], [True, True, True, False])
    np.testing.assert_array_equal(st["n_features"], [1, 2, 2, 0])
    np.testing.assert_allclose(st["monosemanticity"][:3], [1.0, 0.5, 1.0 / 1.29], rtol=1e-5)
    assert np.isnan(st["monosemanticity"][3])
    assert int(st["n_polysemantic"]) == 2
    np.testing.assert_allclose(st["mean_monosemanticity"], (1.0 + 0.5 + 1.0 / 1.29) / 3, rtol=1e-5)


def test_best_of_seeds_equals_host_argmin(rng):
    """The jitted selection picks, per cell, the instance whose evaluation loss is lowest."""
    cfg = privileged_basis.Config(feature_probabilities=(1.0, 0.1, 0.03), n_seeds=4, n_steps=10, log_every=10, eval_batches=2)
    grid, hparams, keys, trainer = privileged_basis.build(cfg)
    state = trainer.init(hparams, keys)
    ok = np.ones(grid.size, bool)
    ok[5] = False  # an unusable instance never wins
    select = privileged_basis.best_of_seeds(trainer.task, cfg.n_seeds, cfg.eval_batches)
    best_params, best_loss, best_seed, loss = select(state.params, hparams, ok, jax.random.key(0))
    folded = np.where(ok, np.asarray(loss), np.inf).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(best_seed), np.argmin(folded, axis=1))
    np.testing.assert_allclose(np.asarray(best_loss), folded.min(axis=1))
    W = np.asarray(state.params.W).reshape(3, 4, M, N)
    np.testing.assert_array_equal(np.asarray(best_params.W), W[np.arange(3), np.argmin(folded, axis=1)])
    # Paired evaluation: the loss really is the task loss of those params on the eval batches.
    one = jax.tree.map(lambda a: a[0], state.params)
    hp0 = jax.tree.map(lambda a: a[0], hparams)
    ks = jax.random.split(jax.random.key(0), 2)
    direct = np.mean([float(trainer.task.loss(one, trainer.task.sample(hp0, key=k), hp0)) for k in ks])
    np.testing.assert_allclose(float(loss[0]), direct, rtol=1e-5)


@pytest.fixture(scope="module")
def privileged():
    """Dense (1−S = 1) and sparse (1−S = 0.01) ReLU-hidden models, 8 seeds each; best seed per sparsity."""
    cfg = privileged_basis.Config(
        feature_probabilities=(1.0, 0.01), n_seeds=8, n_steps=5000, chunk_steps=5000, log_every=100,
        learning_rate=3e-3, eval_batches=4,
    )
    validate(cfg)
    grid, hparams, keys, trainer = privileged_basis.build(cfg)
    state, losses = trainer.run(trainer.init(hparams, keys), hparams, n_steps=cfg.n_steps)
    ok = np.isfinite(np.asarray(losses)).all(axis=1)
    return privileged_basis.evaluate(cfg, grid, hparams, trainer, state.params, ok)


def test_dense_relu_hidden_neurons_are_monosemantic_and_carry_the_top_features(privileged):
    W, st = privileged["W_best"][0], jax.tree.map(lambda a: a[0], privileged["best"])
    assert st["alive"].all(), st["norm"]
    np.testing.assert_array_equal(st["n_features"], 1)
    assert st["monosemanticity"].min() > 0.9, st["monosemanticity"]  # two equal features would be 0.5
    np.testing.assert_array_equal(np.sort(st["dominant"]), np.arange(M))  # one neuron per top-5 feature
    norms = np.linalg.norm(W, axis=0)
    np.testing.assert_array_equal(np.flatnonzero(norms > 0.5), np.arange(M))


def test_sparse_relu_hidden_has_polysemantic_neurons(privileged):
    W, st = privileged["W_best"][1], jax.tree.map(lambda a: a[1], privileged["best"])
    assert int(st["n_polysemantic"]) >= 1
    assert float(st["mean_monosemanticity"]) < 0.8
    assert np.sum(np.linalg.norm(W, axis=0) > 0.5) > M  # more features than neurons


def _pair_model(scale: np.ndarray) -> AbsParams:
    """|x_i| = ReLU(x_i) + ReLU(−x_i) for 3 features, neurons scaled arbitrarily."""
    W1 = np.zeros((6, 3), np.float32)
    for i in range(3):
        W1[2 * i, i], W1[2 * i + 1, i] = 1.0, -1.0
    W1 *= scale[:, None]
    W2 = (np.abs(W1) > 0).T.astype(np.float32) / scale[None, :]
    return AbsParams(W1=jnp.asarray(W1), W2=jnp.asarray(W2, jnp.float32), b=jnp.zeros(3))


def test_abs_structure_of_hand_built_models(rng):
    params = _pair_model(np.asarray([0.5, 2.0, 1.0, 3.0, 0.7, 1.5], np.float32))
    st = jax.tree.map(np.asarray, _structure(params))
    assert int(st["n_clean_pairs"]) == 3 and int(st["n_computed"]) == 3 and int(st["n_half_computed"]) == 0
    np.testing.assert_array_equal(st["neurons_per_feature"], [2, 2, 2])
    assert int(st["n_motifs"]) == 0 and int(st["n_polysemantic"]) == 0
    x = jnp.asarray(rng.uniform(-1, 1, size=(3, 16)), jnp.float32)
    W1r, W2r = abs_computation.rescale_neurons(params.W1, params.W2)
    np.testing.assert_allclose(abs_forward(AbsParams(W1r, W2r, params.b), x), jnp.abs(x), atol=1e-6)

    # The paper's motif: neuron 0 stores feature 0 (weight 2) and feature 1 (−½), reads them
    # out with ½ and 2; neuron 1 = ReLU(x_0) inhibits output 1. Neuron 2 = ReLU(−x_1).
    W1 = np.asarray([[2.0, -0.5], [1.0, 0.0], [0.0, -1.0]], np.float32)
    W2 = np.asarray([[0.5, 0.5, 0.0], [2.0, -5.0, 0.0]], np.float32)  # (feature, hidden)
    motif = AbsParams(W1=jnp.asarray(W1), W2=jnp.asarray(W2), b=jnp.zeros(2))
    st = jax.tree.map(np.asarray, _structure(motif))
    assert st["motif"][0, 1] and int(st["n_motifs"]) == 1 and int(st["n_asymmetric"]) == 1
    assert st["inhibitor"][0, 1, 1] and not st["inhibitor"][0, 1, 2]
    # Without the inhibitor it is asymmetric superposition but not the complete motif.
    W2_no = W2.copy()
    W2_no[1, 1] = 0.0
    st = jax.tree.map(np.asarray, _structure(AbsParams(jnp.asarray(W1), jnp.asarray(W2_no), jnp.zeros(2))))
    assert int(st["n_asymmetric"]) == 1 and int(st["n_motifs"]) == 0
    # Symmetric superposition (W₁ = [1, −1], W₂ = [1, 1]) is not asymmetric.
    W1_sym = np.asarray([[1.0, -1.0], [1.0, 0.0]], np.float32)
    W2_sym = np.asarray([[1.0, 0.5], [1.0, -5.0]], np.float32)
    st = jax.tree.map(np.asarray, _structure(AbsParams(jnp.asarray(W1_sym), jnp.asarray(W2_sym), jnp.zeros(2))))
    assert int(st["n_asymmetric"]) == 0


def test_dense_abs_model_uses_a_pair_of_opposite_neurons_per_feature():
    cfg = abs_computation.Config(
        sizes=("3x6",), seeds=(8,), feature_probabilities=(1.0,), n_steps=4000, chunk_steps=4000,
        log_every=100, learning_rate=3e-3, eval_batches=2,
    )
    validate(cfg)
    grid, hparams, keys, trainer = abs_computation.build(cfg, "3x6", 8)
    state, losses = trainer.run(trainer.init(hparams, keys), hparams, n_steps=cfg.n_steps)
    ok = np.isfinite(np.asarray(losses)).all(axis=1)
    select = privileged_basis.best_of_seeds(trainer.task, 8, cfg.eval_batches)
    best, best_loss, _, _ = select(state.params, hparams, ok, jax.random.key(1))
    params = jax.tree.map(lambda a: a[0], best)
    st = jax.tree.map(np.asarray, _structure(params))
    assert float(best_loss[0]) < 1e-4, float(best_loss[0])
    assert int(st["n_clean_pairs"]) == 3 and int(st["n_computed"]) == 3
    np.testing.assert_array_equal(st["neurons_per_feature"], [2, 2, 2])
    W1 = st["W1"]
    for i in range(3):  # one ReLU(x_i) and one ReLU(−x_i) neuron, each monosemantic
        own = np.flatnonzero(np.argmax(np.abs(W1), axis=1) == i)
        assert len(own) == 2 and np.sign(W1[own, i]).sum() == 0, W1.round(2)
