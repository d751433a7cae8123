"""Steering a saved run's model by clamping one SAE feature (Scaling Monosemanticity): the
feature is held at a value at every position, the SAE's error term kept
(`interventions.ClampFeature`), and the model generates (greedily) or reports its next-token
distribution. A sweep over clamp values is one vmapped call.

A steerable run directory holds `model/` (`lm.io`) and `sae/` (SAELens layout, `sae.io`), with
the SAE reading the hook point named in its cfg (`hook_name`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from superpos_jax.interop.saelens import CFG_FILENAME
from superpos_jax.lm.interventions import ClampFeature
from superpos_jax.lm.io import load_transformer
from superpos_jax.lm.tokenizers import ByteTokenizer
from superpos_jax.lm.transformer import TransformerParams, forward, generate
from superpos_jax.sae.io import load_sae
from superpos_jax.sae.model import SAE


@dataclass(frozen=True)
class Steerable:
    """A model and an SAE reading its hook point `hook`."""

    model: TransformerParams
    sae: SAE
    hook: str


def load_run(run_dir: str | os.PathLike[str]) -> Steerable:
    """The model and SAE saved in a run directory (clear errors if either is missing)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir() or not (run_dir / "sae").is_dir():
        raise FileNotFoundError(f"{run_dir} has no model/ and sae/ (run `superpos run monosemanticity` first)")
    model = load_transformer(run_dir / "model")
    hook = json.loads((run_dir / "sae" / CFG_FILENAME).read_text())["hook_name"]
    return Steerable(model, load_sae(run_dir / "sae"), hook)


def check_request(run: Steerable, feature: int, prompt: str) -> np.ndarray:
    """The prompt's tokens, after checking the feature index and the prompt length."""
    d_sae = run.sae.d_sae
    if not 0 <= feature < d_sae:
        raise ValueError(f"feature {feature} is out of range: the SAE has {d_sae} features")
    tokens = ByteTokenizer().encode(prompt)
    if tokens.size == 0 or tokens.size >= run.model.cfg.n_ctx:
        raise ValueError(f"the prompt must have 1..{run.model.cfg.n_ctx - 1} bytes, got {tokens.size}")
    return tokens


def steer_generate(run: Steerable, prompt: str, feature: int, value: float | None, n_new: int = 40) -> str:
    """Greedy continuation of `prompt` with `feature` clamped to `value` (None: unsteered)."""
    tokens = check_request(run, feature, prompt)
    n_new = min(n_new, run.model.cfg.n_ctx - tokens.size)
    hooks = {} if value is None else {run.hook: ClampFeature(run.sae, feature, value)}
    out = generate(run.model, jnp.asarray(tokens)[None, :], n_new, hooks)
    return ByteTokenizer().decode(np.asarray(out[0, tokens.size :]))


def next_token_sweep(run: Steerable, prompt: str, feature: int, values: npt.ArrayLike) -> np.ndarray:
    """Next-token probabilities after `prompt` for every clamp value, (n_values, d_vocab), in
    one vmapped call."""
    tokens = jnp.asarray(check_request(run, feature, prompt))[None, :]

    def probs(value: jax.Array) -> jax.Array:
        hook = ClampFeature(run.sae, feature, value)
        logits, _ = forward(run.model, tokens, {run.hook: hook}, cache_names=())
        return jax.nn.softmax(logits[0, -1])

    return np.asarray(jax.jit(jax.vmap(probs))(jnp.asarray(values, jnp.float32)))
