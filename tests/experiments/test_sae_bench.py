"""`sae-bench`: the summary and figures of a reduced benchmark, one compiled sweep per
architecture, structure-aware scores in range, and the science on hierarchical ground truth:
FVU falls as L0 grows, and an L1/ReLU SAE absorbs parents into children more than Matryoshka
BatchTopK at matched L0."""

import dataclasses
import json

import numpy as np
import pytest

from superpos_experiments import sae_bench
from superpos_jax.config import ConfigError, apply_overrides, validate
from superpos_jax.rundir import RunDir

SMALL = dataclasses.replace(
    apply_overrides(sae_bench.Config(), [f"{k}={v}" for k, v in sae_bench.QUICK.items() if k.startswith("truth.")]),
    d_sae=64, architectures=("relu", "topk", "matryoshka_batchtopk"), n_seeds=1, n_steps=1_500, chunk_steps=1_500,
    dead_steps=150, resample_every=300, eval_samples=4096,
    relu_l1=(0.03, 0.1, 0.3, 1.0), topk_k=(2.0, 4.0, 8.0), matryoshka_k=(2.0, 4.0, 6.0, 8.0),
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_bench")
    validate(SMALL)
    return sae_bench.run(SMALL, RunDir(out), progress=False), out


def test_summary_figures_and_one_program_per_architecture(bench):
    summary, out = bench
    json.dumps(summary)
    assert summary["n_compiled_sweeps"] == len(SMALL.architectures)
    assert set(summary["architectures"]) == set(SMALL.architectures)
    for arch, block in summary["architectures"].items():
        levels = getattr(SMALL, sae_bench.COEFFICIENT_FIELDS[arch])
        assert block["n_instances"] == len(levels) * SMALL.n_seeds
        for record in block["instances"]:
            for field in ("l0", "fvu", "mmcs", "hungarian", "precision", "recall", "f1", "dead_fraction"):
                assert np.isfinite(record[field]), (arch, field)
            for field in ("absorption", "parent_miss", "precision", "recall", "f1", "dead_fraction"):
                assert 0.0 <= record[field] <= 1.0, (arch, field, record[field])
            assert record["hungarian"] <= record["mmcs"] + 1e-6
            assert record["absorption"] <= record["parent_miss"] + 1e-9  # absorbed inputs are misses
    assert len(summary["table"]) == sum(len(getattr(SMALL, sae_bench.COEFFICIENT_FIELDS[a])) for a in SMALL.architectures)
    for name in ("pareto", "absorption", "mmcs", "f1"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


def test_k_sparse_architectures_reach_their_k_and_fvu_falls_with_l0(bench):
    summary, _ = bench
    for arch in ("topk", "matryoshka_batchtopk"):
        by = summary["architectures"][arch]["by_level"]
        assert np.allclose(by["l0"], by["k"], rtol=0.15) if arch == "topk" else np.all(np.diff(by["l0"]) > 0)
        assert np.all(np.diff(by["fvu"]) < 0), (arch, by["fvu"])
    relu = summary["architectures"]["relu"]["by_level"]
    assert np.all(np.diff(relu["l0"]) < 0), relu["l0"]  # larger λ, sparser


def test_relu_absorbs_more_than_matryoshka_at_matched_l0(bench):
    summary, _ = bench
    comparison = summary["absorption_comparison"]
    assert comparison["available"] and len(comparison["l0"]) == 5
    relu, matryoshka = np.asarray(comparison["relu"]), np.asarray(comparison["matryoshka_batchtopk"])
    assert comparison["mean_difference"] == pytest.approx(float(np.mean(relu - matryoshka)))
    assert comparison["agrees_with_literature"]
    assert np.mean(relu - matryoshka) > 0.1, (relu, matryoshka)


def test_matched_l0_interpolates_inside_every_range():
    means = {"a": {"l0": np.array([2.0, 8.0]), "x": np.array([1.0, 3.0])},
             "b": {"l0": np.array([4.0, 16.0]), "x": np.array([0.0, 2.0])}}
    out = sae_bench.matched_l0(means, "x", n_points=3)
    assert out["l0"] == pytest.approx([4.0, np.sqrt(32.0), 8.0])
    assert out["a"] == pytest.approx([2.0, 2.5, 3.0])  # linear in log L0
    assert out["b"] == pytest.approx([0.0, 0.5, 1.0])
    disjoint = sae_bench.matched_l0({"a": means["a"], "c": {"l0": np.array([20.0, 30.0]), "x": np.array([0.0, 1.0])}}, "x")
    assert disjoint["l0"] == [] and disjoint["a"] == []


@pytest.mark.parametrize("setting, field", [("d_sae=8", "d_sae"), ("topk_k=(0.5,)", "topk_k"),
                                            ("truth.n_parents=1000", "truth.n_parents"),
                                            ("architectures=(transcoder,)", "architectures")])
def test_bad_values_name_their_field(setting, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(apply_overrides(sae_bench.Config(), [setting]))
