"""The language-model stage the LM experiments share (monosemanticity, sae-lm): the corpus a
config names, tokenized, and the language model — either trained here (byte tokens; AdamW with a
warm-up then cosine decay; seeds vmapped in one sweep, the lowest validation loss kept) or, with
`pretrained`, a GPT-2-family checkpoint loaded from a Hugging Face directory and its own
`tokenizer.json` (nothing trained; the corpus is tokenized with that tokenizer).

A config using this stage has `model` (a `TransformerConfig`), `pretrained` (a directory or
None), `n_seeds`, `seed`, `n_steps`, `lm_batch`, `lm_learning_rate`, `log_every` and the corpus
fields (`corpus_dir`, `corpus_glob`, `max_bytes`).
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
from superpos_jax.lm.task import CorpusWindows, lm_task
from superpos_jax.lm.tokenizers import TOKENIZER_FILE, ByteTokenizer
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams
from superpos_jax.rundir import RunDir

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
