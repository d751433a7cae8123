"""The language-model stage the LM experiments share (monosemanticity, sae-lm, ...): the corpus a
config names, tokenized, and the language model — either trained here (byte tokens; AdamW with a
warm-up then cosine decay; seeds vmapped in one sweep, the lowest validation loss kept) or, with
`pretrained`, a GPT-2-family checkpoint loaded from a Hugging Face directory and its own
`tokenizer.json` (nothing trained; the corpus is tokenized with that tokenizer).

A config using this stage has `model` (a `TransformerConfig`), `pretrained` (a directory or
None), `n_seeds`, `seed`, `n_steps`, `lm_batch`, `lm_learning_rate`, `log_every` and the corpus
fields (`corpus_dir`, `corpus_glob`, `max_bytes`).

The offline evaluations they share follow: concept labels of the validation windows from
Python's `tokenize` (`validation_token_labels`), k-sparse probes of a unit set against them
(`concept_probes`, `probing_summary`), and the dead/dense fractions logged over training
(`firing_trace`).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.config import fail
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm.corpus import SEPARATOR, Corpus, eval_windows, load_corpus
from superpos_jax.lm.labels import CONCEPTS, byte_labels, concept_frequencies, corpus_token_ends, token_labels
from superpos_jax.lm.task import CorpusWindows, lm_task
from superpos_jax.lm.tokenizers import TOKENIZER_FILE, ByteTokenizer
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams
from superpos_jax.rundir import RunDir
from superpos_jax.sae.probing import k_sparse_probe

def load_config_corpus(cfg: Any) -> Corpus:
    """The corpus `cfg` names (`corpus_dir`, `corpus_glob`, `max_bytes`)."""
    return load_corpus(cfg.corpus_dir, include=cfg.corpus_glob, max_bytes=cfg.max_bytes)


@functools.lru_cache(maxsize=8)
def _checkpoint_config(directory: str) -> TransformerConfig:
    from superpos_jax.lm.pretrained import CheckpointError, config_from_hf

    path = Path(directory) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail("pretrained", directory, f"a Hugging Face GPT-2 checkpoint directory with a readable config.json ({e})")
    try:
        return config_from_hf(raw, str(path))
    except CheckpointError as e:
        fail("pretrained", directory, f"a GPT-2-family checkpoint this library implements ({e})")


def model_config(cfg: Any) -> TransformerConfig:
    """The language model's config: `cfg.model`, or the checkpoint's with `cfg.pretrained`."""
    return cfg.model if cfg.pretrained is None else _checkpoint_config(str(cfg.pretrained))


def check_pretrained(cfg: Any) -> None:
    """Refuse, naming `pretrained`, a directory that is not a loadable GPT-2-family checkpoint
    with a tokenizer whose vocabulary fits the model (before anything is compiled)."""
    if cfg.pretrained is None:
        return
    directory = Path(cfg.pretrained)
    if not directory.is_dir():
        fail("pretrained", cfg.pretrained, "an existing Hugging Face checkpoint directory")
    model = model_config(cfg)
    tokenizer = load_tokenizer(directory, required=model.d_vocab != 256)
    if tokenizer.vocab_size > model.d_vocab:
        fail("pretrained", cfg.pretrained, f"a tokenizer.json of at most the model's vocabulary {model.d_vocab} "
             f"tokens (it has {tokenizer.vocab_size})")


def load_tokenizer(directory: str | Path, *, required: bool = True) -> Any:
    """The `tokenizer.json` of a checkpoint or run-model directory; without one, byte tokens
    (allowed only when not `required`, i.e. for a 256-token vocabulary)."""
    path = Path(directory) / TOKENIZER_FILE
    if path.is_file():
        from superpos_jax.lm.tokenizers import HFTokenizer

        try:
            return HFTokenizer.from_file(path)
        except (OSError, ValueError) as e:
            fail("pretrained", str(directory), f"a directory whose {TOKENIZER_FILE} the tokenizers package reads ({e})")
    if required:
        fail("pretrained", str(directory), f"a checkpoint directory with a {TOKENIZER_FILE} (the model's vocabulary is not bytes)")
    return ByteTokenizer()


def tokenize_corpus(tokenizer: Any, data: np.ndarray) -> np.ndarray:
    """The corpus bytes (files joined by `SEPARATOR`) as int32 tokens: each file's text encoded
    on its own, files joined by the tokenizer's end-of-text token (`SEPARATOR` for bytes)."""
    if isinstance(tokenizer, ByteTokenizer):
        return np.asarray(data, np.int32)
    joiner = getattr(tokenizer, "eos_id", None)
    pieces: list[np.ndarray] = []
    for chunk in bytes(np.asarray(data, np.uint8)).split(bytes([SEPARATOR])):
        if chunk:
            pieces.append(np.asarray(tokenizer.encode(chunk.decode("utf-8", errors="replace")), np.int32))
            if joiner is not None:
                pieces.append(np.asarray([joiner], np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int32)


@dataclass(frozen=True)
class LanguageModel:
    """The LM stage's outcome.

    Attributes:
        model: the kept model (best seed, or the checkpoint).
        cfg: its `TransformerConfig`.
        tokenizer: what the corpus was tokenized with (`ByteTokenizer` or `HFTokenizer`).
        train_tokens, val_tokens: (n,) integer token streams of the two corpus splits (the
            uint8 bytes themselves for byte tokens).
        val: int (n_windows, n_ctx) evaluation windows from `val_tokens`.
        val_losses: validation loss of each seed (one entry for a checkpoint).
        best_seed: the kept seed (0 for a checkpoint).
        losses: (n_seeds, n_logged) training losses, or None for a checkpoint.
        seconds: training wall time (0 for a checkpoint).
        source: "trained" or the checkpoint directory.
    """

    model: TransformerParams
    cfg: TransformerConfig
    tokenizer: Any
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    val: np.ndarray
    val_losses: list[float]
    best_seed: int
    losses: np.ndarray | None
    seconds: float
    source: str

    def save_tokenizer(self, model_dir: Path) -> None:
        """Copy the checkpoint's tokenizer.json next to a saved model (byte models need none)."""
        if self.source != "trained" and (Path(self.source) / TOKENIZER_FILE).is_file():
            shutil.copyfile(Path(self.source) / TOKENIZER_FILE, model_dir / TOKENIZER_FILE)


def build(cfg: Any, corpus: Corpus | None = None):
    """The language-model training stage: grid (seeds), per-instance hparams, keys and trainer."""
    corpus = load_config_corpus(cfg) if corpus is None else corpus
    grid = Grid({"seed": range(cfg.n_seeds)})
    optim = OptimConfig(name="adamw", learning_rate=cfg.lm_learning_rate, weight_decay=0.01, schedule="cosine",
                        warmup_steps=min(100, cfg.n_steps // 10), total_steps=cfg.n_steps, final_fraction=0.1)
    trainer = make_trainer(lm_task(cfg.model, CorpusWindows(corpus.train, cfg.model.n_ctx), cfg.lm_batch), optim,
                           log_every=cfg.log_every)
    hparams = {"learning_rate": np.full(grid.size, cfg.lm_learning_rate, np.float32)}
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def _take(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a[i]), tree)


def language_model(
    name: str, cfg: Any, corpus: Corpus, out_dir: RunDir, *, progress: bool, execution: Execution,
    fingerprint: dict[str, Any],
) -> LanguageModel:
    """Train the config's model (one checkpointed sweep over seeds, tag "lm") or load its
    `pretrained` checkpoint; evaluate on `cfg.eval_windows` validation windows."""
    if cfg.pretrained is not None:
        from superpos_jax.lm.pretrained import load_hf_gpt2

        model = load_hf_gpt2(cfg.pretrained)
        tokenizer = load_tokenizer(cfg.pretrained, required=model.cfg.d_vocab != 256)
        train_tokens, val_tokens = tokenize_corpus(tokenizer, corpus.train), tokenize_corpus(tokenizer, corpus.val)
        val = eval_windows(val_tokens, min(cfg.eval_windows, val_tokens.size // model.cfg.n_ctx), model.cfg.n_ctx)
        return LanguageModel(model, model.cfg, tokenizer, train_tokens, val_tokens, np.asarray(val),
                             [activations.loss_under_hooks(model, val)], 0, None, 0.0, str(cfg.pretrained))
    grid, hparams, keys, trainer = build(cfg, corpus)
    lm = common.train(name, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution,
                      tag="lm", fingerprint=fingerprint)
    n_ctx = cfg.model.n_ctx
    val = eval_windows(corpus.val, min(cfg.eval_windows, corpus.val.size // n_ctx), n_ctx)
    val_losses = [activations.loss_under_hooks(_take(lm.state.params, i), val) for i in range(cfg.n_seeds)]
    best = int(np.nanargmin(val_losses))
    return LanguageModel(_take(lm.state.params, best), cfg.model, ByteTokenizer(), corpus.train, corpus.val,
                         np.asarray(val), val_losses, best, lm.losses, lm.seconds, "trained")


# ------------------------------------------------------------------ offline evaluations of SAEs

PROBE_TEST_EVERY = 5
"""Probes are scored on every fifth validation window (whole windows, spread over the validation
files, so that a few files do not make up the held-out set) and fit on the other windows."""
PROBE_MIN_CLASS = 10
"""A concept is probed only with at least this many positive and negative tokens in both splits."""


def validation_token_labels(lm: LanguageModel, corpus: Corpus) -> dict[str, np.ndarray]:
    """Concept labels (`labels.CONCEPTS`, `indent_depth`, `valid`) of every position of the
    validation windows `lm.val`, each (n_windows, n_ctx): the validation bytes labelled by
    `tokenize`, a token taking the label of its last byte. The windows are those of
    `corpus.eval_windows` (window i starts at i·⌊n_tokens / n_windows⌋)."""
    ends = corpus_token_ends(corpus.val, lm.tokenizer, lm.val_tokens)
    per_token = token_labels(byte_labels(corpus.val), ends)
    n_windows, n_ctx = lm.val.shape
    index = np.arange(n_windows)[:, None] * (lm.val_tokens.size // n_windows) + np.arange(n_ctx)[None, :]
    if not np.array_equal(np.asarray(lm.val_tokens)[index], np.asarray(lm.val)):
        raise AssertionError("the validation windows are not corpus.eval_windows of the validation tokens")
    return {name: v[index] for name, v in per_token.items()}


def concept_probes(units: np.ndarray, labels: dict[str, np.ndarray], ks: tuple[int, ...], *, width: int = 0
                   ) -> dict[str, Any]:
    """k-sparse probes of every concept on `units` (n_windows, n_ctx, d) at the valid positions
    of `labels` (`validation_token_labels`). Returns {"accuracy", "balanced_accuracy"}: each
    {concept: [score per k]} over the concepts with enough tokens of both classes. `width` > d
    pads the units with zero columns (never informative: a zero column's mean gap is 0 and its
    weight 0), so that unit sets of different widths share one compiled probe."""
    valid = labels["valid"].reshape(-1)
    x = np.asarray(units, np.float32).reshape(valid.size, -1)[valid]
    if width > x.shape[1]:
        x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
    y = np.stack([labels[c].reshape(-1)[valid] for c in CONCEPTS], axis=1)
    window = np.repeat(np.arange(labels["valid"].shape[0]), labels["valid"].shape[1])[valid]
    res = k_sparse_probe(x, y, ks, train=window % PROBE_TEST_EVERY != PROBE_TEST_EVERY - 1, min_class=PROBE_MIN_CLASS)
    scored = [j for j in range(len(CONCEPTS)) if np.isfinite(res.balanced_accuracy[:, j]).all()]
    return {field: {CONCEPTS[j]: [float(v) for v in getattr(res, field)[:, j]] for j in scored}
            for field in ("accuracy", "balanced_accuracy")}


def probing_summary(ks: tuple[int, ...], labels: dict[str, np.ndarray], scores: dict[str, dict[str, list[float]]]
                    ) -> dict[str, Any]:
    """The probing table of several unit sets ({name: {concept: [balanced accuracy per k]}}):
    the concepts scored for all of them, their token frequencies, per set an array-like
    (n_k, n_concepts), and one row per concept × k."""
    concepts = [c for c in CONCEPTS if all(c in s for s in scores.values())]
    freq = concept_frequencies(labels)
    out: dict[str, Any] = {"ks": list(ks), "concepts": concepts, "metric": "balanced accuracy (held-out)",
                           "frequency": {c: freq[c] for c in concepts},
                           "n_valid_tokens": int(np.sum(labels["valid"]))}
    for name, s in scores.items():
        out[name] = [[s[c][i] for c in concepts] for i in range(len(ks))]
    out["table"] = [{"concept": c, "k": k, **{name: s[c][i] for name, s in scores.items()}}
                    for c in concepts for i, k in enumerate(ks)]
    return out


def firing_trace(result: Any, log_every: int) -> dict[str, Any]:
    """The dead and dense fractions logged during training (`firing_observer`), per instance
    and log window: {"steps": [...], "dead_fraction": [[...] per instance], "dense_fraction": ...}."""
    obs = result.observations or {}
    n = np.asarray(result.losses).shape[1]
    return {"steps": [(w + 1) * log_every for w in range(n)],
            **{name: np.asarray(obs[name]).tolist() for name in ("dead_fraction", "dense_fraction") if name in obs}}
