"""`superpos run sae-lm` on a reduced config: SAEs trained on every layer at once from the LM's
in-loop activations reconstruct each layer and recover its CE loss, k-sparse codes have L0 = k,
and a larger dictionary is not worse at equal k."""

import json

import numpy as np
import pytest

from superpos_experiments import sae_lm
from superpos_jax.config import validate
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.rundir import RunDir

TINY = dict(max_bytes=200_000, model=TransformerConfig(n_layers=2, d_model=24, n_heads=2, d_head=12, d_mlp=96, n_ctx=24,
                                                       d_vocab=256, act="relu"),
            n_steps=200, lm_batch=32, sae_expansions=(2, 8), sae_coefficients=(6.0,), sae_steps=200, sae_batch=128,
            stats_samples=512, eval_windows=48, chunk_steps=100, log_every=50, firing_rows=256, probe_ks=(1, 5))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae_lm")
    cfg = sae_lm.Config(**TINY)
    validate(cfg)
    return out, sae_lm.run(cfg, RunDir(out), progress=False)


@pytest.mark.slow
def test_every_layer_is_reconstructed_and_recovers_its_loss(tiny_run):
    out, summary = tiny_run
    records = summary["sae"]["instances"]
    assert len(records) == 2 * 2  # layers × sizes × k × seeds
    assert {r["coords"]["layer"] for r in records} == {0, 1} and {r["coords"]["d_sae"] for r in records} == {48, 192}
    for r in records:
        assert r["fvu"] < 0.5, r
        assert r["ce_loss_recovered"] > 0.5 and r["ce_loss_recovered_vs_mean"] > 0.0, r
        assert r["l0"] == pytest.approx(6.0, abs=1e-4)  # topk: exactly k positive latents (ties aside)
        assert 0.0 <= r["dead_fraction"] < 1.0
    for layer in (0, 1):
        (small,) = [r for r in records if r["coords"]["layer"] == layer and r["expansion"] == 2]
        (large,) = [r for r in records if r["coords"]["layer"] == layer and r["expansion"] == 8]
        assert large["fvu"] <= small["fvu"] * 1.02, (small, large)  # 4× the latents at equal k: not worse
    for layer in summary["layers"]:  # the ablations hurt: the CE recovered is measured against something
        assert layer["zero_ablated"] > summary["lm"]["val_loss"] and layer["mean_ablated"] > summary["lm"]["val_loss"]
    assert (out / "figures" / "layers.png").stat().st_size > 0
    json.dumps(summary)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for sweep in ("sae_x2", "sae_x8"):  # one line per chunk, every instance with its grid coordinates
        mine = [line for line in lines if line["sweep"] == sweep]
        assert [line["step"] for line in mine] == [100, 200]
        assert [i["coords"]["layer"] for i in mine[-1]["instances"]] == [0, 1]
        for inst in mine[-1]["instances"]:  # firing over training, on the instance's own layer's rows
            assert 0.0 <= inst["dead_fraction"] <= 1.0 and 0.0 <= inst["dense_fraction"] <= 1.0 - inst["dead_fraction"]


@pytest.mark.slow
def test_delta_loss_and_probing_per_layer(tiny_run):
    out, summary = tiny_run
    clean = summary["lm"]["val_loss"]
    for r in summary["sae"]["instances"]:
        assert r["delta_loss"] == pytest.approx(r["ce_with_sae"] - clean, abs=1e-9) and r["delta_loss"] >= -1e-3
        assert 0.0 <= r["dense_fraction"] <= 1.0 - r["dead_fraction"]
    probing = summary["probing"]
    assert probing["ks"] == [1, 5] and [e["layer"] for e in probing["layers"]] == [0, 1]
    for entry in probing["layers"]:
        assert {"string", "comment", "identifier"} <= set(entry["concepts"])
        names = [n for n in entry if n.startswith("SAE features")] + ["hook units", "MLP neurons"]
        assert len(names) == 3
        for name in names:
            acc = np.asarray(entry[name])
            assert acc.shape == (2, len(entry["concepts"])) and np.isfinite(acc).all()
            assert ((0.0 <= acc) & (acc <= 1.0)).all() and acc[1].mean() > 0.55, (name, acc)
        assert (out / "figures" / f"probing_layer{entry['layer']}.png").stat().st_size > 0
    assert (out / "figures" / "delta_loss.png").stat().st_size > 0
    for sweep in summary["sae"]["sweeps"]:
        trace = sweep["firing_over_training"]
        assert len(trace["dense_fraction"]) == sweep["n_instances"] and len(trace["steps"]) == TINY["sae_steps"] // 50


def test_bad_config_is_named():
    with pytest.raises(Exception, match="sae_coefficients"):
        validate(sae_lm.Config(**{**TINY, "sae_coefficients": (6.5,)}))
    with pytest.raises(Exception, match="sae_coefficients"):
        validate(sae_lm.Config(**{**TINY, "sae_coefficients": (49.0,)}))  # > the smallest dictionary, 2 × 24
    with pytest.raises(Exception, match="skip_positions"):
        validate(sae_lm.Config(**{**TINY, "skip_positions": 23}))
    with pytest.raises(Exception, match="buffer_steps.*quarter of the device's memory"):
        validate(sae_lm.Config(**{**TINY, "buffer_steps": 10**9}))
    validate(sae_lm.Config(**{**TINY, "buffer_steps": 64}))
    with pytest.raises(Exception, match="hook"):
        validate(sae_lm.Config(**{**TINY, "hook": "mlp.post", "model": TransformerConfig(
            n_layers=2, d_model=24, n_heads=2, d_head=12, d_mlp=96, n_ctx=24, d_vocab=256, attn_only=True)}))
