"""SAEs on every layer of a tiny language model, its activations computed inside the training loop.

Pipeline (each training stage one compiled, checkpointed, resumable sweep):
1. the language model, trained as in `monosemanticity` (byte tokens on the local corpus,
   default the Python standard library's source; seeds vmapped, the lowest validation loss
   kept), here with several layers;
2. for each dictionary size d_sae = expansion × width (a static shape: one sweep per size),
   SAEs on the hook point `hook` of EVERY layer at once: instances = layer × k (or λ) × seed,
   fed by `lm.feed.LMActivations` — the frozen model runs on fresh corpus windows once per
   step inside the compiled scan, every instance draws its batch from its own layer's rows;
   no activation is harvested, stored or copied to the host during training;
3. per layer and size, on validation windows: L0, FVU, dead fraction (latents that never fire
   on them) and the CE loss recovered with the SAE's reconstruction spliced in at the hook,
   against zero ablation, (CE_zero − CE_spliced) / (CE_zero − CE_clean), and against mean
   ablation (the hook's mean activation over the validation rows). The first `skip_positions`
   positions of every window are neither trained on nor spliced/ablated (module docstring of
   `lm.feed`). Also the Δ loss = CE_spliced − CE_clean (nats per token) and the dense fraction
   (latents firing on more than `dense_above` of the validation rows); during training the dead
   and dense fractions on `firing_rows` validation rows of the instance's layer are logged every
   `log_every` steps (metrics.jsonl, per chunk; `sae.training.firing_observer`; not with the
   April-2024 recipe, whose input scale is a per-instance statistic of the fed source);
4. concept probing as in `monosemanticity`: Python-token concepts of the validation tokens
   (`lm.labels`) probed with k-sparse probes (`sae.probing`) on every SAE's latents, on the MLP
   neurons of the same block and on the hook's own units (its basis directions), same k.

Figures: the LM's loss, every SAE's loss, FVU / CE recovered against layer per size, Δ loss
against L0, and per layer the probing accuracy of the best SAE's features vs neurons vs units.
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
from superpos_jax.config import (NonNegativeInt, PositiveFloat, PositiveInt, each, fail, in_range, library_errors,
                                 non_empty, one_of, positive)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution, device_memory_limit, host_ram_bytes
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm.corpus import check_corpus, unigram_cross_entropy
from superpos_jax.lm.feed import LMActivations
from superpos_jax.lm.interventions import MeanAblate, SpliceSAE, position_mask
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.plots.base import new_figure, save
from superpos_jax.rundir import RunDir
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.sae.model import SAE
from superpos_jax.plots import sae as sae_plots
from superpos_jax.sae.training import SAETraining, batched_evaluate, firing_observer, recipe_optim, sae_hparams, sae_task

NAME = "sae-lm"
DESCRIPTION = "SAEs of several sizes on every layer of a tiny LM at once, activations computed in the training loop"
HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp.pre", "mlp.post")
_MLP_HOOKS = ("resid_mid", "mlp_out", "mlp.pre", "mlp.post")


@dataclass(frozen=True)
class Config(common.RunConfig):
    """`n_steps` and `chunk_steps` are the language model's; each SAE sweep trains `sae_steps`
    in chunks of `chunk_steps`. `model` is the language model (byte tokens: d_vocab 256)."""

    STEP_FIELDS = (*common.RunConfig.STEP_FIELDS, "sae_steps")

    corpus_dir: str | None = None
    """A directory of text files to train on instead of the standard library's source."""
    pretrained: str | None = None
    """A Hugging Face GPT-2-family checkpoint directory (config.json, model.safetensors and, for
    a vocabulary other than bytes, tokenizer.json): the model is loaded, not trained (`model`,
    `n_seeds`, `n_steps`, `lm_*` unused), and the corpus is tokenized with its tokenizer."""
    corpus_glob: Annotated[tuple[str, ...] | None, non_empty] = None
    """Glob patterns of the corpus files (default: `*.py` for the stdlib, every file of `corpus_dir`)."""
    max_bytes: PositiveInt = 4_000_000
    model: TransformerConfig = TransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=256, act="relu")
    n_seeds: PositiveInt = 1
    """Seeds of the language model (the lowest validation loss is kept)."""
    n_steps: PositiveInt = 2_000
    lm_batch: PositiveInt = 32
    lm_learning_rate: PositiveFloat = 3e-3
    hook: Annotated[str, one_of(*HOOKS)] = "resid_post"
    """The hook point of every block the SAEs read (`blocks.{layer}.{hook}`)."""
    skip_positions: NonNegativeInt = 1
    """Leading positions of every window left out of training and evaluation."""
    sae_kind: Annotated[str, one_of(*sae_lib.hook_names())] = "topk"
    sae_expansions: Annotated[tuple[int, ...], non_empty, each(positive)] = (4, 8)
    """Dictionary sizes as multiples of the hook's width (one sweep each)."""
    sae_coefficients: Annotated[tuple[float, ...], non_empty, each(positive)] = (16.0, 32.0)
    """k (TopK family) or λ of each SAE."""
    sae_seeds: PositiveInt = 1
    sae_steps: PositiveInt = 2_000
    sae_batch: PositiveInt = 512
    sae_learning_rate: PositiveFloat = 1e-3
    mix: PositiveInt = 4
    """The pool of activations holds at least mix × sae_batch rows (lm.feed)."""
    buffer_steps: PositiveInt = 16
    """Steps one pool serves (lm.feed): 1 = a fresh pool every step; R > 1 = one pool of at
    least R × sae_batch rows per R steps, each row trained on once (R× less forward work)."""
    stats_samples: PositiveInt = 4096
    """Activations for the geometric median / input scale at SAE init."""
    eval_windows: PositiveInt = 256
    firing_rows: PositiveInt = 2_048
    """Validation rows per layer on which the dead / dense fractions are logged during training."""
    dense_above: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.1
    """A latent firing on more than this fraction of the rows counts as dense."""
    probe_ks: Annotated[tuple[int, ...], non_empty, each(positive)] = (1, 2, 5, 10, 20)
    """The k of the k-sparse concept probes (units per probe)."""
    chunk_steps: PositiveInt = 1_000
    log_every: PositiveInt = 50

    def check(self) -> None:
        """Byte tokens; an MLP when the hook needs one; integer k within the smallest dictionary
        for a TopK SAE; skip_positions below the context; a readable corpus; the SAEs'
        `SAETraining` accepts the values."""
        super().check()
        lm_common.check_pretrained(self)
        model = lm_common.model_config(self)
        if self.pretrained is None and model.d_vocab != 256:
            fail("model.d_vocab", model.d_vocab, "256 (the corpus is byte tokens; use `pretrained` for other vocabularies)")
        if model.attn_only and self.hook in _MLP_HOOKS:
            fail("hook", self.hook, f"one of {[h for h in HOOKS if h not in _MLP_HOOKS]} for an attention-only model")
        smallest = width(self) * min(self.sae_expansions)
        if sae_lib.get(self.sae_kind).swept == "k" and any(c != int(c) or c > smallest for c in self.sae_coefficients):
            fail("sae_coefficients", self.sae_coefficients, f"integers k <= the smallest dictionary ({smallest})")
        if self.skip_positions >= model.n_ctx - 1:
            fail("skip_positions", self.skip_positions, f"less than model.n_ctx - 1 = {model.n_ctx - 1}")
        row_bytes = 4 * self.sae_batch * width(self) * model.n_layers  # one step's rows of every layer
        device_limit = device_memory_limit(jax.local_devices()[0])
        limit = (host_ram_bytes() if device_limit is None else device_limit) // 4
        if self.buffer_steps * row_bytes > limit:
            fail("buffer_steps", self.buffer_steps,
                 f"at most {max(limit // row_bytes, 1)}: the pool of buffer_steps x sae_batch rows of {model.n_layers} "
                 f"layers x {width(self)} floats must fit in a quarter of the device's memory ({limit / 2**30:.2f} GiB)")
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            fail("corpus_dir", self.corpus_dir, "an existing directory of text files")
        with library_errors("corpus_dir" if self.corpus_dir is not None else "corpus_glob"):
            check_corpus(self.corpus_dir, include=self.corpus_glob, max_bytes=self.max_bytes)
        with library_errors("sae_kind"):
            for e in self.sae_expansions:
                sae_training(self, e)


