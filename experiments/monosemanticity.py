"""Towards Monosemanticity, small: a one-layer transformer with a ReLU MLP trained on a real
corpus (default: the Python standard library's own source, byte tokens), its MLP activations
decomposed by sparse autoencoders, read in a feature browser and steered.

Pipeline (each training stage is one compiled, checkpointed, resumable sweep):
1. the language model (seeds vmapped; the lowest validation loss is kept), its validation
   loss against the unigram baseline;
2. MLP activations `blocks.0.mlp.post` harvested on training windows (and on validation
   windows for evaluation);
3. SAEs on them, one sweep over k (TopK) or λ; per SAE: L0, FVU, dead and dense fractions
   (latents firing on no / more than 10% of the validation tokens), the CE loss recovered =
   (CE_zero-ablated − CE_spliced) / (CE_zero-ablated − CE_clean) and the Δ loss =
   CE_spliced − CE_clean (nats per token), with the SAE's reconstruction spliced in place of the
   MLP activations on validation windows. During training the dead and dense fractions on
   `firing_rows` held-out rows are logged every `log_every` steps (metrics.jsonl, per chunk;
   `sae.training.firing_observer`);
3b. concept probing (`superpos_jax.sae.probing`): Python-token concepts of every validation
   token (`superpos_jax.lm.labels`: string, comment, keyword, identifier, indentation depth,
   ...; a token has the concept of its last byte) probed by k-sparse logistic probes on the SAE
   latents and, for contrast, on the MLP neurons, for each k in `probe_ks` (units chosen by the
   class-mean gap on 4 of every 5 validation windows, balanced accuracy on the fifth);
4. a feature browser (browser/index.html, `superpos_jax.lm.browser`) for the best SAE and, for
   contrast, the MLP neurons: per unit a page and a Neuronpedia-style JSON file with its
   density and activation histogram, top and interval-sampled contexts, the logits it promotes
   and suppresses (direct path W_dec·W_out through the final LayerNorm at its median scale, then
   W_U) and its top-token purity (features vs neurons); and prompt pages (`BROWSER_PROMPTS`:
   which features fire on each token);
5. steering: a feature clamped to multiples of its maximum activation at every position,
   all clamp values in one vmapped call; the next-token distributions go into the summary.
The trained model and the best SAE are saved (model/, sae/ in the SAELens layout) for
`superpos steer RUN --feature N --value X "prompt"`.

Defaults are sized for a 2-core CPU (a few minutes); Anthropic's model is d_model=128 with
512 neurons, which is the default here too, trained on far fewer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common, lm_common
from superpos_jax import plots
from superpos_jax.lm import browser
from superpos_jax.lm import steering
from superpos_jax.config import (NonNegativeInt, PositiveFloat, PositiveInt, each, fail, in_range, library_errors,
                                 non_empty, one_of, positive)
from superpos_jax.lm.corpus import check_corpus, sample_windows, unigram_cross_entropy
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.lm import activations
from superpos_jax.lm.interventions import ZeroAblate
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.lm.transformer import TransformerConfig, forward
from superpos_jax.plots import sae as sae_plots
from superpos_jax.plots.base import new_figure, save
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.io import save_sae
from superpos_jax.sae.model import SAE
from superpos_jax.sae.training import SAETraining, batched_evaluate, firing_observer, recipe_optim, sae_hparams, sae_task
from superpos_jax.engine.sweep import Grid
from superpos_jax.lm.tokenizers import ByteTokenizer
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm.io import save_transformer

NAME = "monosemanticity"
DESCRIPTION = "1-layer ReLU-MLP transformer on the stdlib source, SAEs on its MLP, feature browser, steering"
BROWSER_PROMPTS = ("def __init__(self, name):", "for i in range(10):", "import os, sys")
"""Prompt pages of the feature browser (cut to the model's n_ctx tokens); their top features get pages."""


def hook(cfg: Config) -> str:
    """The hook point the SAEs read: the MLP activations of block `cfg.layer` (TransformerLens name)."""
    return f"blocks.{cfg.layer}.mlp.hook_post"



@dataclass(frozen=True)
class Config(common.RunConfig):
    """`n_steps` and `chunk_steps` are the language model's; the SAE sweep trains `sae_steps`
    in chunks of `chunk_steps`. `model` is the language model (byte tokens: d_vocab 256; its
    heads are `d_head` wide whatever `d_model` is)."""

    STEP_FIELDS = (*common.RunConfig.STEP_FIELDS, "sae_steps")

    corpus_dir: str | None = None
    """A directory of text files to train on instead of the standard library's source."""
    pretrained: str | None = None
    """A Hugging Face GPT-2-family checkpoint directory (config.json, model.safetensors and, for
    a vocabulary other than bytes, tokenizer.json): the model is loaded, not trained (`model`,
    `n_seeds`, `n_steps`, `lm_*` unused), and the corpus is tokenized with its tokenizer."""
    layer: NonNegativeInt = 0
    """The block whose MLP activations the SAEs read."""
    corpus_glob: Annotated[tuple[str, ...] | None, non_empty] = None
    """Glob patterns of the corpus files (`*.txt,*.md`; with a "/" matched against the relative
    path); none: `*.py` for the stdlib, every file of `corpus_dir` (binary files are skipped)."""
    max_bytes: PositiveInt = 4_000_000
    model: TransformerConfig = TransformerConfig(
        n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=64, d_vocab=256, act="relu")
    n_seeds: PositiveInt = 1
    n_steps: PositiveInt = 3_000
    lm_batch: PositiveInt = 32
    lm_learning_rate: PositiveFloat = 3e-3
    harvest_windows: PositiveInt = 2_048
    eval_windows: PositiveInt = 256
    sae_kind: Annotated[str, one_of(*sae_lib.hook_names())] = "topk"
    sae_expansion: PositiveInt = 2
    sae_coefficients: Annotated[tuple[float, ...], non_empty, each(positive)] = (16.0, 32.0)
    """k (TopK family) or λ of each SAE in the sweep."""
    sae_steps: PositiveInt = 2_000
    sae_batch: PositiveInt = 512
    sae_learning_rate: PositiveFloat = 1e-3
    chunk_steps: PositiveInt = 1_000
    log_every: PositiveInt = 50
    firing_rows: PositiveInt = 2_048
    """Held-out activation rows on which the dead / dense fractions are logged during SAE training."""
    dense_above: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.1
    """A latent firing on more than this fraction of the tokens counts as dense."""
    probe_ks: Annotated[tuple[int, ...], non_empty, each(positive)] = (1, 2, 5, 10, 20)
    """The k of the k-sparse concept probes (units per probe)."""
    browser_units: PositiveInt = 40
    steer_prompt: str = "def __init__(self"
    steer_multiples: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0)

    def check(self) -> None:
        """Byte tokens (model.d_vocab = 256) and an MLP to read; integer k within the
        dictionary for a TopK SAE; a prompt shorter than the context; a corpus (corpus_dir,
        corpus_glob, max_bytes) with readable text in both splits, checked before any run directory;
        the SAE's `SAETraining` accepts the values."""
        super().check()
        lm_common.check_pretrained(self)
        model = lm_common.model_config(self)
        if self.pretrained is None and model.d_vocab != 256:
            fail("model.d_vocab", model.d_vocab, "256 (the corpus is byte tokens; use `pretrained` for other vocabularies)")
        if model.attn_only:
            fail("model.attn_only", model.attn_only, f"false (the SAEs read {hook(self)})")
        if self.layer >= model.n_layers:
            fail("layer", self.layer, f"a block of the model, 0..{model.n_layers - 1}")
        if sae_lib.get(self.sae_kind).swept == "k" and any(c != int(c) or c > model.d_mlp * self.sae_expansion
                                                          for c in self.sae_coefficients):
            fail("sae_coefficients", self.sae_coefficients, "integers k <= the dictionary size for a TopK SAE")
        n_prompt = len(tokenizer_of(self).encode(self.steer_prompt))
        if n_prompt < 1 or n_prompt + 1 > model.n_ctx:
            fail("steer_prompt", self.steer_prompt, f"1 to {model.n_ctx - 1} tokens (model.n_ctx={model.n_ctx}), "
                 f"it has {n_prompt}")
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            fail("corpus_dir", self.corpus_dir, "an existing directory of text files")
        with library_errors("corpus_dir" if self.corpus_dir is not None else "corpus_glob"):
            check_corpus(self.corpus_dir, include=self.corpus_glob, max_bytes=self.max_bytes)
        with library_errors("sae_kind"):
            sae_training(self)


