"""The language-model stage the LM experiments share (monosemanticity, sae-lm): the corpus a
config names, and the tiny transformer trained on it (byte tokens; AdamW with a warm-up then
cosine decay; seeds vmapped in one sweep)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import common
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer
from superpos_jax.lm.corpus import Corpus, load_corpus
from superpos_jax.lm.task import CorpusWindows, lm_task


def load_config_corpus(cfg: Any) -> Corpus:
    """The corpus `cfg` names (`corpus_dir`, `corpus_glob`, `max_bytes`)."""
    return load_corpus(cfg.corpus_dir, include=cfg.corpus_glob, max_bytes=cfg.max_bytes)


def build(cfg: Any, corpus: Corpus | None = None):
    """The language-model stage: grid (seeds), per-instance hparams, keys and trainer.

    `cfg` has `model` (a `TransformerConfig`), `n_seeds`, `seed`, `n_steps`, `lm_batch`,
    `lm_learning_rate`, `log_every` and the corpus fields."""
    corpus = load_config_corpus(cfg) if corpus is None else corpus
    grid = Grid({"seed": range(cfg.n_seeds)})
    optim = OptimConfig(name="adamw", learning_rate=cfg.lm_learning_rate, weight_decay=0.01, schedule="cosine",
                        warmup_steps=min(100, cfg.n_steps // 10), total_steps=cfg.n_steps, final_fraction=0.1)
    trainer = make_trainer(lm_task(cfg.model, CorpusWindows(corpus.train, cfg.model.n_ctx), cfg.lm_batch), optim,
                           log_every=cfg.log_every)
    hparams = {"learning_rate": np.full(grid.size, cfg.lm_learning_rate, np.float32)}
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer
