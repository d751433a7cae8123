"""The LM pipelines on a GPT-2-family checkpoint instead of a model trained here: a random GPT-2
made by `transformers` and a byte-level BPE `tokenizer.json` trained by `tokenizers` (both in the
test, nothing downloaded), loaded through `pretrained=`; monosemanticity end to end
(activations → SAE → CE loss recovered → browser → steering → `superpos steer`) and sae-lm's
in-loop activation source on every layer."""

import json
import os
import sysconfig
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from superpos_experiments import lm_common, monosemanticity, sae_lm  # noqa: E402
from superpos_jax import cli  # noqa: E402
from superpos_jax.config import ConfigError, validate  # noqa: E402
from superpos_jax.lm.corpus import load_corpus  # noqa: E402
from superpos_jax.rundir import RunDir  # noqa: E402

VOCAB = 320
N_CTX = 32
CORPUS = dict(max_bytes=150_000)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A Hugging Face GPT-2 directory: random weights (2 layers, d_model 32) and a BPE tokenizer
    trained on the standard library's source, with `<|endoftext|>` as the last id."""
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-gpt2"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(errors="replace") for p in sorted(stdlib.glob("*.py"))[:40]]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=VOCAB - 1, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    eos = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_inner=128, n_positions=N_CTX, vocab_size=VOCAB,
                                  bos_token_id=eos, eos_token_id=eos)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(directory, safe_serialization=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


MONO = dict(CORPUS, harvest_windows=128, eval_windows=32, sae_steps=200, sae_batch=256, sae_coefficients=(8.0,),
            chunk_steps=200, log_every=50, browser_units=4, steer_prompt="def f(", steer_multiples=(0.0, 20.0), layer=1)


@pytest.fixture(scope="module")
def mono_run(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("mono-gpt2")
    cfg = monosemanticity.Config(pretrained=str(checkpoint), **MONO)
    validate(cfg)
    return out, monosemanticity.run(cfg, RunDir(out), progress=False)


def test_the_corpus_is_tokenized_with_the_checkpoints_tokenizer(checkpoint):
    tokenizer = lm_common.load_tokenizer(checkpoint)
    corpus = load_corpus(None, max_bytes=20_000)
    tokens = lm_common.tokenize_corpus(tokenizer, corpus.train)
    assert tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < VOCAB
    assert tokens.size < 0.7 * corpus.train.size  # BPE merges: fewer tokens than bytes
    files = bytes(corpus.train).split(b"\0")
    assert tokenizer.decode(tokens[: np.argmax(tokens == tokens.max())]) == files[0].decode()  # file 0, then <|endoftext|>


@pytest.mark.slow
def test_monosemanticity_runs_on_a_gpt2_checkpoint(checkpoint, mono_run):
    out, summary = mono_run
    lm, sae = summary["lm"], summary["sae"]
    assert lm["source"] == str(checkpoint) and lm["final_train_loss"] is None
    # the model is the checkpoint: its loss on the pipeline's own validation windows is the HF forward's
    model = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    windows = lm_common.language_model("x", monosemanticity.Config(pretrained=str(checkpoint), **MONO),
                                       load_corpus(None, max_bytes=CORPUS["max_bytes"]), RunDir(out / "x"),
                                       progress=False, execution=None, fingerprint={}).val
    with torch.no_grad():
        ids = torch.as_tensor(np.array(windows, np.int64))
        ref = model(ids, labels=ids).loss
    assert lm["val_loss"] == pytest.approx(float(ref), rel=1e-4)
    assert 0.5 * np.log(VOCAB) < lm["val_loss"] < 1.5 * np.log(VOCAB)  # a random model: about uniform
    best = sae["instances"][sae["best"]]
    assert best["l0"] <= 8.0 + 1e-6 and best["fvu"] < 0.9 and np.isfinite(best["ce_loss_recovered"])
    cfg = json.loads((out / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.mlp.hook_post"  # TransformerLens's name, where SAELens v6 puts it
    assert (out / "model" / "tokenizer.json").is_file()
    assert (out / "browser" / "index.html").stat().st_size > 0
    json.dumps(summary)


@pytest.mark.slow
def test_steer_command_reads_the_runs_tokenizer(mono_run, capsys):
    out, summary = mono_run
    feature = summary["steering"]["feature"]
    assert cli.main(["steer", str(out), "def f(", "--feature", str(feature), "--value", "0", "--n-new", "4"]) == 0
    text = capsys.readouterr().out
    assert "unsteered:" in text and "\\x" not in text.split("unsteered:")[1].splitlines()[0]


@pytest.mark.slow
def test_sae_lm_trains_in_loop_on_a_gpt2_checkpoint(checkpoint, tmp_path):
    cfg = sae_lm.Config(pretrained=str(checkpoint), hook="resid_post", sae_expansions=(2,), sae_coefficients=(4.0,),
                        sae_steps=100, sae_batch=128, stats_samples=512, eval_windows=16, chunk_steps=100, log_every=50,
                        **CORPUS)
    validate(cfg)
    summary = sae_lm.run(cfg, RunDir(tmp_path), progress=False)
    records = summary["sae"]["instances"]
    assert [r["hook"] for r in records] == ["blocks.0.resid_post", "blocks.1.resid_post"]
    assert all(r["fvu"] < 0.9 and r["l0"] <= 4.0 + 1e-6 for r in records)
    assert summary["lm"]["source"] == str(checkpoint)


def test_bad_checkpoint_is_named(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="pretrained"):
        validate(monosemanticity.Config(pretrained=str(tmp_path / "missing"), **MONO))
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((checkpoint / f).read_bytes())
    with pytest.raises(ConfigError, match="tokenizer.json"):
        validate(monosemanticity.Config(pretrained=str(bare), **MONO))
    with pytest.raises(ConfigError, match="layer"):
        validate(monosemanticity.Config(pretrained=str(checkpoint), **{**MONO, "layer": 2}))
