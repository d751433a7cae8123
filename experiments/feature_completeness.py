"""Feature completeness: how large a dictionary must be before some feature represents a concept,
against how often the concept occurs (Scaling Monosemanticity, 2024, reports that rarer concepts
need larger dictionaries).

Pipeline (each training stage one compiled, checkpointed, resumable sweep):
1. the language model of `monosemanticity` (`lm_common`: byte tokens on the Python standard
   library's source by default, seeds vmapped, the lowest validation loss kept);
2. its MLP activations `blocks.{layer}.mlp.hook_post` harvested once on random training windows;
3. TopK SAEs of every size in `dictionary_sizes` on them (same k, same steps): one program padded to
   the largest size with a per-instance `n_latents` mask (`dictionary_sweep="masked"`), or one
   program per size (`"per_size"`; "auto": per size on CPU, where the padded encoder costs
   n_sizes × the largest instead of the sum of the sizes, masked on an accelerator);
4. concepts with known frequencies, labelled per byte of the validation split: the Python token
   classes and indentation depths of `lm.labels` (from `tokenize`), each byte value
   ("byte 'x'") and each hard keyword separately ("kw def": the LAST byte of that keyword, where
   the model has read the whole word); only concepts with at least `min_count` positives in
   both probe halves are kept. The concept's frequency is its share of the probe tokens.
5. the criterion (the same for every size): a concept is *represented* in a dictionary when one
   latent, thresholded, classifies it with F1 ≥ `f1_threshold` on held-out tokens. The latent and
   its threshold (any value it takes; "fires above t") are chosen on the first half of the
   validation split ("fit"), the F1 is measured on the second half ("test"), so a larger
   dictionary gains nothing from having more latents to choose among except real features.
   F1 rather than accuracy, because the concepts are rare (accuracy would reward "never").
   `size_needed` = the smallest size whose score reaches the threshold (null: none does). The
   scores of different sizes come from different SAEs, so "resolved at N, lost at 2N" can happen;
   the summary counts such concepts.

Result: log10 N_needed = a + e · log10 frequency fitted to the resolved concepts (`exponent` e;
Scaling Monosemanticity's reading is e < 0), and Spearman's ρ between frequency and size needed
over all concepts, the unresolved ones ranked above every size (censored), overall and per group.

The default is sized for a 2-core CPU: a smaller LM than `monosemanticity`'s (d_model 64, 256
MLP neurons, 2,000 steps) and dictionaries of 1/8 to 8 times its width; monosemanticity's model is
`--set model.d_model=128 model.d_head=32 model.d_mlp=512 n_steps=3000`.
"""

from __future__ import annotations

import keyword
import time
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from . import common, lm_common
from superpos_jax import plots
from superpos_jax.config import (NonNegativeInt, PositiveFloat, PositiveInt, Rule, fail, in_range, library_errors,
                                 non_empty)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm import labels as concept_labels
from superpos_jax.lm.corpus import check_corpus, sample_windows, unigram_cross_entropy
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.plots import completeness as completeness_plots
from superpos_jax.plots.base import save
from superpos_jax.rundir import RunDir
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task

NAME = "feature-completeness"
DESCRIPTION = "concept frequency vs the dictionary size whose SAE first has a feature for it (F1 of one latent)"
CRITERION = ("a single SAE latent thresholded at t (latent and t chosen on the fit half of the validation split) "
             "classifies the concept with F1 >= f1_threshold on the test half")