QUICK = {
    "max_bytes": 400_000, "model.d_model": 32, "model.n_heads": 2, "model.d_head": 16, "model.d_mlp": 128,
    "model.n_ctx": 32, "n_steps": 400,
    "harvest_windows": 512, "eval_windows": 64, "sae_steps": 400, "sae_batch": 256, "sae_coefficients": (8.0, 16.0),
    "chunk_steps": 400, "browser_units": 12, "steer_prompt": "def ", "firing_rows": 512, "probe_ks": (1, 5),
}


def tokenizer_of(cfg: Config) -> Any:
    """The tokenizer of the config's model: bytes, or the `pretrained` checkpoint's."""
    return ByteTokenizer() if cfg.pretrained is None else lm_common.load_tokenizer(
        cfg.pretrained, required=lm_common.model_config(cfg).d_vocab != 256)


def sae_training(cfg: Config) -> SAETraining:
    d_mlp = lm_common.model_config(cfg).d_mlp
    return SAETraining(cfg.sae_kind, d_mlp, d_mlp * cfg.sae_expansion, batch_size=cfg.sae_batch,
                       dead_steps=max(cfg.sae_steps // 4, 1), recipe="2024" if "2024" in sae_lib.get(cfg.sae_kind).recipes else "2023",
                       resample_every=0, l1_warmup_steps=cfg.sae_steps // 20)


load_config_corpus = lm_common.load_config_corpus


build = lm_common.build


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    corpus = load_config_corpus(cfg)
    figures = out_dir.figures
    corpus_fingerprint = {"corpus": corpus.fingerprint}

    # 1. the language model (trained, or the pretrained checkpoint)
    lm = lm_common.language_model(NAME, cfg, corpus, out_dir, progress=progress, execution=execution,
                                  fingerprint=corpus_fingerprint)
    model, mcfg, val, val_losses, best_seed = lm.model, lm.cfg, lm.val, lm.val_losses, lm.best_seed
    unigram = unigram_cross_entropy(lm.train_tokens, lm.val_tokens, mcfg.d_vocab)
    HOOK = hook(cfg)

    # 2. activations
    harvest_key = jax.random.key(cfg.seed + 1)
    train_windows = sample_windows(lm.train_tokens, key=harvest_key, batch_size=cfg.harvest_windows, seq_len=mcfg.n_ctx)
    acts = activations.harvest(model, train_windows, HOOK).reshape(-1, mcfg.d_mlp)
    val_acts = activations.harvest(model, val, HOOK)  # (n_val, pos, d_mlp)

    # 3. SAEs
    training = sae_training(cfg)
    coef_name = training.arch.swept
    sae_grid = Grid({coef_name: cfg.sae_coefficients})
    sae_hp = sae_hparams(training, **{coef_name: np.asarray(cfg.sae_coefficients, np.float32)})
    source = ArrayRows(acts)
    flat_val = jnp.asarray(val_acts.reshape(-1, mcfg.d_mlp))
    observe = firing_observer(training, source, flat_val[:: max(flat_val.shape[0] // cfg.firing_rows, 1)][: cfg.firing_rows],
                              dense_above=cfg.dense_above)
    sae_trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                               log_every=cfg.log_every, observe=observe)
    sae_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(cfg.seed + 2), s))(jnp.arange(sae_grid.size, dtype=jnp.uint32))
    saes = common.train(NAME, cfg, sae_grid, sae_hp, sae_keys, sae_trainer, out_dir, progress=progress,
                        execution=execution, tag="sae", n_steps=cfg.sae_steps, fingerprint=corpus_fingerprint)
    ev = batched_evaluate(training, saes.state, flat_val, sae_hp)
    ce_clean = val_losses[best_seed]
    ce_ablated = activations.loss_under_hooks(model, val, {HOOK: ZeroAblate()})
    records, trained = [], []
    encode = jax.jit(lambda m, x: m.encode(x))
    concept_labels = lm_common.validation_token_labels(lm, corpus)
    neuron_probes = lm_common.concept_probes(val_acts, concept_labels, cfg.probe_ks, width=training.d_sae)
    n_rows = flat_val.shape[0]
    for i in range(sae_grid.size):
        sae = SAE.from_sweep(training, saes.state, sae_hp, i).inference()  # acts on raw activations
        trained.append(sae)
        ce = activations.ce_loss_recovered(model, sae, HOOK, val, clean=ce_clean, ablated=ce_ablated)
        probes = lm_common.concept_probes(np.asarray(encode(sae, flat_val)).reshape(val_acts.shape[:2] + (-1,)), concept_labels,
                                cfg.probe_ks)
        records.append({
            "coords": sae_grid.coords(i), "l0": float(ev["l0"][i]), "fvu": float(ev["fvu"][i]),
            "dead_fraction": float(np.mean(ev["fired"][i] == 0)),
            "dense_fraction": float(np.mean(ev["fired"][i] > cfg.dense_above * n_rows)), "ce_with_sae": ce.spliced,
            "ce_loss_recovered": ce.recovered, "delta_loss": ce.spliced - ce_clean,
            "final_train_loss": float(np.nanmean(saes.losses[i, -5:])),
            "probing": probes["balanced_accuracy"],
        })
    best = int(np.argmax([r["ce_loss_recovered"] for r in records]))
    best_sae = trained[best]
    probing = lm_common.probing_summary(cfg.probe_ks, concept_labels, {"features": records[best]["probing"],
                                                             "neurons": neuron_probes["balanced_accuracy"]})

    # 4. feature browser
    f_val = np.asarray(encode(best_sae, flat_val)).reshape(val_acts.shape[:2] + (-1,))
    tokens = np.asarray(val)
    W_out, W_U = np.asarray(model.blocks[cfg.layer].mlp.W_out), np.asarray(model.W_U)
    ln_w, ln_scale = np.asarray(model.ln_final.w), float(np.median(activations.harvest(model, val, "ln_final.scale")))
    feature_logits = browser.direct_logit_effects(np.asarray(best_sae.decoder).T @ W_out, W_U, ln_w=ln_w, ln_scale=ln_scale)
    neuron_logits = browser.direct_logit_effects(W_out, W_U, ln_w=ln_w, ln_scale=ln_scale)
    density = np.mean(f_val > 0, axis=(0, 1))
    alive = np.flatnonzero(density > 0)
    prompt_ids = [np.asarray(lm.tokenizer.encode(text))[: mcfg.n_ctx] for text in BROWSER_PROMPTS]
    padded = np.zeros((len(prompt_ids), mcfg.n_ctx), tokens.dtype)  # causal: padding after a prompt changes nothing in it
    for i, ids in enumerate(prompt_ids):
        padded[i, : ids.size] = ids
    prompt_mlp = activations.harvest(model, padded, HOOK).reshape(-1, mcfg.d_mlp)
    prompt_f = np.asarray(encode(best_sae, jnp.asarray(prompt_mlp))).reshape(padded.shape + (-1,))
    prompts = [browser.describe_prompt(ids, prompt_f[i, : ids.size], name=text)
               for i, (ids, text) in enumerate(zip(prompt_ids, BROWSER_PROMPTS))]
    on_prompts = [u for u in dict.fromkeys(int(u) for p in prompts for u in p.top_units[:3]) if density[u] > 0]
    on_prompts = on_prompts[: cfg.browser_units]
    rest = np.setdiff1d(alive, on_prompts)
    rng = np.random.default_rng(cfg.seed)
    fill = rng.choice(rest, min(cfg.browser_units - len(on_prompts), rest.size), replace=False) if rest.size else rest
    shown = np.sort(np.concatenate([np.asarray(on_prompts, np.int64), fill.astype(np.int64)]))
    neurons = np.arange(min(cfg.browser_units, mcfg.d_mlp))
    feature_entries = browser.describe_units(f_val, tokens, feature_logits, shown)
    neuron_entries = browser.describe_units(val_acts, tokens, neuron_logits, neurons)
    feature_purity = browser.top_token_purity(f_val[:, :, alive], tokens) if alive.size else np.zeros(0)
    neuron_purity = browser.top_token_purity(val_acts, tokens)
    neuron_density = np.mean(val_acts > 0, axis=(0, 1))

    # 5. steering: the purest frequent feature, clamp values vmapped in one call
    candidates = alive[density[alive] > 1e-3] if alive.size else alive
    pick = int(candidates[np.argmax(browser.top_token_purity(f_val[:, :, candidates], tokens))]) if candidates.size else 0
    max_act = float(f_val[:, :, pick].max()) if f_val.size else 0.0
    values = np.asarray([m * max_act for m in cfg.steer_multiples], np.float32)
    prompt = jnp.asarray(lm.tokenizer.encode(cfg.steer_prompt))[None, :]
    steerable = steering.Steerable(model, best_sae, HOOK)
    probs = steering.next_token_sweep(steerable, cfg.steer_prompt, pick, values)  # (n_values, vocab), one call
    clean_probs = np.asarray(jax.nn.softmax(forward(model, prompt, cache_names=())[0][0, -1]))
    steer_records = []
    for m, p in zip(cfg.steer_multiples, probs):
        top = np.argsort(-p)[:5]
        kl = float(np.sum(p * (np.log(p + 1e-12) - np.log(clean_probs + 1e-12))))
        steer_records.append({"multiple_of_max": m, "value": m * max_act, "kl_from_clean": kl,
                         "top_next_tokens": [[lm.tokenizer.decode([int(t)]), float(p[t])] for t in top]})

    if is_primary():
        lm.save_tokenizer(save_transformer(out_dir.path("model"), model))
        save_sae(best_sae, out_dir.path("sae"), hook_name=HOOK, model_name=f"superpos-{NAME}")
        _figures(cfg, figures, lm, saes, records, density, neuron_density, feature_purity, neuron_purity, ce_clean, unigram)
        save(sae_plots.probing_accuracy(probing["concepts"], probing["ks"], {
            f"SAE features {sae_grid.coords(best)}": probing["features"], f"MLP neurons (block {cfg.layer})": probing["neurons"]},
            title=f"{NAME}: k-sparse probes of Python-token concepts, validation tokens"), figures / "probing.png")
        browser.write_browser(
            out_dir.path("browser"), f"{NAME}: SAE features vs MLP neurons",
            [browser.Section(f"SAE features of SAE {sae_grid.coords(best)} (the top ones on the prompts, then a random "
                             f"sample of live features)", "features", feature_entries, prompts=prompts),
             browser.Section(f"MLP neurons of block {cfg.layer} (the first ones)", "neurons", neuron_entries, kind="neuron")],
            tokenizer=lm.tokenizer,
            notes=(f"Model: {mcfg.n_layers} layer(s), d_model={mcfg.d_model}, {mcfg.d_mlp} {mcfg.act} neurons, "
                   f"vocabulary {mcfg.d_vocab}; validation loss {ce_clean:.3f} nats (unigram {unigram:.3f}). Contexts from "
                   f"{tokens.shape[0]} validation windows; highlight = activation / the unit's max; logits = direct path "
                   f"through the final LayerNorm at its median scale {ln_scale:.3g}, centred over the vocabulary."),
        )
    return {
        "corpus": {"root": str(corpus.root), "include": list(corpus.include), "files": corpus.n_files,
                   "skipped_binary": corpus.n_binary, "skipped_over_budget": corpus.n_over_budget,
                   "train_bytes": int(corpus.train.size), "val_bytes": int(corpus.val.size),
                   "fingerprint": corpus.fingerprint},
        "lm": {"val_loss_per_seed": val_losses, "best_seed": best_seed, "val_loss": ce_clean,
               "unigram_baseline": unigram, "below_unigram_by": unigram - ce_clean,
               "zero_ablated_mlp_loss": ce_ablated, "train_seconds": lm.seconds, "source": lm.source,
               "final_train_loss": None if lm.losses is None else float(np.nanmean(lm.losses[best_seed, -5:]))},
        "sae": {"kind": cfg.sae_kind, "d_sae": training.d_sae, "instances": records, "best": best,
                "best_ce_loss_recovered": records[best]["ce_loss_recovered"], "train_seconds": saes.seconds,
                "firing_over_training": lm_common.firing_trace(saes, cfg.log_every)},
        "probing": probing,
        "browser": {"features_alive": int(alive.size), "features_total": training.d_sae,
                    "feature_purity_mean": float(np.mean(feature_purity)) if feature_purity.size else 0.0,
                    "neuron_purity_mean": float(np.mean(neuron_purity)),
                    "neurons_alive": int(np.sum(neuron_density > 0)), "features_shown": shown.tolist(),
                    "prompt_features": on_prompts},
        "steering": {"feature": pick, "max_activation": max_act, "prompt": cfg.steer_prompt, "values": steer_records},
    }


def _figures(cfg, figures, lm, saes, records, density, neuron_density, feature_purity, neuron_purity, ce_clean, unigram):
    if lm.losses is not None:
        save(plots.loss_curves(lm.losses, [f"LM seed {s}" for s in range(lm.losses.shape[0])], log_every=cfg.log_every),
             figures / "lm_loss.png")
    save(plots.loss_curves(saes.losses, [str(r["coords"]) for r in records], log_every=cfg.log_every), figures / "sae_loss.png")
    save(sae_plots.density_histograms({"SAE features": density, "MLP neurons": neuron_density}), figures / "density.png")
    save(sae_plots.pareto(np.asarray([r["l0"] for r in records]), np.asarray([r["fvu"] for r in records]),
                          groups=[cfg.sae_kind] * len(records)), figures / "pareto.png")
    save(sae_plots.delta_loss_vs_l0([r["l0"] for r in records], [r["delta_loss"] for r in records],
                                    groups=[cfg.sae_kind] * len(records)), figures / "delta_loss.png")
    fig = new_figure((6.0, 3.8))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 21)
    for values, label in ((neuron_purity, "MLP neurons"), (feature_purity, "SAE features")):
        if values.size:
            ax.hist(values, bins=bins, alpha=0.6, weights=np.full(values.size, 1.0 / values.size),
                    label=f"{label} (n={values.size}, mean {np.mean(values):.2f})")
    ax.set_xlabel("top-token purity: share of the top-50 activations on the unit's commonest byte")
    ax.set_ylabel("fraction of units")
    ax.legend(loc="upper left")
    ax.set_title("monosemantic features vs polysemantic neurons")
    fig.tight_layout()
    save(fig, figures / "purity.png")
