"""Feature splitting: the co-activation and children math against brute force, splitting on a
ground truth whose hierarchy makes it certain (a small SAE learns the parents, a large one the
children), and `superpos run feature-splitting` on a reduced config: a larger dictionary has
more children per small feature."""

import json

import jax
import numpy as np
import pytest
import scipy.sparse as sp

from superpos_experiments import feature_splitting as fs
from superpos_jax.config import validate
from superpos_jax.engine.sweep import run_sweep
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.rundir import RunDir
from superpos_jax.sae.metrics import cosine_matrix
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

TINY = dict(max_bytes=200_000, model=TransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=128, n_ctx=32,
                                                       d_vocab=256, act="relu"),
            n_steps=200, harvest_windows=256, eval_windows=128, dictionary_sizes=(64, 128, 512), k=8, sae_steps=300,
            sae_batch=256, dead_steps=100, chunk_steps=100, log_every=50, tree_features=2, tree_nodes=3,
            cosine_threshold=0.4)


def test_conditional_firing_matches_brute_force():
    rng = np.random.default_rng(0)
    a = np.where(rng.random((300, 7)) < 0.2, rng.random((300, 7)), 0.0)
    b = np.where(rng.random((300, 11)) < 0.1, rng.random((300, 11)), 0.0)
    b[:, 3] = 0.0  # a latent that never fires
    p, count_a, count_b = fs.conditional_firing(a, sp.csr_matrix(b))
    for i in range(7):
        for j in range(11):
            fired_b = b[:, j] > 0
            want = np.sum((a[:, i] > 0) & fired_b) / fired_b.sum() if fired_b.any() else 0.0
            assert p[i, j] == pytest.approx(want, abs=1e-12)
    np.testing.assert_array_equal(count_a, np.sum(a > 0, axis=0))
    np.testing.assert_array_equal(count_b, np.sum(b > 0, axis=0))
    with pytest.raises(ValueError, match="same tokens"):
        fs.conditional_firing(a, b[:10])


def test_children_mask_and_split_stats():
    cos = np.asarray([[0.9, 0.5, 0.1], [0.2, 0.8, 0.7]])
    p = np.asarray([[0.9, 0.6, 0.9], [0.1, 0.4, 0.8]])
    fires = np.asarray([10, 10, 2])
    mask = fs.children_mask(cos, p, fires, cosine_threshold=0.5, coactivation_threshold=0.5, min_firings=5)
    np.testing.assert_array_equal(mask, [[True, True, False], [False, False, False]])  # b2 fires too rarely
    st = fs.split_stats([0, 1, 1, 3, 2])
    assert st.mean == pytest.approx(1.4) and st.median == 1.0 and st.max == 3
    assert st.frac_ge1 == pytest.approx(0.8) and st.frac_ge2 == pytest.approx(0.4) and st.histogram == [1, 2, 1, 1]


def _hierarchy(n_parents=6, n_children=4, d=48, rows=40_000, seed=0):
    """Rows where each parent fires with probability 0.15, as exactly one of its children
    (uniformly), magnitude U[0.5, 1.5]; child directions have cosine 0.75 with their parent."""
    rng = np.random.default_rng(seed)
    parents = rng.normal(size=(n_parents, d))
    parents /= np.linalg.norm(parents, axis=1, keepdims=True)
    noise = rng.normal(size=(n_parents, n_children, d))
    noise -= np.einsum("pcd,pd->pc", noise, parents)[..., None] * parents[:, None, :]
    noise /= np.linalg.norm(noise, axis=-1, keepdims=True)
    children = 0.75 * parents[:, None, :] + np.sqrt(1 - 0.75**2) * noise  # unit norm
    active = rng.random((rows, n_parents)) < 0.15
    which = rng.integers(0, n_children, (rows, n_parents))
    magnitude = rng.uniform(0.5, 1.5, (rows, n_parents)) * active
    x = np.einsum("rp,rpd->rd", magnitude, children[np.arange(n_parents)[None, :], which])
    return x.astype(np.float32), parents, children.reshape(-1, d)


def _train_topk(x, d_sae, k, steps=1200):
    training = SAETraining("topk", x.shape[1], d_sae, batch_size=256, dead_steps=200, k_max=k)
    hp = sae_hparams(training, k=np.full(1, k, np.float32))
    trainer = make_trainer(sae_task(training, ArrayRows(x)), recipe_optim(training, steps, 3e-3), log_every=steps)
    result = run_sweep(trainer, hp, jax.random.split(jax.random.key(1), 1), n_steps=steps, progress=False)
    return SAE.from_sweep(training, result.state, hp, 0).inference()


