"""`sae-toy`: the experiment contract on a reduced config, ground-truth recovery on a reduced
ground truth (a TopK SAE and a well-chosen ReLU λ recover it; a far-too-large λ does not), and
the recovery scores against closed forms."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from superpos_experiments import sae_toy
from superpos_jax.sae import sources
from superpos_jax.config import ConfigError, validate
from superpos_jax.rundir import RunDir

SMALL = sae_toy.Config(
    n_features=48, d_in=24, mean_active=3.0, probability_base=0.98, d_sae=96,
    architectures=("relu", "topk"), relu_l1=(0.3, 30.0), topk_k=(3.0,),
    n_steps=800, batch_size=256, chunk_steps=400, log_every=50, dead_steps=100, resample_every=200,
    eval_samples=2048,
)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_toy")
    validate(SMALL)
    summary = sae_toy.run(SMALL, RunDir(out), progress=False)
    return summary, out


def test_contract_summary_and_figures(small_run):
    summary, out = small_run
    json.dumps(summary)  # JSON-able
    assert set(summary["architectures"]) == {"relu", "topk"}
    assert set(summary["mmcs_by_architecture"]) == {"relu", "topk"}
    for arch, block in summary["architectures"].items():
        assert len(block["instances"]) == block["n_instances"]
        for record in block["instances"]:
            for field in ("mmcs", "hungarian", "l0", "fvu", "dead_fraction"):
                assert np.isfinite(record[field]), (arch, field)
            assert record["hungarian"] <= record["mmcs"] + 1e-6  # one-to-one never beats the max
        assert block["best"]["mmcs"] == max(r["mmcs"] for r in block["instances"])
    assert summary["best_mmcs"] == max(summary["mmcs_by_architecture"].values())
    assert summary["target_met"] == (summary["best_mmcs"] >= SMALL.target)
    for name in ("pareto", "recovery", "density", "loss"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


def test_best_sae_recovers_ground_truth_and_huge_lambda_does_not(small_run):
    summary, _ = small_run
    assert summary["best_mmcs"] >= 0.95
    assert summary["architectures"]["topk"]["best"]["mmcs"] >= 0.95
    relu = {r["coords"]["l1_coefficient"]: r for r in summary["architectures"]["relu"]["instances"]}
    assert relu[0.3]["mmcs"] >= 0.9
    assert relu[30.0]["mmcs"] < 0.6  # λ far too large: latents die or stay random
    assert relu[30.0]["l0"] < relu[0.3]["l0"]


def test_recovery_scores_closed_forms():
    gt = np.asarray(sources.ground_truth_dictionary(6, 4, key=jax.random.key(3)))
    rng = np.random.default_rng(0)
    perfect = gt[rng.permutation(6)].T * rng.uniform(0.5, 2.0, 6)[None, :]  # scale must not matter
    duplicated = np.repeat(gt[:1].T, 6, axis=1)  # every latent is feature 0
    scores = sae_toy.recovery_scores(np.stack([perfect, duplicated]).astype(np.float32), gt)
    np.testing.assert_allclose(scores["max_cosine"][0], 1.0, atol=1e-5)
    np.testing.assert_allclose(scores["hungarian"][0], 1.0, atol=1e-5)
    cos0 = gt @ gt[0]
    np.testing.assert_allclose(scores["max_cosine"][1], cos0, atol=1e-5)
    np.testing.assert_allclose(scores["mmcs"][1], cos0.mean(), atol=1e-5)
    np.testing.assert_allclose(scores["hungarian"][1], cos0.mean(), atol=1e-5)


@pytest.mark.parametrize("change, field", [
    ({"d_sae": 32}, "d_sae"),
    ({"architectures": ("relu", "sparse")}, "architectures"),
    ({"topk_k": (0.0,)}, "topk_k"),
    ({"relu_l1": (-1.0,)}, "relu_l1"),
    ({"mean_active": 100.0}, "mean_active"),
    ({"probability_base": 1.5}, "probability_base"),
])
def test_bad_config_fails_naming_the_field(change, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        validate(dataclasses.replace(SMALL, **change))