QUICK = {
    "max_bytes": 300_000, "model.d_model": 32, "model.n_heads": 2, "model.d_head": 16, "model.d_mlp": 128,
    "model.n_ctx": 32, "n_steps": 200, "sae_steps": 200, "sae_batch": 256, "sae_coefficients": (8.0,),
    "stats_samples": 1024, "eval_windows": 32, "chunk_steps": 200, "firing_rows": 512, "probe_ks": (1, 5),
}


def width(cfg: Config) -> int:
    """The width of the hook point (d_mlp for mlp.pre/post, else d_model)."""
    model = lm_common.model_config(cfg)
    return model.d_mlp if cfg.hook in ("mlp.pre", "mlp.post") else model.d_model


def sae_training(cfg: Config, expansion: int) -> SAETraining:
    """The SAEs of one size (the recipe of `monosemanticity`: 2024 where the kind has it)."""
    d = width(cfg)
    return SAETraining(cfg.sae_kind, d, d * expansion, batch_size=cfg.sae_batch, dead_steps=max(cfg.sae_steps // 4, 1),
                       recipe="2024" if "2024" in sae_lib.get(cfg.sae_kind).recipes else "2023",
                       l1_warmup_steps=cfg.sae_steps // 20, stats_samples=cfg.stats_samples)


def hook_names(cfg: Config) -> tuple[str, ...]:
    """`blocks.{layer}.{hook}` of every layer."""
    return tuple(f"blocks.{i}.{cfg.hook}" for i in range(lm_common.model_config(cfg).n_layers))


load_config_corpus = lm_common.load_config_corpus


build = lm_common.build


def _take(tree: Any, index: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[index]), tree)


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    corpus = load_config_corpus(cfg)
    fingerprint = {"corpus": corpus.fingerprint}

    # 1. the language model (trained, or the pretrained checkpoint)
    lm = lm_common.language_model(NAME, cfg, corpus, out_dir, progress=progress, execution=execution,
                                  fingerprint=fingerprint)
    model, val, val_losses, best_seed = lm.model, jnp.asarray(lm.val), lm.val_losses, lm.best_seed
    n_ctx, skip = lm.cfg.n_ctx, cfg.skip_positions
    clean = val_losses[best_seed]

    # 2. SAEs on every layer, one sweep per size, activations computed in the loop
    hooks = hook_names(cfg)
    mask = position_mask(n_ctx, range(skip, n_ctx))
    layer_records, sweeps, records = [], [], []
    val_source = LMActivations(model, lm.train_tokens, hooks, batch_size=cfg.sae_batch, skip=skip, mix=cfg.mix)
    val_acts = jax.jit(val_source.activations)(val_source.shared, val)  # (layer, rows, d), on the device
    n_val, n_rows = val.shape[0], val_acts.shape[1]
    firing_x = val_acts[:, :: max(n_rows // cfg.firing_rows, 1)][:, : cfg.firing_rows]
    concept_labels = {name: v[:, skip:] for name, v in lm_common.validation_token_labels(lm, corpus).items()}
    baselines: list[dict[str, Any]] = []
    probe_width = width(cfg) * max(cfg.sae_expansions)  # every unit set padded to one width: one compiled probe
    for layer, hook in enumerate(hooks):
        units = {"hook units": np.asarray(val_acts[layer]).reshape(n_val, -1, val_acts.shape[-1])}
        if not lm.cfg.attn_only:
            units["MLP neurons"] = activations.harvest(model, val, f"blocks.{layer}.mlp.post")[:, skip:]
        baselines.append({name: lm_common.concept_probes(u, concept_labels, cfg.probe_ks, width=probe_width)["balanced_accuracy"]
                          for name, u in units.items()})
    for layer, hook in enumerate(hooks):
        mean = jnp.mean(val_acts[layer], axis=0)
        layer_records.append({
            "layer": layer, "hook": hook,
            # zero ablation as the mean ablation of 0: one program per hook for both
            "zero_ablated": activations.loss_under_hooks(model, val, {hook: MeanAblate(jnp.zeros_like(mean), mask)}),
            "mean_ablated": activations.loss_under_hooks(model, val, {hook: MeanAblate(mean, mask)}),
        })
    for expansion in cfg.sae_expansions:
        training = sae_training(cfg, expansion)
        coef = training.arch.swept
        grid = Grid({"layer": range(len(hooks)), coef: cfg.sae_coefficients, "seed": range(cfg.sae_seeds)})
        source = LMActivations(model, lm.train_tokens, hooks, batch_size=cfg.sae_batch, skip=skip, mix=cfg.mix,
                               buffer_steps=cfg.buffer_steps, seed=cfg.seed + 3)
        hp = sae_hparams(training, **{coef: grid.column(coef).astype(np.float32)},
                         hook=source.hook_hparam(grid.column("layer").tolist()))
        observe = None if training.april_2024 else firing_observer(training, source, firing_x, dense_above=cfg.dense_above,
                                                                    by="hook")
        sae_trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                                   log_every=cfg.log_every, observe=observe)
        saes = common.train(NAME, cfg, grid, hp, common.seed_keys(cfg.seed + 2, grid), sae_trainer, out_dir,
                            progress=progress, execution=execution, tag=f"sae_x{expansion}", n_steps=cfg.sae_steps,
                            fingerprint=fingerprint)
        sweeps.append((expansion, grid, saes))
        encode = jax.jit(lambda m, x: m.encode(x))
        layers = grid.column("layer")
        for layer, hook in enumerate(hooks):
            idx = np.flatnonzero(layers == layer)
            ev = batched_evaluate(training, _take(saes.state, idx), val_acts[layer], _take(hp, idx))
            base = layer_records[layer]
            for j, i in enumerate(idx):
                sae = SAE.from_sweep(training, saes.state, hp, int(i)).inference()
                spliced = activations.loss_under_hooks(model, val, {hook: SpliceSAE(sae, mask)})
                latents = np.asarray(encode(sae, val_acts[layer])).reshape(n_val, -1, training.d_sae)
                records.append({
                    "coords": {"d_sae": training.d_sae, **grid.coords(int(i))}, "expansion": expansion, "hook": hook,
                    "l0": float(ev["l0"][j]), "fvu": float(ev["fvu"][j]),
                    "dead_fraction": float(np.mean(np.asarray(ev["fired"][j]) == 0)),
                    "dense_fraction": float(np.mean(np.asarray(ev["fired"][j]) > cfg.dense_above * n_rows)),
                    "ce_with_sae": spliced, "delta_loss": spliced - clean,
                    "ce_loss_recovered": _recovered(base["zero_ablated"], spliced, clean),
                    "ce_loss_recovered_vs_mean": _recovered(base["mean_ablated"], spliced, clean),
                    "final_train_loss": float(np.nanmean(saes.losses[i, -5:])),
                    "probing": lm_common.concept_probes(latents, concept_labels, cfg.probe_ks, width=probe_width)["balanced_accuracy"],
                })

    probing = {"ks": list(cfg.probe_ks), "layers": []}
    for layer, hook in enumerate(hooks):
        mine = [r for r in records if r["coords"]["layer"] == layer]
        best = max(mine, key=lambda r: r["ce_loss_recovered"])
        table = lm_common.probing_summary(cfg.probe_ks, concept_labels, {
            f"SAE features (d_sae {best['coords']['d_sae']}, best CE recovered)": best["probing"], **baselines[layer]})
        probing["layers"].append({"layer": layer, "hook": hook, "best_sae": best["coords"], **table})
    if is_primary():
        _figures(cfg, out_dir.figures, lm, sweeps, records)
        for entry in probing["layers"]:
            names = [n for n in entry if n.startswith("SAE features") or n in ("hook units", "MLP neurons")]
            save(sae_plots.probing_accuracy(entry["concepts"], entry["ks"], {n: entry[n] for n in names},
                                            title=f"{NAME}: k-sparse probes, {entry['hook']}"),
                 out_dir.figures / f"probing_layer{entry['layer']}.png")
    return {
        "corpus": {"root": str(corpus.root), "files": corpus.n_files, "train_bytes": int(corpus.train.size),
                   "val_bytes": int(corpus.val.size), "fingerprint": corpus.fingerprint},
        "lm": {"val_loss_per_seed": val_losses, "best_seed": best_seed, "val_loss": clean,
               "unigram_baseline": unigram_cross_entropy(lm.train_tokens, lm.val_tokens, lm.cfg.d_vocab),
               "train_seconds": lm.seconds, "source": lm.source},
        "layers": layer_records,
        "sae": {
            "kind": cfg.sae_kind, "hook": cfg.hook, "skip_positions": skip, "instances": records,
            "feed": {"n_contexts": source.n_contexts, "positions": source.positions, "pool": source.pool,
                     "buffer_steps": source.feed_every, "rows_per_step": source.rows_per_step},
            "sweeps": [{"expansion": e, "d_sae": e * width(cfg), "n_instances": g.size, "train_seconds": s.seconds,
                        "activations_per_second": g.size * cfg.sae_batch * s.steps_per_second,
                        "firing_over_training": lm_common.firing_trace(s, cfg.log_every)}
                       for e, g, s in sweeps],
        },
        "probing": probing,
    }


def _recovered(ablated: float, spliced: float, clean: float) -> float:
    return float((ablated - spliced) / max(ablated - clean, 1e-9))


def _figures(cfg: Config, figures: Path, lm: Any, sweeps: list, records: list[dict[str, Any]]) -> None:
    if lm.losses is not None:
        save(plots.loss_curves(lm.losses, [f"LM seed {s}" for s in range(lm.losses.shape[0])], log_every=cfg.log_every),
             figures / "lm_loss.png")
    losses = np.concatenate([s.losses for _, _, s in sweeps])
    labels = [str({"x": e, **g.coords(i)}) for e, g, _ in sweeps for i in range(g.size)]
    save(plots.loss_curves(losses, labels, log_every=cfg.log_every), figures / "sae_loss.png")
    fig = new_figure((10.0, 3.8))
    axes = fig.subplots(1, 2)
    coef = sae_lib.get(cfg.sae_kind).swept
    layers = np.arange(lm.cfg.n_layers)
    for expansion in cfg.sae_expansions:
        for c in cfg.sae_coefficients:
            mine = [r for r in records if r["expansion"] == expansion and r["coords"][coef] == c]
            for ax, field in zip(axes, ("fvu", "ce_loss_recovered"), strict=True):
                values = [np.mean([r[field] for r in mine if r["coords"]["layer"] == layer]) for layer in layers]
                ax.plot(layers, values, marker="o", label=f"d_sae = {expansion}×{width(cfg)}, {coef} = {c:g}")
    for ax, title in zip(axes, ("FVU (lower is better)", "CE loss recovered vs zero ablation"), strict=True):
        ax.set_xlabel(f"layer ({cfg.hook})")
        ax.set_xticks(layers)
        ax.set_title(title)
    axes[0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    save(fig, figures / "layers.png")
    save(sae_plots.delta_loss_vs_l0([r["l0"] for r in records], [r["delta_loss"] for r in records],
                                    groups=[f"layer {r['coords']['layer']}, d_sae {r['coords']['d_sae']}" for r in records]),
         figures / "delta_loss.png")