@pytest.mark.slow
def test_hierarchical_ground_truth_splits():
    """Parent p fires as one of its 4 children: a 6-latent SAE (k = 2) learns the 6 parent
    directions, a 24-latent one (most of) the 24 children, so every small feature has several
    children in the large dictionary (4 when every child is learned) and 1, itself, in its own."""
    x, parents, children = _hierarchy()
    x_train, x_test = x[:30_000], x[30_000:]
    small, large = _train_topk(x_train, 6, 2), _train_topk(x_train, 24, 2)
    # the parents (the mean of 4 children has cosine ≈ 0.9 with its parent) and most children are learned
    assert np.all(np.max(np.asarray(cosine_matrix(small.decoder, parents)), axis=1) > 0.8)
    assert np.mean(np.max(np.asarray(cosine_matrix(large.decoder, children)), axis=1) > 0.9) >= 0.75
    codes_small, _ = fs.sparse_codes(small, x_test, 2)
    counts = {}
    for name, sae in (("small", small), ("large", large)):
        codes, _ = fs.sparse_codes(sae, x_test, 2)
        p, count_small, count_b = fs.conditional_firing(codes_small, codes)
        cos = np.asarray(cosine_matrix(sae.decoder, np.asarray(small.decoder).T))
        mask = fs.children_mask(cos, p, count_b, cosine_threshold=0.5, coactivation_threshold=0.5, min_firings=5)
        counts[name] = mask.sum(axis=1)
    np.testing.assert_array_equal(counts["small"], 1)
    assert np.min(counts["large"]) >= 2 and np.mean(counts["large"]) >= 3, counts  # every feature splits


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("feature_splitting")
    cfg = fs.Config(**TINY)
    validate(cfg)
    return out, fs.run(cfg, RunDir(out), progress=False)


@pytest.mark.slow
def test_summary_and_figures(tiny_run):
    out, summary = tiny_run
    json.dumps(summary)
    assert summary["dictionary_sizes"] == [64, 128, 512] and summary["dictionary_sweep"] == "per_size"
    sizes = summary["per_size"]
    assert [r["d_sae"] for r in sizes] == [64, 128, 512]
    for r in sizes:
        assert r["l0"] <= 8 + 1e-9 and 0 < r["fvu"] < 0.6 and 0 < r["alive_fraction"] <= 1, r
        assert sum(r["children_histogram"]) == summary["small_live_features"]
    assert sizes[0]["mean_children"] == pytest.approx(1.0)  # each live feature is its own child in its dictionary
    assert sizes[-1]["fvu"] < sizes[0]["fvu"]
    assert len(summary["trees"]) == 2
    for tree in summary["trees"]:
        root, *rest = tree["nodes"]
        assert root["size"] == 64 and root["latent"] == tree["root"] and root["parent"] == -1 and root["contexts"]
        for node in rest:
            assert node["size"] > 64 and 0 <= node["parent"] < len(tree["nodes"])
            assert node["cosine"] >= 0.4 and node["p_root_given_node"] >= 0.5
    for name in ("split_tree", "split_counts", "criterion", "lm_loss", "sae_loss"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0


@pytest.mark.slow
def test_larger_dictionaries_split_features(tiny_run):
    """The study's claim: the mean number of children of a small-dictionary feature grows with
    the dictionary (a clear margin between the second size and the largest), and more features
    have ≥ 2 children."""
    _, summary = tiny_run
    sizes = summary["per_size"]
    assert sizes[-1]["mean_children"] > sizes[1]["mean_children"] + 0.1, [r["mean_children"] for r in sizes]
    assert sizes[1]["mean_children"] > sizes[0]["mean_children"] - 0.1
    assert sizes[-1]["frac_ge2_children"] > sizes[1]["frac_ge2_children"] + 0.05
    assert sizes[-1]["cosine_null_q999"] < summary["criterion"]["cosine_threshold"]


def test_bad_config_is_named():
    with pytest.raises(Exception, match="dictionary_sizes"):
        validate(fs.Config(**{**TINY, "dictionary_sizes": (128, 64)}))
    with pytest.raises(Exception, match="k"):
        validate(fs.Config(**{**TINY, "k": 100}))
    with pytest.raises(Exception, match="coactivation_threshold"):
        validate(fs.Config(**{**TINY, "coactivation_threshold": 1.5}))
    assert fs.sweep_mode(fs.Config(**TINY), backend="gpu") == "masked"
    assert fs.sweep_mode(fs.Config(**TINY), backend="cpu") == "per_size"


def test_masked_sweep_matches_per_size(tmp_path):
    """The sizes trained in ONE padded, masked program train as their own per-size programs do
    (same keys and data; to float32 rounding), and come back trimmed to their sizes."""
    cfg = fs.Config(**{**TINY, "dictionary_sizes": (16, 48), "k": 4, "sae_steps": 50, "chunk_steps": 50})
    rng = np.random.default_rng(0)
    rows = ArrayRows(np.maximum(rng.normal(size=(2_000, 128)), 0.0).astype(np.float32))
    per_size, rec_p, _ = fs._train(cfg, rows, RunDir(tmp_path / "p"), "per_size", progress=False,
                                   execution=fs.Execution(), fingerprint={})
    masked, rec_m, _ = fs._train(cfg, rows, RunDir(tmp_path / "m"), "masked", progress=False,
                                 execution=fs.Execution(), fingerprint={})
    for a, b, ra, rb in zip(per_size, masked, rec_p, rec_m):
        assert a.d_sae == b.d_sae
        np.testing.assert_allclose(np.asarray(b.decoder), np.asarray(a.decoder), atol=2e-4)
        np.testing.assert_allclose(rb["losses"], ra["losses"], rtol=1e-3)
