"""Absorption, splitting and precision/recall against hand-built dictionaries with known answers."""

import equinox as eqx
import jax
import numpy as np
import pytest

from superpos_jax.sae.metrics import feature_absorption, feature_splitting, match_features, precision_recall
from superpos_jax.sae.synthetic import SyntheticConfig, SyntheticSource

# 3 parents x 4 mutually exclusive children, orthonormal directions, magnitudes in [0.65, 1.35].
CONFIG = SyntheticConfig(n_features=24, d_in=32, zipf_exponent=0.5, mean_active=4.0, n_parents=3, branching=(4,),
                         child_probability=0.2, mutually_exclusive=True, magnitude="uniform",
                         magnitude_mean=1.0, magnitude_std=0.2, orthogonal=True)
PARENTS = np.arange(3)
CHILDREN = {p: 3 + 4 * p + np.arange(4) for p in PARENTS}


@pytest.fixture(scope="module")
def truth():
    source = SyntheticSource.from_config(CONFIG, key=jax.random.key(0))
    x, s = eqx.filter_jit(lambda src, k: src.sample_with_features(k, 8000))(source, jax.random.key(1))
    return (np.asarray(source.directions, np.float64), np.asarray(source.parent), np.asarray(x, np.float64),
            np.asarray(s, np.float64))


def _relu_sae(encoder, decoder, x):
    """f = ReLU(x W_enc) for encoder (n_latents, d_in) rows (float32 rounding of x, ~1e-7, cut at
    1e-5, since inactive features are exact zeros of s); decoder returned as (d_in, d_sae)."""
    f = np.maximum(x @ encoder.T, 0.0)
    return np.where(f > 1e-5, f, 0.0), decoder.T


def _absorbed_dictionary(d, absorbed_children):
    """Latents = features, except: each parent latent's encoder is suppressed by its absorbed
    children (so it does not fire when one is active), and those children's decoders carry the
    parent's direction, (d_c + d_p)/√2."""
    encoder, decoder = d.copy(), d.copy()
    for p in PARENTS:
        for c in CHILDREN[p][absorbed_children]:
            encoder[p] -= 10.0 * d[c]
            decoder[c] = (d[c] + d[p]) / np.sqrt(2.0)
    return encoder, decoder


def test_clean_dictionary_has_no_absorption(truth):
    d, parent, x, s = truth
    f, dec = _relu_sae(d, d, x)
    np.testing.assert_allclose(f, s, atol=1e-5)
    out = feature_absorption(dec, f, s, d, parent)
    np.testing.assert_array_equal(out["parents"], PARENTS)
    np.testing.assert_array_equal(out["parent_latent"], PARENTS)
    assert out["mean"] == 0.0 and np.all(out["parent_rate"] == 0) and np.all(out["miss_rate"] == 0)
    kids = np.concatenate(list(CHILDREN.values()))
    np.testing.assert_array_equal(out["child_rate"][kids], 0.0)
    assert np.all(np.isnan(np.delete(out["child_rate"], kids)))


def test_fully_absorbed_dictionary_scores_one(truth):
    d, parent, x, s = truth
    f, dec = _relu_sae(*_absorbed_dictionary(d, slice(None)), x)
    active = s > 0
    for p in PARENTS:  # the construction: the parent latent is silent whenever a child fires
        through = active[:, CHILDREN[p]].any(axis=1)
        assert through.sum() > 500 and np.all(f[through, p] == 0) and np.all(f[active[:, p] & ~through, p] > 0)
    out = feature_absorption(dec, f, s, d, parent)
    np.testing.assert_array_equal(out["parent_rate"], 1.0)
    np.testing.assert_array_equal(out["miss_rate"], 1.0)
    assert out["mean"] == 1.0
    np.testing.assert_array_equal(out["child_rate"][np.concatenate(list(CHILDREN.values()))], 1.0)


