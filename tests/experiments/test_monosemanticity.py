"""The transformer pipeline end to end on a tiny config: LM task sources, the feature browser,
model save/load, the monosemanticity run and `superpos steer` on its output."""

import json

import jax
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
            chunk_steps=300, log_every=50, browser_units=6, steer_prompt="def ", steer_multiples=(0.0, 5.0))


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
