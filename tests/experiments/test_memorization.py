"""`superpos run memorization` (Henighan et al. 2023) on its --quick config, one shared run:
the summary and figures, the science (double descent in T peaking near the interpolation
threshold; data points get the dimensions at small T, features at large T), and the
equivalence of a padded instance (T and m) with a separate unpadded run."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import memorization as mz
from superpos_jax.config import ConfigError, apply_overrides, validate
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.rundir import RunDir
from superpos_jax.toy.memorization import memorization_hparams, memorization_task


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cfg = apply_overrides(mz.Config(), {**mz.QUICK, "n_test": 5_000})
    validate(cfg)
    out = tmp_path_factory.mktemp("memorization")
    summary = mz.run(cfg, RunDir(out), progress=False)
    return cfg, out, summary


def _curve(summary, name, m=2):
    cells = [c for c in summary["cells"] if c["d_hidden"] == m]
    return np.array([c["n_train"] for c in cells]), np.array([c[name] for c in cells])


def test_summary_and_figures(quick_run):
    cfg, out, summary = quick_run
    json.dumps(summary)
    assert summary["n_instances"] == len(cfg.n_train) * len(cfg.d_hidden) * cfg.n_seeds
    assert not summary["non_finite_instances"]
    assert len(summary["cells"]) == len(cfg.n_train) * len(cfg.d_hidden)
    cell = summary["cells"][0]
    for key in ("test_loss", "train_loss", "test_loss_rel", "train_loss_rel", "feature_measure", "data_measure",
                "feature_dims_sum", "data_dims_sum", "feature_norm_mean", "hidden_norm_mean"):
        assert np.isfinite(cell[key]), key
    assert len(cell["test_loss_seeds"]) == cfg.n_seeds
    np.testing.assert_allclose(cell["test_loss"], np.mean(cell["test_loss_seeds"]), rtol=1e-5)
    # zero-model loss of uniform features: p / 3 (importance 1), within sampling error
    assert abs(summary["zero_model_loss"] - cfg.feature_probability / 3) < 0.05 * cfg.feature_probability / 3
    (per,) = summary["per_d_hidden"]
    assert per["d_hidden"] == 2 and per["peak_n_train"] in cfg.n_train
    # every D_t and D_i lies in [0, 1]; ΣD ≤ m (the dimensions the model has)
    for c in summary["cells"]:
        assert 0 <= c["data_measure"] <= 1 + 1e-5 and 0 <= c["feature_measure"] <= 1 + 1e-5
        assert c["data_dims_sum"] <= 2 + 1e-3 and c["feature_dims_sum"] <= 2 + 1e-3
    names = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert names == ["dimensionality.png", "double_descent.png", "geometry.png", "loss.png"]


def test_test_loss_peaks_near_the_interpolation_threshold(quick_run):
    cfg, _, summary = quick_run
    T, test = _curve(summary, "test_loss_rel")
    _, train = _curve(summary, "train_loss_rel")
    j = int(np.argmax(test))
    # an interior maximum with margin (at an end, test[j] would be compared with itself and fail)
    assert test[j] > 1.5 * max(test[0], test[-1]), (T[j], test.round(2))
    # the first descent: small training sets are fitted (train loss ≈ 0) and the largest
    # generalises: below the zero model and below the small-T test loss
    assert train[0] < 1e-3 and train[-1] > 0.5
    assert test[-1] < 0.98 and test[-1] < test[0]
    # near the interpolation threshold: within a factor 4 of the first T the model stops fitting
    threshold = summary["per_d_hidden"][0]["interpolation_threshold"]
    assert threshold is not None and abs(np.log2(T[j] / threshold)) <= 2, (T[j], threshold, train.round(3))
    assert summary["per_d_hidden"][0]["peak_interior"]


def test_data_points_then_features_get_the_dimensions(quick_run):
    _, _, summary = quick_run
    T, data = _curve(summary, "data_measure")
    _, feat = _curve(summary, "feature_measure")
    assert np.all(data[:2] > 2 * feat[:2]), (data.round(3), feat.round(3))  # small T: memorised points
    assert np.all(feat[-2:] > 3 * data[-2:]), (data.round(3), feat.round(3))  # large T: features
    cross = summary["per_d_hidden"][0]["crossover_n_train"]
    peak = summary["per_d_hidden"][0]["peak_n_train"]
    assert cross is not None and abs(np.log2(peak / cross)) <= 2, (cross, peak)
    # and the norms move from the points to the features: the mean training ‖h_t‖ shrinks
    _, hidden = _curve(summary, "hidden_norm_mean")
    assert hidden[-1] < 0.5 * hidden.max()


def test_padded_instance_equals_a_separate_unpadded_run():
    """T padded to a larger pool and m padded to max(d_hidden) change nothing: the sweep's
    (m=2, T) instances equal single runs on a pool of exactly T rows at width 2."""
    cfg = mz.Config(d_hidden=(2, 3), n_train=(8, 200, 300), picture_n_train=(8,), n_seeds=1, n_steps=100,
                    chunk_steps=100, log_every=50, n_features=40, feature_probability=0.1)
    validate(cfg)
    pools, _ = mz.pools_for(cfg)
    grid, hparams, keys, trainer = mz.build(cfg, pools)
    hp = jax.tree.map(jnp.asarray, hparams)
    state, _ = trainer.run(trainer.init(hp, keys), hp, cfg.n_steps)
    W = np.asarray(state.params.W)
    for T in (8, 200):  # full batch (T ≤ batch_size) and sampled minibatches
        i = int(np.flatnonzero((grid.column("d_hidden") == 2) & (grid.column("n_train") == T))[0])
        single = memorization_task(pools[:1, :T], 2, cfg.batch_size)
        shp = jax.tree.map(jnp.asarray, memorization_hparams(np.array([T]), np.array([2]), np.array([0]),
                                                            np.ones(cfg.n_features, np.float32), cfg.learning_rate))
        tr = make_trainer(single, cfg.optim(), log_every=cfg.log_every)
        s, _ = tr.run(tr.init(shp, keys[i:i + 1]), shp, cfg.n_steps)
        np.testing.assert_allclose(W[i, :2], np.asarray(s.params.W)[0], rtol=1e-4, atol=1e-6)
        assert np.all(W[i, 2:] == 0)  # the padding row never moved
        np.testing.assert_allclose(np.asarray(state.params.b)[i], np.asarray(s.params.b)[0], rtol=1e-4, atol=1e-6)
    assert not np.allclose(W[0, :2], W[1, :2])  # different T really train differently


def test_bad_config_names_the_field():
    with pytest.raises(ConfigError, match="picture_n_train"):
        validate(dataclasses.replace(mz.Config(), picture_n_train=(5,)))
    with pytest.raises(ConfigError, match="d_hidden"):
        validate(dataclasses.replace(mz.Config(), d_hidden=(0, 2)))
    with pytest.raises(ConfigError, match="n_train"):
        validate(dataclasses.replace(mz.Config(), n_train=(4, 4)))