def test_partly_absorbed_dictionary_scores_the_absorbed_share(truth):
    d, parent, x, s = truth
    f, dec = _relu_sae(*_absorbed_dictionary(d, slice(0, 2)), x)
    out = feature_absorption(dec, f, s, d, parent)
    active = s > 0
    for p in PARENTS:
        kids = CHILDREN[p]
        through = active[:, kids].any(axis=1)
        share = active[:, kids[:2]].any(axis=1).sum() / through.sum()  # exclusive children: c0 or c1
        assert 0.3 < share < 0.7
        np.testing.assert_allclose(out["parent_rate"][p], share, rtol=1e-12)
        np.testing.assert_array_equal(out["child_rate"][kids], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(out["mean"], np.mean(out["parent_rate"]))


def test_missing_parent_without_absorbing_latent_is_not_absorption(truth):
    """The parent latent is silent on child inputs but no child latent carries d_p: a miss, not
    absorption."""
    d, parent, x, s = truth
    encoder, _ = _absorbed_dictionary(d, slice(None))
    f, dec = _relu_sae(encoder, d, x)
    out = feature_absorption(dec, f, s, d, parent)
    np.testing.assert_array_equal(out["miss_rate"], 1.0)
    np.testing.assert_array_equal(out["parent_rate"], 0.0)


@pytest.mark.parametrize("factor, absorbed", [(0.2, True), (0.8, False)])
def test_partial_absorption_uses_fail_fraction(truth, factor, absorbed):
    """A parent latent that still fires, at `factor` of its usual response, when a child is active:
    absorbed below fail_fraction (0.5) of its typical response, not above."""
    d, parent, x, s = truth
    _, dec = _absorbed_dictionary(d, slice(None))
    f = s.copy()
    active = s > 0
    for p in PARENTS:
        f[active[:, CHILDREN[p]].any(axis=1), p] *= factor
    out = feature_absorption(dec.T, f, s, d, parent)
    np.testing.assert_array_equal(out["parent_rate"], 1.0 if absorbed else 0.0)
    loose = feature_absorption(dec.T, f, s, d, parent, fail_fraction=0.9)
    np.testing.assert_array_equal(loose["parent_rate"], 1.0)  # 0.8 < 0.9 of typical: absorbed


def test_cosine_thresholds_gate_the_absorbing_latent(truth):
    d, parent, x, s = truth
    f, dec = _relu_sae(*_absorbed_dictionary(d, slice(None)), x)
    # cos(W_dec child, d_p) = 1/√2 ≈ 0.707: above a threshold of 0.7, below 0.75.
    assert feature_absorption(dec, f, s, d, parent, parent_cosine=0.7)["mean"] == 1.0
    assert feature_absorption(dec, f, s, d, parent, parent_cosine=0.75)["mean"] == 0.0
    # An explicit parent latent that is not the parent's: nothing fires like it, so it always fails.
    wrong = np.arange(24)
    wrong[PARENTS] = 23
    out = feature_absorption(dec, f, s, d, parent, parent_latents=wrong)
    np.testing.assert_array_equal(out["parent_latent"], 23)


def test_splitting_counts_hand_built_split(truth):
    d, parent, x, s = truth
    rng = np.random.default_rng(0)
    target = 20  # a free feature
    mags = s[:, target]
    bins = [(0.0, 0.9), (0.9, 1.1), (1.1, 2.0)]
    latents = [d[i] for i in range(24) if i != target]
    f_cols = [s[:, i] for i in range(24) if i != target]
    for lo, hi in bins:  # three latents split feature 20 by magnitude range, decoders close to d_20
        noise = rng.normal(size=32)
        noise -= noise @ d[target] * d[target]
        latents.append(d[target] + 0.2 * noise / np.linalg.norm(noise))
        f_cols.append(np.where((mags > lo) & (mags <= hi), mags, 0.0))
    # An absorbing-style latent (cos ≈ 0.71 to features 0 and 3) is no split of either.
    latents.append((d[0] + d[3]) / np.sqrt(2.0))
    f_cols.append(s[:, 3])
    # A near-duplicate of feature 21 that fires on under 5% of its inputs is not counted.
    latents.append(d[21])
    rare = (s[:, 21] > 0) & (np.cumsum(s[:, 21] > 0) <= 0.02 * np.sum(s[:, 21] > 0))
    f_cols.append(np.where(rare, s[:, 21], 0.0))
    dec, f = np.stack(latents, axis=1), np.stack(f_cols, axis=1)
    out = feature_splitting(dec, f, s, d)
    expected = np.ones(24, np.int64)
    expected[target] = 3
    np.testing.assert_array_equal(out["split_count"], expected)
    assert out["split_fraction"] == pytest.approx(1 / 24) and out["mean_split_count"] == pytest.approx(26 / 24)
    assert feature_splitting(dec, f, s, d, min_fire_fraction=0.01)["split_count"][21] == 2
    assert feature_splitting(dec, f, s, d, cosine_threshold=0.7)["split_count"][0] == 2


def test_precision_recall_closed_form():
    n = 40
    s = np.zeros((n, 5))
    f = np.zeros((n, 6))
    s[0:10, 0] = 1.0
    f[5:15, 2] = 0.5  # feature 0 <-> latent 2: 5 shared of 10 and 10 -> P = R = F1 = 0.5
    s[0:20, 1] = 2.0
    f[0:5, 4] = 1.0  # feature 1 <-> latent 4: P = 1, R = 5/20, F1 = 2·0.25/1.25 = 0.4
    f[30:35, 0] = 1.0  # feature 2 never active <-> latent 0: P = 0, R = nan
    s[20:30, 3] = 1.0  # feature 3 <-> latent 5, which never fires: P = 0, R = 0, F1 = 0
    s[0:3, 4] = 1.0  # feature 4 unmatched
    out = precision_recall(f, s, np.array([2, 4, 0, 5, -1]))
    np.testing.assert_allclose(out["precision"], [0.5, 1.0, 0.0, 0.0, np.nan])
    np.testing.assert_allclose(out["recall"], [0.5, 0.25, np.nan, 0.0, np.nan])
    np.testing.assert_allclose(out["f1"], [0.5, 0.4, np.nan, 0.0, np.nan])
    np.testing.assert_allclose([out["mean_precision"], out["mean_recall"], out["mean_f1"]],
                               [1.5 / 4, 0.75 / 3, 0.9 / 3])
    # A firing threshold: latent 2 fires only where f > 0.5, i.e. never.
    assert precision_recall(f, s, np.array([2, 4, 0, 5, -1]), threshold=0.5)["precision"][0] == 0.0
    with pytest.raises(ValueError, match="latent_of"):
        precision_recall(f, s, np.array([0, 1]))


def test_clean_dictionary_precision_recall_and_matching(truth):
    d, _, x, s = truth
    perm = np.random.default_rng(1).permutation(24)
    f, dec = _relu_sae(d[perm], d[perm], x)
    latent_of = match_features(dec, d)
    np.testing.assert_array_equal(perm[latent_of], np.arange(24))
    out = precision_recall(f, s, latent_of)
    assert out["mean_precision"] == 1.0 and out["mean_recall"] == 1.0 and out["mean_f1"] == 1.0
    narrow = match_features(dec[:, :10], d)
    assert np.sum(narrow >= 0) == 10 and np.all(narrow[perm[:10]] == np.arange(10))
    with pytest.raises(ValueError, match="decoder"):
        match_features(dec.T, d)


@pytest.mark.slow
def test_l1_sae_absorbs_parents_into_children():
    """Science: a ReLU/L1 SAE trained on a hierarchy in which every child implies its parent
    (4 parents × 4 exclusive children) learns the parent directions, yet on most child inputs
    the parent's latent is silent and the child's latent carries the parent direction instead
    (absorption)."""
    from superpos_jax.engine.trainer import instance_keys, make_trainer
    from superpos_jax.sae.metrics import evaluate
    from superpos_jax.sae.model import SAE
    from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

    config = SyntheticConfig(n_features=64, d_in=48, zipf_exponent=0.5, mean_active=4.0, n_parents=4,
                             branching=(4,), child_probability=0.2, mutually_exclusive=True,
                             magnitude="folded_normal", magnitude_mean=1.0, magnitude_std=0.15)
    source = SyntheticSource.from_config(config, key=jax.random.key(0))
    training = SAETraining("relu", config.d_in, 64, batch_size=256)
    hp = sae_hparams(training, l1_coefficient=[1.0])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 2000, 3e-3))
    state, _ = trainer.run(trainer.init(hp, instance_keys([0])), hp, 2000)
    sae = SAE.from_sweep(training, state, hp, 0)
    x, s = eqx.filter_jit(lambda src, k: src.sample_with_features(k, 20000))(source, jax.random.key(5))
    f, dec = np.asarray(sae.encode(x)), np.asarray(sae.decoder)
    d, s = np.asarray(source.directions), np.asarray(s)
    assert float(evaluate(sae, x)["fvu"]) < 0.5
    out = feature_absorption(dec, f, s, d, np.asarray(source.parent))
    cos = d[:4] @ (dec[:, out["parent_latent"]] / np.linalg.norm(dec[:, out["parent_latent"]], axis=0))
    assert np.all(np.diag(cos) > 0.6), np.diag(cos)  # the parent directions are learnt
    assert out["mean"] > 0.5, out["parent_rate"]
    assert np.all(out["miss_rate"] >= out["parent_rate"])


def test_ground_truth_scores_summary(truth):
    d, parent, x, s = truth
    from superpos_jax.sae.metrics import ground_truth_scores, hungarian_matching_score, mmcs

    f, dec = _relu_sae(d, d, x)
    clean = ground_truth_scores(dec, f, s, d, parent)
    assert clean == pytest.approx({"mmcs": 1.0, "hungarian": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                   "split_fraction": 0.0, "mean_split_count": 1.0, "absorption": 0.0,
                                   "parent_miss": 0.0}, abs=1e-6)
    f, dec = _relu_sae(*_absorbed_dictionary(d, slice(None)), x)
    absorbed = ground_truth_scores(dec, f, s, d, parent)
    assert absorbed["absorption"] == 1.0 and absorbed["parent_miss"] == 1.0
    np.testing.assert_allclose(absorbed["mmcs"], float(mmcs(dec, d)), rtol=1e-5)
    np.testing.assert_allclose(absorbed["hungarian"], hungarian_matching_score(dec, d), rtol=1e-9)
    # Absorbed parents lose recall (their latent is silent on child inputs), not precision.
    assert absorbed["recall"] < 0.95 and absorbed["precision"] == pytest.approx(1.0)
    assert "absorption" not in ground_truth_scores(dec, f, s, d)