@dataclass(frozen=True)
class Config(common.RunConfig):
    """`n_steps` and `chunk_steps` are the language model's; the SAE sweep trains `sae_steps`
    in chunks of `chunk_steps`. `model` is the language model (byte tokens: d_vocab 256)."""

    STEP_FIELDS = (*common.RunConfig.STEP_FIELDS, "sae_steps")
    pretrained: ClassVar[None] = None
    """Byte tokens only: the concepts are labelled per corpus byte (for `lm_common`)."""

    corpus_dir: str | None = None
    """A directory of Python files to train on instead of the standard library's source."""
    corpus_glob: Annotated[tuple[str, ...] | None, non_empty] = None
    """Glob patterns of the corpus files (default: `*.py` for the stdlib, every file of `corpus_dir`)."""
    max_bytes: PositiveInt = 4_000_000
    model: TransformerConfig = TransformerConfig(
        n_layers=1, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=64, d_vocab=256, act="relu")
    layer: NonNegativeInt = 0
    """The block whose MLP activations the SAEs read."""
    n_seeds: PositiveInt = 1
    n_steps: PositiveInt = 2_000
    lm_batch: PositiveInt = 32
    lm_learning_rate: PositiveFloat = 3e-3
    eval_windows: PositiveInt = 256
    """Validation windows of the language model's loss."""
    harvest_windows: PositiveInt = 1_024
    """Training windows whose MLP activations the SAEs train on."""
    dictionary_sizes: Annotated[tuple[int, ...], Rule(
        "at least 3 increasing positive integers", lambda v: len(v) >= 3 and v[0] >= 1
        and all(a < b for a, b in zip(v, v[1:])))] = (32, 64, 128, 256, 512, 1024, 2048)
    dictionary_sweep: Literal["auto", "masked", "per_size"] = "auto"
    k: PositiveInt = 16
    """Latents per token of every TopK SAE."""
    sae_steps: PositiveInt = 1_000
    sae_batch: PositiveInt = 512
    sae_learning_rate: PositiveFloat = 1e-3
    probe_windows: PositiveInt = 1_024
    """Validation windows in each probe half (fit, test), at most what the half holds."""
    skip_positions: NonNegativeInt = 4
    """Leading positions of every probe window left out (too little context to know a concept)."""
    min_count: PositiveInt = 20
    """A concept needs at least this many positive tokens in each probe half."""
    f1_threshold: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.5
    chunk_steps: PositiveInt = 1_000
    log_every: PositiveInt = 50

    def check(self) -> None:
        """An MLP in the block read; k within the smallest dictionary; skip_positions below the
        context; a readable corpus whose validation split holds two probe halves; the SAEs'
        `SAETraining` accepts the values."""
        super().check()
        if self.model.d_vocab != 256:
            fail("model.d_vocab", self.model.d_vocab, "256 (concepts are labelled per byte: byte tokens)")
        if self.model.attn_only:
            fail("model.attn_only", self.model.attn_only, f"false (the SAEs read {hook(self)})")
        if self.layer >= self.model.n_layers:
            fail("layer", self.layer, f"a block of the model, 0..{self.model.n_layers - 1}")
        if self.k > min(self.dictionary_sizes):
            fail("k", self.k, f"at most the smallest dictionary size {min(self.dictionary_sizes)}")
        if self.skip_positions >= self.model.n_ctx:
            fail("skip_positions", self.skip_positions, f"less than model.n_ctx = {self.model.n_ctx}")
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            fail("corpus_dir", self.corpus_dir, "an existing directory of text files")
        with library_errors("corpus_dir" if self.corpus_dir is not None else "corpus_glob"):
            check_corpus(self.corpus_dir, include=self.corpus_glob, max_bytes=self.max_bytes)
        with library_errors("dictionary_sizes"):
            for n in self.dictionary_sizes:
                sae_training(self, n)


QUICK = {
    "max_bytes": 400_000, "model.d_model": 32, "model.n_heads": 2, "model.d_head": 16, "model.d_mlp": 128,
    "model.n_ctx": 32, "n_steps": 500, "eval_windows": 64, "harvest_windows": 512,
    "dictionary_sizes": (32, 64, 128, 256, 512), "k": 8, "sae_steps": 500, "sae_batch": 256,
    "probe_windows": 256, "min_count": 10, "chunk_steps": 500,
}


def hook(cfg: Config) -> str:
    """The hook point the SAEs read: the MLP activations of block `cfg.layer`."""
    return f"blocks.{cfg.layer}.mlp.hook_post"


