"""Feature splitting (Bricken et al., 2023): SAEs of growing dictionary size on the same
activations, and what becomes of each feature of the smallest one in the larger ones.

Pipeline (each training stage one compiled, checkpointed, resumable sweep):
1. the language model of `monosemanticity` (one layer, ReLU MLP, byte tokens on the local
   corpus, default the Python standard library's source), trained here or `pretrained`;
2. its MLP activations `blocks.{layer}.mlp.hook_post` harvested on training windows;
3. TopK SAEs (fixed k, the sparse kernels `k_max = k`) of every size in `dictionary_sizes`
   on those rows, with the same key and data order for every size: in ONE program padded to
   the largest size and masked (`n_latents`, see `superpos_jax.sae.training`) or one program
   per size (`dictionary_sweep`; "auto": masked on an accelerator, per size on CPU, where a
   masked step computes every instance at the largest size — see `sae_scaling`);
4. on held-out (validation) tokens, for feature a of the smallest dictionary and latent b of
   a dictionary of size N: the decoder cosine cos(d_a, d_b) and the co-activation
   P(a fires | b fires) = #(tokens where both fire) / #(tokens where b fires). The children of
   a in size N are the latents b with cos ≥ `cosine_threshold`, P(a | b) ≥
   `coactivation_threshold` and at least `min_firings` held-out firings; a's split count in
   size N is the number of its children. Per size: the mean split count over the live
   features of the smallest dictionary (those with ≥ `min_firings` firings), the fractions with
   ≥ 1 and ≥ 2 children and the distribution. In the smallest dictionary itself each live
   feature is its own child (cos = P = 1), the reference of 1.

Figures: the split trees of a few features of the smallest dictionary (`tree_features`, the
ones with the most children in the largest dictionary): their children size after size, each
child drawn under the child of the previous size nearest in decoder direction, every node
labelled with its latent, its cosine to the root, P(root | node) and its top held-out contexts;
the split counts against dictionary size; and the criterion (each latent's best-matching small
feature: cosine against co-activation, with the thresholds).

The default (sizes 512 … 16384 on 512 MLP neurons, expansions 1 … 32) is sized for a shared
2-core CPU: the SAEs see few tokens (`sae_steps` × `sae_batch`), so the large dictionaries keep
many latents that never fire on the held-out tokens; they have no children and are reported as
`alive_fraction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from . import common, lm_common
from superpos_jax import plots
from superpos_jax.config import (NonNegativeInt, PositiveFloat, PositiveInt, Rule, fail, in_range, library_errors,
                                 non_empty)
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm.browser import token_text
from superpos_jax.lm.corpus import check_corpus, sample_windows
from superpos_jax.lm.tokenizers import ByteTokenizer
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.plots.base import save
from superpos_jax.plots.splitting import SplitNode, criterion_figure, split_counts_figure, split_tree_figure
from superpos_jax.rundir import RunDir
from superpos_jax.sae.metrics import cosine_matrix
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

NAME = "feature-splitting"
DESCRIPTION = "SAEs of sizes 512…16384 on one LM's MLP: each small feature's children in the larger ones, split trees"

__all__ = ["Config", "QUICK", "SplitStats", "children_mask", "conditional_firing", "firing_matrix", "run",
           "split_stats", "sweep_mode"]


@dataclass(frozen=True)
class Config(common.RunConfig):
    """`n_steps` and `chunk_steps` are the language model's; every SAE trains `sae_steps` in
    chunks of `chunk_steps`. `model` is the language model (byte tokens: d_vocab 256)."""

    STEP_FIELDS = (*common.RunConfig.STEP_FIELDS, "sae_steps")

    corpus_dir: str | None = None
    """A directory of text files to train on instead of the standard library's source."""
    pretrained: str | None = None
    """A Hugging Face GPT-2-family checkpoint directory: the model is loaded, not trained
    (`model`, `n_seeds`, `n_steps`, `lm_*` unused), the corpus tokenized with its tokenizer."""
    corpus_glob: Annotated[tuple[str, ...] | None, non_empty] = None
    """Glob patterns of the corpus files (default: `*.py` for the stdlib, every file of `corpus_dir`)."""
    max_bytes: PositiveInt = 2_000_000
    model: TransformerConfig = TransformerConfig(
        n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=64, d_vocab=256, act="relu")
    layer: NonNegativeInt = 0
    """The block whose MLP activations the SAEs read."""
    n_seeds: PositiveInt = 1
    n_steps: PositiveInt = 2_000
    lm_batch: PositiveInt = 32
    lm_learning_rate: PositiveFloat = 3e-3
    harvest_windows: PositiveInt = 1_024
    """Training windows whose MLP activations (harvest_windows × n_ctx rows) the SAEs train on."""
    eval_windows: PositiveInt = 512
    """Validation windows: the LM's loss and every held-out statistic (cosines aside)."""
    dictionary_sizes: Annotated[tuple[int, ...], Rule(
        "at least 2 increasing positive integers",
        lambda v: len(v) >= 2 and v[0] >= 1 and all(a < b for a, b in zip(v, v[1:])))] = (
        512, 1024, 2048, 4096, 8192, 16384)
    k: PositiveInt = 16
    """Latents kept per token by every TopK SAE."""
    sae_steps: PositiveInt = 500
    sae_batch: PositiveInt = 256
    sae_learning_rate: PositiveFloat = 1e-3
    dead_steps: PositiveInt = 150
    dictionary_sweep: Literal["auto", "masked", "per_size"] = "auto"
    cosine_threshold: Annotated[float, in_range(-1.0, 1.0)] = 0.25
    """A child's decoder direction has at least this cosine with its parent's: well above the
    cosines of pairs that never fire together (their 99.9th percentile, `cosine_null_q999` in the
    summary, is 0.13-0.15 in the default's 512 dimensions; it scales as 1/sqrt(d_mlp), so a
    smaller model needs a higher threshold, e.g. 0.4 at 128 dimensions, as in QUICK)."""
    coactivation_threshold: Annotated[float, in_range(0.0, 1.0)] = 0.5
    """A child fires with its parent at least this often: P(parent fires | child fires)."""
    min_firings: PositiveInt = 5
    """Held-out firings a latent needs to count (as a live small feature, or as a child)."""
    tree_features: PositiveInt = 3
    """Features of the smallest dictionary drawn as split trees (the most split ones)."""
    tree_nodes: PositiveInt = 6
    """Children drawn per size in a tree (the ones nearest the root; the rest are counted)."""
    chunk_steps: PositiveInt = 500
    log_every: PositiveInt = 50

    def check(self) -> None:
        """Byte tokens and an MLP at `layer`; k within the smallest dictionary; a readable
        corpus; every size's `SAETraining` accepts the values."""
        super().check()
        lm_common.check_pretrained(self)
        model = lm_common.model_config(self)
        if self.pretrained is None and model.d_vocab != 256:
            fail("model.d_vocab", model.d_vocab, "256 (the corpus is byte tokens; use `pretrained` for other vocabularies)")
        if model.attn_only:
            fail("model.attn_only", model.attn_only, f"false (the SAEs read {hook(self)})")
        if self.layer >= model.n_layers:
            fail("layer", self.layer, f"a block of the model, 0..{model.n_layers - 1}")
        if self.k > self.dictionary_sizes[0]:
            fail("k", self.k, f"at most the smallest dictionary size {self.dictionary_sizes[0]}")
        if self.corpus_dir is not None and not Path(self.corpus_dir).is_dir():
            fail("corpus_dir", self.corpus_dir, "an existing directory of text files")
        with library_errors("corpus_dir" if self.corpus_dir is not None else "corpus_glob"):
            check_corpus(self.corpus_dir, include=self.corpus_glob, max_bytes=self.max_bytes)
        with library_errors("dictionary_sizes"):
            for d_sae in self.dictionary_sizes:
                sae_training(self, d_sae)


