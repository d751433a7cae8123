"""The physics of the sparsity experiment on a reduced config (n=20, m=5, fewer steps)."""

import jax
import numpy as np
import pytest

from superpos_experiments import sparsity
from superpos_jax.config import validate
from superpos_jax.toy import metrics

N, M = 20, 5


@pytest.fixture(scope="module")
def trained():
    """Linear and ReLU models, dense (1−S = 1) and sparse (1−S = 0.03), 2 seeds, one compiled sweep."""
    cfg = sparsity.Config(
        feature_probabilities=(1.0, 0.03), n_seeds=2, n_steps=4000, chunk_steps=4000, log_every=100,
        learning_rate=3e-3,
    )
    validate(cfg)
    grid, hparams, keys, trainer = sparsity.build(cfg)
    state, _ = trainer.run(trainer.init(hparams, keys), hparams, n_steps=cfg.n_steps)
    W = grid.fold(np.asarray(state.params.W))  # (model, prob, seed, m, n)
    return dict(zip(cfg.models, W))


@pytest.mark.parametrize("model", ["linear", "relu"])
def test_dense_keeps_exactly_top_m_features_orthogonally(trained, model):
    for W in trained[model][0]:  # 1−S = 1, every seed
        norms = np.asarray(metrics.feature_norms(W))
        represented = np.flatnonzero(norms > 0.5)
        np.testing.assert_array_equal(represented, np.arange(M), err_msg=f"{model}: {norms.round(2)}")
        top = W[:, :M]
        np.testing.assert_allclose(top.T @ top, np.eye(M), atol=0.05, err_msg=model)
        assert norms[M:].max() < 0.1


def test_sparse_relu_superposes_more_than_m_features(trained):
    for W in trained["relu"][1]:
        k = int(metrics.n_represented(W))
        assert k > M, k
        # The extra features come with interference: some represented feature has real superposition.
        assert float(np.max(np.asarray(metrics.superposition(W)))) > 0.3
        assert float(metrics.dimensions_per_feature(W)) < 0.9


def test_sparse_linear_never_exceeds_m(trained):
    for W in trained["linear"][1]:
        assert int(metrics.n_represented(W)) <= M
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(metrics.feature_norms(W)) > 0.5), np.arange(M))


def test_feature_dimensionality_sums_to_at_most_m(trained):
    # Σ_i D_i ≤ m holds for any W (it is the trace of a projection-like quantity).
    for model in trained.values():
        for W in model.reshape(-1, M, N):
            assert float(np.sum(np.asarray(metrics.feature_dimensionality(jax.numpy.asarray(W))))) <= M + 1e-3