def sae_training(cfg: Config, d_sae: int) -> SAETraining:
    """The TopK SAE of one size (sparse kernels: `k_max` = k)."""
    return SAETraining("topk", cfg.model.d_mlp, d_sae, batch_size=cfg.sae_batch, dead_steps=max(cfg.sae_steps // 4, 1),
                       k_max=cfg.k)


def sweep_mode(cfg: Config, backend: str | None = None, out_dir: RunDir | None = None) -> str:
    """How the sizes are trained: `cfg.dictionary_sweep`, "auto" resolved to "per_size" on CPU and
    "masked" elsewhere, or, for a resumed run directory holding checkpoints of one mode, to that mode."""
    return common.dictionary_sweep_mode(cfg.dictionary_sweep, cfg.dictionary_sizes, backend=backend, out_dir=out_dir, tag_prefix="sae_")


load_config_corpus = lm_common.load_config_corpus


build = lm_common.build


# --- concepts -------------------------------------------------------------------------------------


def _byte_name(b: int) -> str:
    return f"byte {chr(b)!r}" if b < 128 else f"byte 0x{b:02x}"


def keyword_ends(data: np.ndarray, keyword_mask: np.ndarray) -> np.ndarray:
    """Per byte, the index in `keyword.kwlist` of the keyword whose LAST byte it is, else -1.

    Args:
        data: (n,) uint8 corpus bytes.
        keyword_mask: (n,) bool, the bytes of keyword tokens (`lm.labels` "keyword"): runs of
            True are single keywords (two names never touch).
    """
    out = np.full(data.shape, -1, np.int32)
    m = np.concatenate([[False], np.asarray(keyword_mask, bool), [False]]).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(m) == 1), np.flatnonzero(np.diff(m) == -1)
    index = {w: i for i, w in enumerate(keyword.kwlist)}
    raw = np.asarray(data, np.uint8).tobytes()
    for a, b in zip(starts, ends):
        i = index.get(raw[a:b].decode("ascii", errors="replace"), -1)
        out[b - 1] = i
    return out


@dataclass(frozen=True)
class Concepts:
    """Boolean concepts of the probe tokens.

    Attributes:
        names: (concept,) names; groups: (concept,) "syntax" (`lm.labels`), "byte" or "keyword".
        fit, test: bool (n_fit, concept), (n_test, concept) labels of the two probe halves.
        frequency: (concept,) share of all probe tokens (both halves) carrying the concept.
    """

    names: tuple[str, ...]
    groups: tuple[str, ...]
    fit: np.ndarray
    test: np.ndarray
    frequency: np.ndarray


def concepts_of(data: np.ndarray, labels: dict[str, np.ndarray], fit_offsets: np.ndarray, test_offsets: np.ndarray,
                min_count: int) -> Concepts:
    """Every concept of the probe tokens at byte offsets `fit_offsets`, `test_offsets` of `data`
    (uint8 (n,); `labels` = `lm.labels.byte_labels(data)`; only valid bytes should be given) with at
    least `min_count` positives in each half."""
    kw = keyword_ends(data, labels["keyword"])
    columns: list[tuple[str, str, np.ndarray]] = [(c, "syntax", labels[c]) for c in concept_labels.CONCEPTS]
    columns += [(_byte_name(b), "byte", data == b) for b in range(256)]
    columns += [(f"kw {w}", "keyword", kw == i) for i, w in enumerate(keyword.kwlist)]
    names, groups, fit, test = [], [], [], []
    for name, group, column in columns:
        f, t = column[fit_offsets], column[test_offsets]
        if f.sum() >= min_count and t.sum() >= min_count:
            names.append(name), groups.append(group), fit.append(f), test.append(t)
    fit_m = np.stack(fit, axis=1) if fit else np.zeros((fit_offsets.size, 0), bool)
    test_m = np.stack(test, axis=1) if test else np.zeros((test_offsets.size, 0), bool)
    frequency = (fit_m.sum(0) + test_m.sum(0)) / float(fit_offsets.size + test_offsets.size)
    return Concepts(tuple(names), tuple(groups), fit_m, test_m, frequency)


# --- the criterion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseCodes:
    """The nonzero latents of a TopK SAE on `n_rows` tokens: entry e is latent `latent[e]` firing at
    `value[e]` > 0 on row `row[e]` (flat arrays (nnz,))."""

    row: np.ndarray
    latent: np.ndarray
    value: np.ndarray
    n_rows: int