QUICK = {
    "max_bytes": 400_000, "model.d_model": 32, "model.n_heads": 2, "model.d_head": 16, "model.d_mlp": 128,
    "model.n_ctx": 32, "n_steps": 400, "harvest_windows": 512, "eval_windows": 256,
    "dictionary_sizes": (128, 256, 512, 1024), "k": 8, "sae_steps": 400, "dead_steps": 100, "chunk_steps": 400,
    "cosine_threshold": 0.4,
}


build = lm_common.build
"""The contract's `build`: the language model's sweep (seeds vmapped)."""


def hook(cfg: Config) -> str:
    """The hook point the SAEs read: the MLP activations of block `cfg.layer`."""
    return f"blocks.{cfg.layer}.mlp.hook_post"


def sae_training(cfg: Config, d_sae: int) -> SAETraining:
    """The TopK SAE of one dictionary size (sparse kernels for k ≤ `cfg.k`)."""
    return SAETraining("topk", lm_common.model_config(cfg).d_mlp, d_sae, batch_size=cfg.sae_batch,
                       dead_steps=cfg.dead_steps, k_max=cfg.k)


def sweep_mode(cfg: Config, backend: str | None = None, out_dir: RunDir | None = None) -> str:
    """`cfg.dictionary_sweep`, "auto" resolved to "masked" on an accelerator and "per_size" on
    CPU (`backend`: default `jax.default_backend()`), or, for a run directory that already holds
    checkpoints of one mode (a resumed run), to that mode."""
    return common.dictionary_sweep_mode(cfg.dictionary_sweep, cfg.dictionary_sizes, backend=backend, out_dir=out_dir)


