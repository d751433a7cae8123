"""The transformer pipeline end to end on a tiny config: LM task sources, the feature browser,
model save/load, the monosemanticity run and `superpos steer` on its output."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import monosemanticity
from superpos_jax import cli
from superpos_jax.config import validate
from superpos_jax.lm.task import CorpusWindows, RepeatedTokens, lm_task
from superpos_jax.lm.transformer import TransformerConfig, init_transformer
from superpos_jax.lm.io import load_transformer, save_transformer
from superpos_jax.rundir import RunDir

TINY = dict(max_bytes=120_000, model=TransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=32,
                                                       d_vocab=256, act="relu"), n_steps=300, lm_batch=32,
            harvest_windows=256, eval_windows=48, sae_steps=300, sae_batch=256, sae_coefficients=(8.0,),
            chunk_steps=300, log_every=50, browser_units=6, steer_prompt="def ", steer_multiples=(0.0, 5.0),
            firing_rows=256, probe_ks=(1, 5))


def test_repeated_tokens_and_corpus_windows():
    seqs = np.asarray(RepeatedTokens(d_vocab=10, half=5).sample(jax.random.key(0), 4))
    assert seqs.shape == (4, 11) and np.all(seqs[:, 0] == 0)
    np.testing.assert_array_equal(seqs[:, 1:6], seqs[:, 6:])
    assert seqs[:, 1:].min() >= 1 and seqs[:, 1:].max() <= 9
    tokens = np.arange(100, dtype=np.uint8)
    w = np.asarray(CorpusWindows(tokens, 8).sample(jax.random.key(1), 5))
    np.testing.assert_array_equal(np.diff(w, axis=1), 1)  # consecutive bytes
    with pytest.raises(ValueError, match="longer than seq_len"):
        CorpusWindows(tokens[:8], 8)
    with pytest.raises(ValueError, match="exceeds n_ctx"):
        lm_task(TransformerConfig(n_ctx=8), CorpusWindows(tokens, 16), 4)


def test_transformer_save_load_roundtrip(tmp_path):
    params = init_transformer(TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=20),
                              key=jax.random.key(0))
    loaded = load_transformer(save_transformer(tmp_path / "m", params))
    assert loaded.cfg == params.cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="not a saved transformer"):
        load_transformer(tmp_path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mono")
    cfg = monosemanticity.Config(**TINY)
    validate(cfg)
    return out, monosemanticity.run(cfg, RunDir(out), progress=False)


@pytest.mark.slow
def test_monosemanticity_pipeline(tiny_run):
    out, summary = tiny_run
    lm, sae = summary["lm"], summary["sae"]
    assert lm["val_loss"] < lm["unigram_baseline"] - 0.3  # the model learned more than byte frequencies
    assert lm["zero_ablated_mlp_loss"] > lm["val_loss"]  # the MLP matters
    best = sae["instances"][sae["best"]]
    assert best["ce_loss_recovered"] > 0.5 and best["l0"] <= 8.0 + 1e-6 and best["fvu"] < 0.5
    assert summary["steering"]["values"][1]["kl_from_clean"] > summary["steering"]["values"][0]["kl_from_clean"] - 1e-6
    for f in ("lm_loss", "sae_loss", "density", "pareto", "purity"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 0
    page = (out / "browser" / "index.html").read_text()
    assert page.count("class=unit") == 2 * TINY["browser_units"] and "top-token purity" in page
    shown = summary["browser"]["features_shown"]  # unit pages, JSON, prompt pages (details: tests/lm/test_browser.py)
    assert len(shown) == TINY["browser_units"] and set(summary["browser"]["prompt_features"]) <= set(shown)
    for f in shown:
        assert json.loads((out / "browser" / "features" / f"{f}.json").read_text())["feature_index"] == f
    assert (out / "browser" / "features" / f"prompt-{len(monosemanticity.BROWSER_PROMPTS) - 1}.html").is_file()
    assert "through the final LayerNorm" in page
    json.dumps(summary)


@pytest.mark.slow
def test_monosemanticity_probing_delta_loss_and_firing(tiny_run):
    out, summary = tiny_run
    lm, records, probing = summary["lm"], summary["sae"]["instances"], summary["probing"]
    for r in records:  # Δ loss and CE recovered are two views of the same spliced loss
        assert r["delta_loss"] == pytest.approx(r["ce_with_sae"] - lm["val_loss"], abs=1e-9)
        assert r["delta_loss"] >= -1e-3
        assert r["delta_loss"] == pytest.approx((1 - r["ce_loss_recovered"]) * (lm["zero_ablated_mlp_loss"] - lm["val_loss"]),
                                                abs=1e-5)
        assert 0.0 <= r["dense_fraction"] <= 1.0 - r["dead_fraction"]
    assert probing["ks"] == [1, 5] and {"string", "comment", "identifier", "keyword"} <= set(probing["concepts"])
    for name in ("features", "neurons"):
        acc = np.asarray(probing[name])
        assert acc.shape == (2, len(probing["concepts"])) and np.isfinite(acc).all()
        assert ((0.0 <= acc) & (acc <= 1.0)).all()
        assert acc[1].mean() > 0.55, (name, acc)          # the MLP carries these concepts: above chance (0.5)
        assert acc[1].mean() >= acc[0].mean() - 0.02      # more units per probe do not do worse
    assert len(probing["table"]) == 2 * len(probing["concepts"])
    assert all(0 < f < 1 for f in probing["frequency"].values())
    for r in records:
        assert set(r["probing"]) >= set(probing["concepts"])
    for f in ("probing", "delta_loss"):
        assert (out / "figures" / f"{f}.png").stat().st_size > 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sae_lines = [line for line in lines if line.get("sweep") == "sae"]
    assert [line["step"] for line in sae_lines] == [TINY["sae_steps"]]
    for inst in sae_lines[-1]["instances"]:
        assert 0.0 <= inst["dead_fraction"] <= 1.0 and 0.0 <= inst["dense_fraction"] <= 1.0 - inst["dead_fraction"]
    trace = summary["sae"]["firing_over_training"]
    assert trace["steps"][-1] == TINY["sae_steps"] and len(trace["dead_fraction"][0]) == len(trace["steps"])
    assert trace["dead_fraction"][0][-1] == sae_lines[-1]["instances"][0]["dead_fraction"]


@pytest.mark.parametrize("recipe", ["2023", "2024"])
def test_firing_observer_closed_form(recipe):
    from superpos_jax.sae.architectures.base import SAEParams
    from superpos_jax.sae.sources import ArrayRows
    from superpos_jax.sae.training import SAETraining, firing_observer

    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=400), rng.normal(size=400)], axis=1).astype(np.float32)
    x[:, 0] = np.where(np.arange(400) < 20, 1.0 + np.abs(x[:, 0]), -1.0 - np.abs(x[:, 0]))  # x0 > 0 on 5% of rows
    training = SAETraining("relu", 2, 3, batch_size=32, recipe=recipe)
    # latent 0 = relu(x0): fires on 5% of rows; latent 1 = relu(-x0): 95% (dense); latent 2 = relu(x1 - 100): dead
    params = SAEParams(W_enc=jnp.asarray([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), b_enc=jnp.asarray([0.0, 0.0, -100.0]),
                       W_dec=jnp.zeros((2, 3)), b_dec=jnp.zeros(2))
    observe = firing_observer(training, ArrayRows(jnp.asarray(x)), x, dense_above=0.1)
    out = jax.jit(observe)(params, {"l1_coefficient": jnp.float32(1.0)})
    assert float(out["dead_fraction"]) == pytest.approx(1 / 3) and float(out["dense_fraction"]) == pytest.approx(1 / 3)
    masked = observe(params, {"l1_coefficient": jnp.float32(1.0), "n_latents": jnp.float32(2.0)})  # latent 2 absent
    assert float(masked["dead_fraction"]) == 0.0 and float(masked["dense_fraction"]) == pytest.approx(1 / 2)
    strict = firing_observer(training, ArrayRows(jnp.asarray(x)), x, dense_above=0.01)
    assert float(strict(params, {"l1_coefficient": jnp.float32(1.0)})["dense_fraction"]) == pytest.approx(2 / 3)
    stacked = firing_observer(training, ArrayRows(jnp.asarray(x)), np.stack([x, -x]), by="hook")
    flipped = stacked(params, {"l1_coefficient": jnp.float32(1.0), "hook": jnp.int32(1)})  # -x: latent 0 dense, 1 rare
    assert float(flipped["dense_fraction"]) == pytest.approx(1 / 3) and float(flipped["dead_fraction"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="x_eval must be"):
        firing_observer(training, ArrayRows(jnp.asarray(x)), x, by="hook")


@pytest.mark.slow
def test_steer_command_clamps_a_feature(tiny_run, capsys):
    out, summary = tiny_run
    feature = summary["steering"]["feature"]
    assert cli.main(["steer", str(out), "def ", "--feature", str(feature), "--value", "0", "--values", "50", "--n-new", "8"]) == 0
    text = capsys.readouterr().out
    assert "unsteered:" in text and f"feature {feature} = 50:" in text
    assert cli.main(["steer", str(out), "def ", "--feature", "100000", "--value", "1"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_bad_config_is_named():
    with pytest.raises(Exception, match="sae_coefficients"):
        validate(monosemanticity.Config(**{**TINY, "sae_coefficients": (8.5,)}))
    with pytest.raises(Exception, match="corpus_dir"):
        validate(monosemanticity.Config(**{**TINY, "corpus_dir": "/no/such/dir"}))
