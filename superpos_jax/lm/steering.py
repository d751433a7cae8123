"""Steering a saved run's model by clamping one SAE feature (Scaling Monosemanticity): the
feature is held at a value at every position, the SAE's error term kept
(`interventions.ClampFeature`), and the model generates (greedily) or reports its next-token
distribution. A sweep over clamp values is one vmapped call.

A steerable run directory holds `model/` (`lm.io`) and `sae/` (SAELens layout, `sae.io`), with
the SAE reading the hook point named in its cfg (`hook_name`). `load_run` refuses, with a
`SteeringError` naming the file, a directory whose files cannot be read or do not fit
together (the hook must be one of the model's, as wide as the SAE's d_in); `check_request`
refuses a feature out of range, a prompt that does not fit, `n_new < 1` and clamp values that
are not finite or exceed `MAX_CLAMP` in magnitude.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from superpos_jax.config import read_json
from superpos_jax.interop.saelens import CFG_FILENAME
from superpos_jax.lm.interventions import ClampFeature
from superpos_jax.lm.io import load_transformer
from superpos_jax.lm.tokenizers import ByteTokenizer
from superpos_jax.lm.transformer import TransformerParams, forward, generate, hook_names, hook_shapes
from superpos_jax.sae.io import load_sae
from superpos_jax.sae.model import SAE


MAX_CLAMP = 1e6
"""Largest clamp value in magnitude: far beyond any feature's activation, and far enough from
float32's range that the steered forward pass stays finite."""

T = TypeVar("T")


class SteeringError(ValueError):
    """A run directory cannot be steered (unreadable or mismatched files), or a request is invalid."""


@dataclass(frozen=True)
class Steerable:
    """A model and an SAE reading its hook point `hook`."""

    model: TransformerParams
    sae: SAE
    hook: str


def _read(what: Path, load: Callable[[Path], T]) -> T:
    """`load(what)`, its complaints about the file's content as a `SteeringError` naming it."""
    try:
        return load(what)
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # JSON, safetensors, cfg fields
        text = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise SteeringError(f"cannot steer: {text}" if str(what) in text else f"cannot steer with {what}: {text}") from None


def _hook_name(sae_dir: Path) -> str:
    cfg_path = sae_dir / CFG_FILENAME
    cfg = read_json(cfg_path)
    hook = cfg.get("hook_name") if isinstance(cfg, dict) else None
    if not isinstance(hook, str):
        raise ValueError(f"{cfg_path}: 'hook_name' = {hook!r} is invalid: must name the model's hook point the SAE reads")
    return hook


def load_run(run_dir: str | os.PathLike[str]) -> Steerable:
    """The model and SAE saved in a run directory, checked to fit together.

    Raises:
        FileNotFoundError: `model/` or `sae/` is missing.
        SteeringError: a file is unreadable, the SAE's hook is not one of the model's, or the
            hook's width is not the SAE's d_in.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "model").is_dir() or not (run_dir / "sae").is_dir():
        raise FileNotFoundError(f"{run_dir} has no model/ and sae/ (run `superpos run monosemanticity` first)")
    model = _read(run_dir / "model", load_transformer)
    sae = _read(run_dir / "sae", load_sae)  # the bounded, type-checked reader sees the cfg first
    hook = _read(run_dir / "sae" / CFG_FILENAME, lambda p: _hook_name(p.parent))
    names = hook_names(model.cfg)
    if hook not in names:
        raise SteeringError(f"cannot steer with {run_dir / 'sae' / CFG_FILENAME}: 'hook_name' = {hook!r} is not a "
                            f"hook point of the model in {run_dir / 'model'} (it has {', '.join(names)})")
    shape = hook_shapes(model.cfg, 1, 1)[hook]
    if len(shape) != 3 or shape[-1] != sae.d_in:
        width = f"width {shape[-1]}" if len(shape) == 3 else "no (batch, pos, width) activation"
        raise SteeringError(f"cannot steer with {run_dir / 'sae'}: the SAE's d_in = {sae.d_in}, but the model's "
                            f"hook point {hook!r} has {width}")
    return Steerable(model, sae, hook)


def check_request(run: Steerable, feature: int, prompt: str, *, values: Sequence[float] = (),
                  n_new: int = 1) -> np.ndarray:
    """The prompt's tokens, after checking the feature index, the prompt length, the clamp
    `values` (finite, |v| <= `MAX_CLAMP`) and `n_new` (>= 1); a `SteeringError` otherwise."""
    d_sae = run.sae.d_sae
    if not 0 <= feature < d_sae:
        raise SteeringError(f"--feature {feature} is out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
    tokens = ByteTokenizer().encode(prompt)
    if tokens.size == 0 or tokens.size >= run.model.cfg.n_ctx:
        raise SteeringError(f"the prompt must have 1..{run.model.cfg.n_ctx - 1} bytes, got {tokens.size}")
    for v in values:
        if not (math.isfinite(v) and abs(v) <= MAX_CLAMP):
            raise SteeringError(f"clamp value {v!r} is invalid: must be a finite number in [-{MAX_CLAMP:g}, {MAX_CLAMP:g}]")
    if n_new < 1:
        raise SteeringError(f"--n-new = {n_new} is invalid: must be a positive integer (bytes to generate)")
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
