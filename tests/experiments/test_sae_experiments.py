"""The SAE experiments on reduced configs: their contract (configs validate, bad values fail
early, JSON summary, figures) and their science (an SAE recovers a toy model's features; held-out
loss falls with dictionary size along a power law)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import sae_on_toy_model as toy_exp
from superpos_experiments import sae_scaling as scaling_exp
from superpos_jax.config import ConfigError, apply_overrides, validate
from superpos_jax.rundir import RunDir

TOY = toy_exp.Config(
    n_steps=2_000, chunk_steps=2_000, sae_kinds=("topk",), dictionary_multipliers=(2,), ks=(2, 8),
    sae_seeds=1, sae_steps=1_000, sae_chunk_steps=1_000, sae_learning_rate=3e-3, eval_samples=2048,
)
SCALING = scaling_exp.Config(
    n_steps=200, chunk_steps=200, log_every=25, n_lengths=3, n_ground_truth=128, d_in=16, probability_base=0.98,
    mean_active=3.0, k=3, dictionary_sizes=(16, 32, 64), eval_samples=1024,
)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_on_toy")
    return toy_exp.run(TOY, RunDir(out), progress=False), out


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_scaling")
    return scaling_exp.run(SCALING, RunDir(out), progress=False), out


@pytest.mark.parametrize("module", [toy_exp, scaling_exp])
def test_configs_validate(module):
    validate(module.Config())
    validate(apply_overrides(module.Config(), [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                                               for k, v in module.QUICK.items()]))
    validate(TOY)
    validate(SCALING)


@pytest.mark.parametrize(
    "module, setting, field",
    [
        (toy_exp, "ks=0,2", "ks"),
        (toy_exp, "sae_kinds=gated", "sae_kinds"),
        (toy_exp, "feature_probability=0", "feature_probability"),
        (toy_exp, "sae_steps=1005", "sae_steps"),
        (scaling_exp, "dictionary_sizes=64,32,128", "dictionary_sizes"),
        (scaling_exp, "n_lengths=9", "n_steps"),
        (scaling_exp, "mean_active=1000", "mean_active"),
        (scaling_exp, "k=100", "k"),
    ],
)
def test_bad_values_name_their_field(module, setting, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        validate(apply_overrides(module.Config(), [setting]))


def test_toy_summary_and_figures(toy_run):
    summary, out = toy_run
    json.dumps(summary)
    assert summary["toy"]["n_represented"] == len([n for n in summary["toy"]["feature_norms"] if n > 0.5])
    assert len(summary["saes"]) == len(TOY.ks)
    for r in summary["saes"]:
        assert r["l0"] == pytest.approx(r["value"], abs=0.5)  # TopK: L0 = k (at most)
        assert 0.0 <= r["dead_fraction"] <= 1.0 and 0.0 < r["fvu"] < 1.0
        assert r["hungarian_represented"] <= r["mmcs_represented"] + 1e-6
    for name in ("pareto", "recovery", "matched", "recovery_vs_l0"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


def test_sparse_sae_recovers_toy_features_dense_one_does_not(toy_run):
    summary, _ = toy_run
    assert summary["toy"]["n_represented"] >= 2 * TOY.d_hidden  # the toy model is in superposition
    by_k = {int(r["value"]): r for r in summary["saes"]}
    assert summary["best"]["mmcs_represented"] >= 0.95
    assert summary["best"]["hungarian_represented"] >= 0.9
    assert int(summary["best"]["value"]) < TOY.d_hidden // 2
    dense = by_k[8]  # k close to d_hidden: any direction is reconstructable, features are not found
    assert dense["mmcs_represented"] < summary["best"]["mmcs_represented"] - 0.15
    assert dense["fvu"] < summary["best"]["fvu"]  # it reconstructs better nonetheless


def test_scaling_summary_and_figures(scaling_run):
    summary, out = scaling_run
    json.dumps(summary)
    fvu = np.asarray(summary["fvu"])
    assert fvu.shape == (len(SCALING.dictionary_sizes), SCALING.n_lengths)
    assert summary["steps"] == [50, 100, 200]
    runs = summary["runs"]
    np.testing.assert_allclose(runs["compute"], 12 * SCALING.d_in * np.asarray(runs["size"])
                               * np.tile(np.asarray(summary["tokens"]), len(SCALING.dictionary_sizes)))
    for name in ("scaling_size", "compute_optimal", "scaling_compute"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


def _topk_masks() -> bool:
    """Whether TopK honours `n_latents` (ksparse.py's half of the dictionary-size mask)."""
    from superpos_jax.sae import architectures as sae

    arch = sae.get("topk")
    params = arch.init(4, 6, key=jax.random.key(0))
    f = arch.encode(params, jax.random.normal(jax.random.key(1), (8, 4)), {"k": jnp.float32(6), "n_latents": jnp.float32(2)})
    return bool(jnp.all(f[:, 2:] == 0))


def test_scaling_sweep_mode_rule(tmp_path):
    assert scaling_exp.sweep_mode(SCALING, "cpu") == "per_size"
    assert scaling_exp.sweep_mode(SCALING, "gpu") == scaling_exp.sweep_mode(SCALING, "tpu") == "masked"
    for mode in ("masked", "per_size"):
        assert scaling_exp.sweep_mode(dataclasses.replace(SCALING, dictionary_sweep=mode), "gpu") == mode
    masked_dir = RunDir(tmp_path / "masked")
    masked_dir.checkpoint_dir("masked").mkdir(parents=True)
    assert scaling_exp.sweep_mode(SCALING, "cpu", masked_dir) == "masked"  # a resumed run keeps its mode
    sized_dir = RunDir(tmp_path / "sized")
    sized_dir.checkpoint_dir("N16").mkdir(parents=True)
    assert scaling_exp.sweep_mode(SCALING, "gpu", sized_dir) == "per_size"
    with pytest.raises(ConfigError, match="'dictionary_sweep'"):
        validate(apply_overrides(scaling_exp.Config(), ["dictionary_sweep=padded"]))


@pytest.mark.skipif(not _topk_masks(), reason="ksparse.py does not apply n_latents yet")
def test_scaling_masked_program_gives_the_per_size_fits(scaling_run, tmp_path):
    """The whole size sweep as one masked program: same summary keys, curves, fits and
    figures as one program per size (to float32 rounding of the padded reductions)."""
    summary, _ = scaling_run
    assert summary["dictionary_sweep"] == scaling_exp.sweep_mode(SCALING)
    other = "masked" if summary["dictionary_sweep"] == "per_size" else "per_size"
    masked = scaling_exp.run(dataclasses.replace(SCALING, dictionary_sweep=other), RunDir(tmp_path), progress=False)
    assert masked["dictionary_sweep"] == other
    assert set(masked) == set(summary) and masked["grid"] == summary["grid"]
    np.testing.assert_allclose(masked["fvu"], summary["fvu"], rtol=1e-4, atol=1e-6)
    for law in ("size_law", "compute_law"):
        for field in ("a", "b", "c", "r2"):
            np.testing.assert_allclose(masked[law][field], summary[law][field], rtol=2e-3, atol=1e-6, err_msg=law)
    np.testing.assert_allclose(masked["compute_optimal"]["sizes"], summary["compute_optimal"]["sizes"], rtol=1e-3)
    for a, b in zip(masked["per_size"], summary["per_size"]):
        assert set(a) == set(b)
        for field in ("l0", "dead_fraction", "final_fvu", "final_train_loss"):
            np.testing.assert_allclose(a[field], b[field], rtol=1e-4, atol=1e-6, err_msg=field)
    for name in ("scaling_size", "compute_optimal", "scaling_compute"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 10_000


def test_loss_falls_with_dictionary_size_and_training(scaling_run):
    summary, _ = scaling_run
    fvu = np.asarray(summary["fvu"])  # (size, length)
    assert np.all(np.diff(fvu[:, -1]) < 0)  # larger dictionaries reconstruct better
    assert np.all(np.diff(fvu, axis=1) < 0)  # longer training helps every size
    law = summary["size_law"]
    assert law["b"] > 0.05 and law["r2"] > 0.9