# --------------------------------------------------------------------------- the analysis


def firing_matrix(codes: sp.spmatrix | npt.ArrayLike) -> sp.csc_matrix:
    """Which latent fires on which token: codes (tokens, latents), sparse or dense, as a
    0/1 float64 CSC matrix (a latent fires where its code is > 0)."""
    m = sp.csc_matrix(codes, dtype=np.float64) if sp.issparse(codes) else sp.csc_matrix(np.asarray(codes) > 0,
                                                                                         dtype=np.float64)
    m = m.copy()
    m.data = (m.data > 0).astype(np.float64)
    m.eliminate_zeros()
    return m


def conditional_firing(
    fired_a: sp.spmatrix | npt.ArrayLike, fired_b: sp.spmatrix | npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-activation of two dictionaries' latents over the same tokens.

    Args:
        fired_a: (tokens, n_a) codes of dictionary A (> 0 = fires), sparse or dense.
        fired_b: (tokens, n_b) codes of dictionary B on the same tokens.

    Returns:
        (p, count_a, count_b): p (n_a, n_b) float64 = P(a fires | b fires) (0 where b never
        fires); count_a (n_a,) and count_b (n_b,) the tokens on which each latent fires.
    """
    a, b = firing_matrix(fired_a), firing_matrix(fired_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"both dictionaries must be read on the same tokens, got {a.shape[0]} and {b.shape[0]}")
    joint = np.asarray((a.T @ b).todense(), np.float64)
    count_a, count_b = np.asarray(a.sum(axis=0)).ravel(), np.asarray(b.sum(axis=0)).ravel()
    return joint / np.maximum(count_b, 1.0)[None, :], count_a, count_b


def children_mask(
    cosine: npt.ArrayLike,
    p_parent_given_child: npt.ArrayLike,
    child_firings: npt.ArrayLike,
    *,
    cosine_threshold: float,
    coactivation_threshold: float,
    min_firings: int,
) -> np.ndarray:
    """Which latents b of a larger dictionary are children of feature a of a smaller one:
    cos(d_a, d_b) ≥ cosine_threshold, P(a | b) ≥ coactivation_threshold and b fires at least
    `min_firings` times. cosine and p_parent_given_child are (n_a, n_b), child_firings (n_b,);
    returns bool (n_a, n_b)."""
    cosine, p = np.asarray(cosine), np.asarray(p_parent_given_child)
    live = np.asarray(child_firings) >= min_firings
    return (cosine >= cosine_threshold) & (p >= coactivation_threshold) & live[None, :]


class SplitStats(NamedTuple):
    """The split counts of a dictionary's live features in a larger one.

    Attributes: mean, median, max; frac_ge1 / frac_ge2 (share with at least 1 / 2 children);
    histogram (int, counts of features with 0, 1, ..., max children)."""

    mean: float
    median: float
    max: int
    frac_ge1: float
    frac_ge2: float
    histogram: list[int]


def split_stats(counts: npt.ArrayLike) -> SplitStats:
    """`SplitStats` of split counts (n,) (one per live feature; n ≥ 1)."""
    c = np.asarray(counts, np.int64).ravel()
    if c.size == 0:
        raise ValueError("split_stats needs at least one feature")
    return SplitStats(float(c.mean()), float(np.median(c)), int(c.max()), float(np.mean(c >= 1)),
                      float(np.mean(c >= 2)), np.bincount(c).tolist())


@partial(jax.jit, static_argnums=2)
def _encode_top(sae: SAE, x: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    f = sae.encode(x)
    values, idx = jax.lax.top_k(f, k)
    err = jnp.sum(jnp.square(sae.decode(f) - x))
    return values, idx, err


def sparse_codes(sae: SAE, x: np.ndarray, k: int, *, chunk: int = 2048) -> tuple[sp.csc_matrix, float]:
    """The codes of a k-sparse SAE on rows x (tokens, d_in) as a sparse (tokens, d_sae) CSC
    matrix (each row's k largest latents, firing ones only), and the FVU of its reconstruction."""
    n = x.shape[0]
    vals, idxs, sq = [], [], 0.0
    for s in range(0, n, chunk):
        v, i, e = _encode_top(sae, jnp.asarray(x[s:s + chunk], jnp.float32), k)
        vals.append(np.asarray(v))
        idxs.append(np.asarray(i))
        sq += float(e)
    values, idx = np.concatenate(vals), np.concatenate(idxs)
    rows = np.repeat(np.arange(n), k)
    keep = values.ravel() > 0
    codes = sp.csc_matrix((values.ravel()[keep].astype(np.float64), (rows[keep], idx.ravel()[keep])),
                          shape=(n, sae.d_sae))
    x64 = np.asarray(x, np.float64)
    total = float(np.sum(np.square(x64 - x64.mean(axis=0))))
    return codes, sq / max(total, 1e-12)


def _contexts(column: np.ndarray, tokens: np.ndarray, tokenizer: Any, *, n: int = 2, before: int = 7) -> list[str]:
    """The `n` strongest held-out contexts of one latent (activations (tokens,) over the
    flattened windows): `before` tokens, then the token it fires on in ⟦ ⟧, as display text
    with spaces shown as "·"."""
    n_pos = tokens.shape[1]
    order = np.argsort(-column, kind="stable")[:n]
    out = []
    for flat in order[column[order] > 0]:
        w, p = divmod(int(flat), n_pos)
        pre = "".join(token_text(tokenizer, t) for t in tokens[w, max(0, p - before):p])
        out.append(f"{pre}⟦{token_text(tokenizer, tokens[w, p])}⟧".replace(" ", "·"))
    return out


# --------------------------------------------------------------------------- the run


def _train(cfg: Config, source: ArrayRows, out_dir: RunDir, mode: str, *, progress: bool,
           execution: Execution, fingerprint: dict[str, Any]) -> tuple[list[SAE], list[dict[str, Any]], float]:
    """Every size trained; returns the SAEs (trimmed to their sizes), per-size loss records and
    the total training seconds."""
    saes, records, seconds = [], [], 0.0
    if mode == "masked":
        training = sae_training(cfg, max(cfg.dictionary_sizes))
        grid = Grid({"d_sae": cfg.dictionary_sizes, "seed": range(1)})
        hp = sae_hparams(training, k=np.full(grid.size, cfg.k, np.float32),
                         n_latents=np.asarray(grid.column("d_sae"), np.float32))
        trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                               log_every=cfg.log_every)
        result = common.train(NAME, cfg, grid, hp, common.seed_keys(cfg.seed + 2, grid), trainer, out_dir,
                              progress=progress, execution=execution, tag="masked", n_steps=cfg.sae_steps,
                              fingerprint=fingerprint)
        for i in range(grid.size):
            saes.append(SAE.from_sweep(training, result.state, hp, i).inference())
            records.append({"losses": result.losses[i], "seconds": result.seconds / grid.size,
                            "non_finite": i in result.non_finite})
        return saes, records, result.seconds
    for d_sae in cfg.dictionary_sizes:
        training = sae_training(cfg, d_sae)
        grid = Grid({"seed": range(1)})
        hp = sae_hparams(training, k=np.full(1, cfg.k, np.float32))
        trainer = make_trainer(sae_task(training, source), recipe_optim(training, cfg.sae_steps, cfg.sae_learning_rate),
                               log_every=cfg.log_every)
        result = common.train(NAME, cfg, grid, hp, common.seed_keys(cfg.seed + 2, grid), trainer, out_dir,
                              progress=progress, execution=execution, tag=f"N{d_sae}", n_steps=cfg.sae_steps,
                              fingerprint=fingerprint)
        saes.append(SAE.from_sweep(training, result.state, hp, 0).inference())
        records.append({"losses": result.losses[0], "seconds": result.seconds, "non_finite": 0 in result.non_finite})
        seconds += result.seconds
    return saes, records, seconds


def _tree(root: int, masks: list[np.ndarray], cosines: list[np.ndarray], p_given: list[np.ndarray],
          decoders: list[np.ndarray], columns: Any, tokens: np.ndarray, tokenizer: Any, sizes: tuple[int, ...],
          max_nodes: int) -> tuple[list[SplitNode], list[dict[str, Any]]]:
    """The split tree of small feature `root`: its children size after size (at most
    `max_nodes` per size, nearest the root first), each under the node of the nearest earlier
    size with the highest decoder cosine. Returns the drawn nodes and their summary records."""
    nodes: list[SplitNode] = []
    records: list[dict[str, Any]] = []
    unit = [d / np.maximum(np.linalg.norm(d, axis=0, keepdims=True), 1e-12) for d in decoders]

    def add(level: int, latent: int, parent: int, cos: float, p: float, hidden: int) -> None:
        ctx = _contexts(columns(level, latent), tokens, tokenizer)
        label = f"#{latent}  cos {cos:.2f}  P {p:.2f}\n" + "\n".join(ctx)
        nodes.append(SplitNode(level=level, parent=parent, label=label, cosine=cos, hidden=hidden))
        records.append({"size": sizes[level], "latent": latent, "parent": parent, "cosine": cos,
                        "p_root_given_node": p, "contexts": ctx})

    add(0, root, -1, 1.0, 1.0, 0)
    previous = [(0, root)]  # (node index, latent) of the last non-empty level
    prev_level = 0
    for level in range(1, len(sizes)):
        kids = np.flatnonzero(masks[level][root])
        kids = kids[np.argsort(-cosines[level][root, kids], kind="stable")]
        shown, hidden = kids[:max_nodes], max(0, kids.size - max_nodes)
        if shown.size == 0:
            continue
        parents = np.asarray([lat for _, lat in previous])
        sim = unit[level][:, shown].T @ unit[prev_level][:, parents]  # (shown, parents)
        current = []
        for j, b in enumerate(shown.tolist()):
            node = len(nodes)
            add(level, b, previous[int(np.argmax(sim[j]))][0], float(cosines[level][root, b]),
                float(p_given[level][root, b]), hidden if j == shown.size - 1 else 0)
            current.append((node, b))
        previous, prev_level = current, level
    return nodes, records


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the LM and every dictionary size, find each small feature's children, draw the
    trees and counts on process 0; return the summary."""
    corpus = lm_common.load_config_corpus(cfg)
    fingerprint = {"corpus": corpus.fingerprint}
    lm = lm_common.language_model(NAME, cfg, corpus, out_dir, progress=progress, execution=execution,
                                  fingerprint=fingerprint)
    model, mcfg = lm.model, lm.cfg
    HOOK = hook(cfg)
    windows = sample_windows(lm.train_tokens, key=jax.random.key(cfg.seed + 1), batch_size=cfg.harvest_windows,
                             seq_len=mcfg.n_ctx)
    source = ArrayRows(activations.harvest(model, windows, HOOK).reshape(-1, mcfg.d_mlp))
    val_tokens = np.asarray(lm.val)
    x_val = activations.harvest(model, val_tokens, HOOK).reshape(-1, mcfg.d_mlp)

    mode = sweep_mode(cfg, out_dir=out_dir)
    saes, train_records, train_seconds = _train(cfg, source, out_dir, mode, progress=progress, execution=execution,
                                                fingerprint=fingerprint)
    sizes = cfg.dictionary_sizes
    codes, fvus = zip(*(sparse_codes(sae, x_val, cfg.k) for sae in saes))
    decoders = [np.asarray(sae.decoder, np.float64) for sae in saes]
    small = decoders[0].T  # (n_0, d_in)
    masks, cosines, p_given, per_size, best = [], [], [], [], []
    count_small = None
    for s, (d_sae, c) in enumerate(zip(sizes, codes)):
        cos = np.asarray(cosine_matrix(decoders[s], small), np.float64)  # (n_0, d_sae)
        p, count_small, count_b = conditional_firing(codes[0], c)
        mask = children_mask(cos, p, count_b, cosine_threshold=cfg.cosine_threshold,
                             coactivation_threshold=cfg.coactivation_threshold, min_firings=cfg.min_firings)
        masks.append(mask)
        cosines.append(cos)
        p_given.append(p)
        live_b = count_b >= cfg.min_firings
        nearest = np.argmax(cos, axis=0)  # each latent's best-matching small feature
        best.append((cos[nearest, np.arange(d_sae)][live_b], p[nearest, np.arange(d_sae)][live_b]))
        never = cos[:, live_b][(p[:, live_b] == 0) & (count_small >= cfg.min_firings)[:, None]]
        per_size.append({"d_sae": d_sae, "live": live_b, "mask": mask, "fvu": fvus[s],
                         "l0": float(c.nnz / x_val.shape[0]),
                         "null": float(np.quantile(never, 0.999)) if never.size else None})
    live_small = count_small >= cfg.min_firings
    if not np.any(live_small):
        raise RuntimeError(f"no feature of the smallest dictionary fires {cfg.min_firings} times on the held-out tokens")
    split = [split_stats(r["mask"][live_small].sum(axis=1)) for r in per_size]
    largest = masks[-1][live_small].sum(axis=1)
    live_ids = np.flatnonzero(live_small)
    order = np.lexsort((-count_small[live_ids], -largest))
    roots = live_ids[order[:cfg.tree_features]].tolist()

    tokenizer = lm.tokenizer if cfg.pretrained is not None else ByteTokenizer()

    def column(level: int, latent: int) -> np.ndarray:
        return codes[level][:, latent].toarray().ravel()

    trees = [_tree(r, masks, cosines, p_given, decoders, column, val_tokens, tokenizer, sizes, cfg.tree_nodes)
             for r in roots]
    size_records = []
    for r, st, t in zip(per_size, split, train_records):
        child_of_any = np.any(r["mask"][live_small], axis=0)
        size_records.append({
            "d_sae": r["d_sae"], "fvu": r["fvu"], "l0": r["l0"], "alive_fraction": float(np.mean(r["live"])),
            "cosine_null_q999": r["null"],
            "mean_children": st.mean, "median_children": st.median, "max_children": st.max,
            "frac_ge1_children": st.frac_ge1, "frac_ge2_children": st.frac_ge2, "children_histogram": st.histogram,
            "children_total": int(np.sum(r["mask"][live_small])),
            "latents_that_are_children": float(np.sum(child_of_any) / max(np.sum(r["live"]), 1)),
            "final_train_loss": float(np.nanmean(t["losses"][-3:])), "train_seconds": t["seconds"],
            "non_finite": bool(t["non_finite"]),
        })
    if is_primary():
        figures = out_dir.figures
        if lm.losses is not None:
            save(plots.loss_curves(lm.losses, [f"LM seed {s}" for s in range(lm.losses.shape[0])],
                                   log_every=cfg.log_every), figures / "lm_loss.png")
        save(plots.loss_curves(np.stack([t["losses"] for t in train_records]), [f"N = {n}" for n in sizes],
                               log_every=cfg.log_every), figures / "sae_loss.png")
        save(split_tree_figure(
            [t[0] for t in trees], [f"N = {n}" for n in sizes],
            [f"feature #{r} of the N = {sizes[0]} SAE ({int(count_small[r])} held-out firings, "
             f"{int(largest[np.searchsorted(live_ids, r)])} children at N = {sizes[-1]})" for r in roots],
            title=f"feature splitting: children with cos ≥ {cfg.cosine_threshold:g} and P(parent | child) ≥ "
                  f"{cfg.coactivation_threshold:g}; box edge colour = cosine with the root; ⟦token⟧ = where the latent "
                  f"fires most (top 2 held-out contexts, · = space)",
        ), figures / "split_tree.png")
        save(split_counts_figure(
            np.asarray(sizes), np.asarray([s.mean for s in split]), np.asarray([s.frac_ge2 for s in split]),
            [s.histogram for s in split],
            title=f"children of the {int(live_small.sum())} live features of the N = {sizes[0]} TopK SAE (k = {cfg.k})",
        ), figures / "split_counts.png")
        save(criterion_figure(
            [b[0] for b in best], [b[1] for b in best], [f"N = {n}" for n in sizes],
            cosine_threshold=cfg.cosine_threshold, coactivation_threshold=cfg.coactivation_threshold,
        ), figures / "criterion.png")
    return {
        "corpus": {"root": str(corpus.root), "files": corpus.n_files, "train_bytes": int(corpus.train.size),
                   "val_bytes": int(corpus.val.size), "fingerprint": corpus.fingerprint},
        "lm": {"val_loss": lm.val_losses[lm.best_seed], "train_seconds": lm.seconds, "source": lm.source},
        "hook": HOOK, "d_in": int(mcfg.d_mlp), "k": cfg.k,
        "dictionary_sweep": mode, "n_instances": len(sizes), "train_seconds": train_seconds,
        "held_out_tokens": int(x_val.shape[0]), "train_rows": int(source.x.shape[0]),
        "criterion": {"cosine_threshold": cfg.cosine_threshold, "coactivation_threshold": cfg.coactivation_threshold,
                      "min_firings": cfg.min_firings},
        "small_live_features": int(live_small.sum()),
        "dictionary_sizes": list(sizes),
        "mean_children": [s.mean for s in split],
        "frac_ge2_children": [s.frac_ge2 for s in split],
        "per_size": size_records,
        "trees": [{"root": r, "nodes": t[1]} for r, t in zip(roots, trees)],
    }