@partial(jax.jit, static_argnums=2)
def _top_k(sae: SAE, x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    return jax.lax.top_k(sae.encode(x), k)


def sparse_codes(sae: SAE, x: np.ndarray, k: int, *, batch: int = 4096) -> SparseCodes:
    """The top-k latents of every row of raw activations `x` (n, d_in), keeping those > 0."""
    rows, lats, vals = [], [], []
    n = x.shape[0]
    for s in range(0, n, batch):
        xb = x[s: s + batch]
        if xb.shape[0] < batch and n > batch:  # one compiled shape per SAE: pad the last batch
            xb = np.concatenate([xb, np.zeros((batch - xb.shape[0], x.shape[1]), x.dtype)])
        v, i = _top_k(sae, jnp.asarray(xb), k)
        v, i = np.asarray(v)[: min(batch, n - s)], np.asarray(i)[: min(batch, n - s)]
        v, i = np.asarray(v), np.asarray(i)
        keep = v > 0
        rows.append(np.nonzero(keep)[0] + s), lats.append(i[keep]), vals.append(v[keep])
    return SparseCodes(np.concatenate(rows), np.concatenate(lats), np.concatenate(vals), x.shape[0])


def best_latents(codes: SparseCodes, y: np.ndarray, *, chunk: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every concept, the single-latent threshold classifier "latent j ≥ t" with the highest F1.

    Exact over every latent and every threshold a latent's values allow: within each latent the
    entries sorted by value descending, predicting the first r of them positive gives
    F1 = 2·tp_r / (r + n_pos); thresholds sit only at the last of a run of equal values.

    Args:
        codes: the latents of the rows of `y`.
        y: bool (n_rows, concept) labels.

    Returns:
        latent (concept,) int, threshold (concept,) float (the classifier is value ≥ threshold) and
        its F1 (concept,); latent -1, threshold inf and F1 0 where no latent catches a positive.
    """
    n_concepts = y.shape[1]
    latent = np.full(n_concepts, -1, np.int64)
    threshold = np.full(n_concepts, np.inf)
    f1 = np.zeros(n_concepts)
    if codes.row.size == 0 or n_concepts == 0:
        return latent, threshold, f1
    order = np.lexsort((-codes.value, codes.latent))
    lat, val, row = codes.latent[order], codes.value[order], codes.row[order]
    starts = np.flatnonzero(np.r_[True, lat[1:] != lat[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, lat.size]))
    rank = np.arange(lat.size) - group_start + 1
    boundary = np.r_[(lat[1:] != lat[:-1]) | (val[1:] != val[:-1]), True]
    n_pos = y.sum(axis=0)
    for c0 in range(0, n_concepts, chunk):
        hit = y[row, c0: c0 + chunk].astype(np.int32)
        cum = np.cumsum(hit, axis=0)
        before = np.where((group_start > 0)[:, None], cum[np.maximum(group_start - 1, 0)], 0)
        score = (2.0 * (cum - before) / (rank[:, None] + n_pos[None, c0: c0 + chunk])).astype(np.float32)
        score[~boundary] = -1.0
        best = np.argmax(score, axis=0)
        got = score[best, np.arange(best.size)]
        ok = got > 0
        latent[c0: c0 + chunk] = np.where(ok, lat[best], -1)
        threshold[c0: c0 + chunk] = np.where(ok, val[best], np.inf)
        f1[c0: c0 + chunk] = np.where(ok, 2.0 * (cum - before)[best, np.arange(best.size)]
                                      / (rank[best] + n_pos[c0: c0 + chunk]), 0.0)  # float64 F1 of the pick
    return latent, threshold, f1


def classifier_f1(codes: SparseCodes, y: np.ndarray, latent: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """F1 on the rows of `codes` of each concept's classifier "latent[c] ≥ threshold[c]" (c: a
    column of the bool labels `y` (n_rows, concept)); 0 where the latent is -1."""
    order = np.argsort(codes.latent, kind="stable")
    lat, row, val = codes.latent[order], codes.row[order], codes.value[order]
    out = np.zeros(y.shape[1])
    for c in range(y.shape[1]):
        if latent[c] < 0:
            continue
        a, b = np.searchsorted(lat, latent[c]), np.searchsorted(lat, latent[c], side="right")
        predicted = row[a:b][val[a:b] >= threshold[c]]
        tp = int(y[predicted, c].sum())
        out[c] = 2.0 * tp / (predicted.size + int(y[:, c].sum()))
    return out


def size_needed(scores: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """Per concept (rows of `scores` (concept, size)), the smallest size whose score ≥ threshold; NaN if none."""
    hit = scores >= threshold
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), np.asarray(sizes, np.float64)[first], np.nan)


def size_needed_stable(scores: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """Per concept, the smallest size from which on EVERY larger size also scores ≥ threshold; NaN if
    the largest does not."""
    hit = scores >= threshold
    tail = np.flip(np.logical_and.accumulate(np.flip(hit, axis=1), axis=1), axis=1)
    return np.where(tail.any(axis=1), np.asarray(sizes, np.float64)[np.argmax(tail, axis=1)], np.nan)


def fit_exponent(frequency: np.ndarray, needed: np.ndarray) -> dict[str, Any] | None:
    """Least squares log10 N = intercept + exponent · log10 frequency over the resolved concepts
    (finite `needed`); None with fewer than 3 of them or one size only."""
    ok = np.isfinite(needed)
    if ok.sum() < 3 or np.unique(needed[ok]).size < 2:
        return None
    x, y = np.log10(frequency[ok]), np.log10(needed[ok])
    exponent, intercept = np.polyfit(x, y, 1)
    r = float(np.corrcoef(x, y)[0, 1])
    return {"intercept": float(intercept), "exponent": float(exponent), "r2": r * r, "n_points": int(ok.sum())}


def censored_spearman(frequency: np.ndarray, needed: np.ndarray, largest: int) -> float | None:
    """Spearman's ρ between frequency and size needed, unresolved concepts (NaN) ranked above
    every size; None with fewer than 3 concepts or a constant size."""
    y = np.where(np.isfinite(needed), needed, 2.0 * largest)
    if frequency.size < 3 or np.unique(y).size < 2:
        return None
    return float(stats.spearmanr(frequency, y).statistic)


# --- the run --------------------------------------------------------------------------------------


def probe_offsets(n_val: int, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the fit windows (first half of the validation split) and of the test
    windows (second half): evenly spaced, non-overlapping, at most `probe_windows` each."""
    n_ctx, half = cfg.model.n_ctx, n_val // 2
    n = min(cfg.probe_windows, half // n_ctx)
    if n < 1:
        fail("max_bytes", cfg.max_bytes, f"a corpus whose validation split ({n_val} bytes) holds two probe halves "
             f"of at least one {n_ctx}-byte window")
    stride = half // n
    starts = np.arange(n, dtype=np.int64) * stride
    return starts, starts + half


def _probe_rows(model: Any, data: np.ndarray, starts: np.ndarray, cfg: Config, valid: np.ndarray):
    """MLP activations (rows, d_mlp) and byte offsets (rows,) of the probe windows at `starts`,
    positions ≥ skip_positions of valid bytes only."""
    n_ctx = cfg.model.n_ctx
    index = starts[:, None] + np.arange(n_ctx)[None, :]
    acts = activations.harvest(model, data[index].astype(np.int32), hook(cfg))[:, cfg.skip_positions:]
    offsets = index[:, cfg.skip_positions:].reshape(-1)
    keep = valid[offsets]
    return acts.reshape(-1, acts.shape[-1])[keep], offsets[keep]


def _train_dictionaries(cfg: Config, acts: np.ndarray, out_dir: RunDir, mode: str, fingerprint: dict, *,
                        progress: bool, execution: Execution) -> tuple[list[SAE], list[dict[str, Any]], dict[str, Any]]:
    """Every size's TopK SAE (inference form) and its record (L0, FVU, dead fraction on a held-out
    slice of `acts`, final loss), trained per size or in one masked program."""
    x_eval = jnp.asarray(acts[-min(8192, acts.shape[0] // 8):])
    rows = ArrayRows(acts[: acts.shape[0] - x_eval.shape[0]])
    sizes = list(cfg.dictionary_sizes)
    saes, records, losses, seconds = [], [], [], 0.0
    programs = [(sizes, "sae_masked")] if mode == "masked" else [([n], f"sae_N{n}") for n in sizes]
    for group, tag in programs:
        training = sae_training(cfg, max(group))
        grid = Grid({"d_sae": group})
        hp = sae_hparams(training, k=np.full(grid.size, cfg.k, np.float32),
                         **({"n_latents": np.asarray(group, np.float32)} if mode == "masked" else {}))
        trainer = make_trainer(sae_task(training, rows), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                               log_every=cfg.log_every)
        keys = jax.vmap(jax.random.key)(jnp.full(grid.size, cfg.seed + 2, jnp.uint32))  # one init and data stream
        result = common.train(NAME, cfg, grid, hp, keys, trainer, out_dir, progress=progress, execution=execution,
                              tag=tag, n_steps=cfg.sae_steps, fingerprint=fingerprint)
        ev = batched_evaluate(training, result.state, x_eval, hp)
        final, _ = common.final_losses(result)
        for i, n in enumerate(group):
            saes.append(SAE.from_sweep(training, result.state, hp, i).inference())
            records.append({"d_sae": n, "l0": float(ev["l0"][i]), "fvu": float(ev["fvu"][i]),
                            "dead_fraction": float(ev["dead_fraction"][i]), "final_train_loss": float(final[i])})
        losses.append(np.asarray(result.losses))
        seconds += result.seconds
    return saes, records, {"losses": np.concatenate(losses), "seconds": seconds, "programs": len(programs)}


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    corpus = load_config_corpus(cfg)
    fingerprint = {"corpus": corpus.fingerprint}

    # 1. the language model
    lm = lm_common.language_model(NAME, cfg, corpus, out_dir, progress=progress, execution=execution,
                                  fingerprint=fingerprint)
    model, n_ctx, d_mlp = lm.model, cfg.model.n_ctx, cfg.model.d_mlp

    # 2. training activations
    windows = sample_windows(lm.train_tokens, key=jax.random.key(cfg.seed + 1), batch_size=cfg.harvest_windows,
                             seq_len=n_ctx)
    acts = activations.harvest(model, windows, hook(cfg)).reshape(-1, d_mlp)

    # 3. the dictionaries
    mode = sweep_mode(cfg, out_dir=out_dir)
    saes, records, trained = _train_dictionaries(cfg, acts, out_dir, mode, fingerprint, progress=progress,
                                                 execution=execution)
    del acts

    # 4. concepts on the probe tokens of the validation split
    t0 = time.perf_counter()
    data = np.asarray(corpus.val, np.uint8)
    fit_starts, test_starts = probe_offsets(data.size, cfg)
    labels = concept_labels.byte_labels(data)
    fit_x, fit_off = _probe_rows(model, data, fit_starts, cfg, labels["valid"])
    test_x, test_off = _probe_rows(model, data, test_starts, cfg, labels["valid"])
    concepts = concepts_of(data, labels, fit_off, test_off, cfg.min_count)

    # 5. the criterion, per size
    sizes = np.asarray(cfg.dictionary_sizes)
    scores = np.zeros((len(concepts.names), sizes.size))
    fit_scores = np.zeros_like(scores)
    chosen = np.zeros(scores.shape, np.int64)
    for s, sae in enumerate(saes):
        latent, threshold, fit_scores[:, s] = best_latents(sparse_codes(sae, fit_x, cfg.k), concepts.fit)
        scores[:, s] = classifier_f1(sparse_codes(sae, test_x, cfg.k), concepts.test, latent, threshold)
        chosen[:, s] = latent
    needed = size_needed(scores, sizes, cfg.f1_threshold)
    stable = size_needed_stable(scores, sizes, cfg.f1_threshold)
    lost = np.isfinite(needed) & np.any((scores < cfg.f1_threshold) & (sizes[None, :] > needed[:, None]), axis=1)
    fit = fit_exponent(concepts.frequency, needed)
    rho = censored_spearman(concepts.frequency, needed, int(sizes[-1]))
    rho_stable = censored_spearman(concepts.frequency, stable, int(sizes[-1]))
    fit_stable = fit_exponent(concepts.frequency, stable)
    resolved = np.isfinite(needed)
    rho_resolved = censored_spearman(concepts.frequency[resolved], needed[resolved], int(sizes[-1]))
    groups = np.asarray(concepts.groups)
    by_group = {g: {"n_concepts": int(np.sum(groups == g)), "n_resolved": int(np.sum(resolved & (groups == g))),
                    "spearman_censored": censored_spearman(concepts.frequency[groups == g], needed[groups == g],
                                                           int(sizes[-1]))}
                for g in dict.fromkeys(concepts.groups)}
    analysis_seconds = time.perf_counter() - t0

    direction = ("no rank relation" if rho is None or rho == 0 else "rarer concepts need larger dictionaries"
                 if rho < 0 else "rarer concepts do NOT need larger dictionaries here")
    finding = (f"{int(resolved.sum())} of {len(concepts.names)} concepts are resolved by some dictionary of "
               f"{sizes[0]}..{sizes[-1]} latents (one latent with held-out F1 >= {cfg.f1_threshold:g}); "
               f"Spearman rho(frequency, size needed, unresolved ranked last) = {_fmt(rho)}: {direction}"
               + (f"; fitted N_needed ∝ frequency^{fit['exponent']:.2f} (R² {fit['r2']:.2f}, "
                  f"{fit['n_points']} resolved concepts)" if fit is not None else "")
               + f"; {int(lost.sum())} resolved concepts drop below the threshold at some larger size "
               f"(requiring every larger size too: rho = {_fmt(rho_stable)}).")
    per_concept = [{
        "name": n, "group": g, "frequency": float(f), "size_needed": None if not np.isfinite(nd) else int(nd),
        "size_needed_stable": None if not np.isfinite(stable[c]) else int(stable[c]),
        "test_f1_per_size": scores[c].round(4).tolist(), "fit_f1_per_size": fit_scores[c].round(4).tolist(),
        "latent_per_size": chosen[c].tolist(), "lost_at_larger_size": bool(lost[c]),
        "n_fit_positives": int(concepts.fit[:, c].sum()), "n_test_positives": int(concepts.test[:, c].sum()),
    } for c, (n, g, f, nd) in enumerate(zip(concepts.names, concepts.groups, concepts.frequency, needed))]

    if is_primary():
        _figures(cfg, out_dir.figures, lm, trained, concepts, scores, needed, fit, rho)
    return {
        "corpus": {"root": str(corpus.root), "files": corpus.n_files, "train_bytes": int(corpus.train.size),
                   "val_bytes": int(corpus.val.size), "fingerprint": corpus.fingerprint},
        "lm": {"val_loss_per_seed": lm.val_losses, "best_seed": lm.best_seed, "val_loss": lm.val_losses[lm.best_seed],
               "unigram_baseline": unigram_cross_entropy(lm.train_tokens, lm.val_tokens, cfg.model.d_vocab),
               "train_seconds": lm.seconds},
        "criterion": CRITERION,
        "f1_threshold": cfg.f1_threshold,
        "dictionary_sizes": sizes.tolist(),
        "dictionary_sweep": mode,
        "sae": {"kind": "topk", "k": cfg.k, "hook": hook(cfg), "per_size": records, "programs": trained["programs"],
                "train_seconds": trained["seconds"]},
        "probe": {"fit_tokens": int(fit_off.size), "test_tokens": int(test_off.size), "min_count": cfg.min_count,
                  "skip_positions": cfg.skip_positions, "analysis_seconds": analysis_seconds},
        "concepts": per_concept,
        "n_concepts": len(concepts.names),
        "n_resolved": int(resolved.sum()),
        "n_lost_at_larger_size": int(lost.sum()),
        "resolved_fraction_per_size": np.mean(scores >= cfg.f1_threshold, axis=0).round(4).tolist(),
        "fit": fit,
        "exponent": None if fit is None else fit["exponent"],
        "spearman_censored": rho,
        "spearman_resolved": rho_resolved,
        "spearman_censored_stable": rho_stable,
        "fit_stable": fit_stable,
        "by_group": by_group,
        "finding": finding,
        "n_instances": len(saes),
        "train_seconds": lm.seconds + trained["seconds"],
    }


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _figures(cfg: Config, figures: Path, lm: Any, trained: dict, concepts: Concepts, scores: np.ndarray,
             needed: np.ndarray, fit: dict | None, rho: float | None) -> None:
    if lm.losses is not None:
        save(plots.loss_curves(lm.losses, [f"LM seed {s}" for s in range(lm.losses.shape[0])], log_every=cfg.log_every),
             figures / "lm_loss.png")
    save(plots.loss_curves(trained["losses"], [f"d_sae={n}" for n in cfg.dictionary_sizes], log_every=cfg.log_every),
         figures / "sae_loss.png")
    names = list(concepts.names)
    keywords = [n for n in names if n.startswith("kw ")]
    shown = [n for i, n in enumerate(names) if concepts.groups[i] == "syntax" and np.isfinite(needed[i])]
    shown += keywords[:: max(1, len(keywords) // 12)]  # unresolved syntax concepts share one band: not named
    title = (f"TopK SAEs (k={cfg.k}) on {hook(cfg)}: resolved at N = one latent with held-out F1 ≥ "
             f"{cfg.f1_threshold:g}\nSpearman ρ(frequency, size needed; unresolved ranked last) = {_fmt(rho)}")
    save(completeness_plots.size_needed_figure(
        concepts.frequency, needed, concepts.groups, cfg.dictionary_sizes, names=names, label_names=shown,
        fit=None if fit is None else (fit["intercept"], fit["exponent"]), title=title), figures / "completeness.png")
    save(completeness_plots.scores_figure(scores, concepts.frequency, cfg.dictionary_sizes,
                                          threshold=cfg.f1_threshold), figures / "scores.png")
