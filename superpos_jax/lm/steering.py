"""Steering a saved run's model by clamping SAE features (Scaling Monosemanticity): each
feature of a set is held at its value at every position, the SAE's error term kept
(`interventions.ClampFeatures`; one feature is the set of one), and the model generates
(greedily) or reports its next-token distribution. A sweep over clamp settings — values
(n_settings, n_features), one row a setting — is one call: `next_token_sweep` vmaps the
forward pass over the settings and `steer_generate_sweep` generates for all of them as one
batch.

Features and values. The functions take `features` as one int (a single feature) or a
sequence of distinct ints, and clamp values to match: for one int, a scalar value (a setting)
or a 1-D array of values (a sweep); for a sequence of n features, n values (a setting) or an
(n_settings, n) array (a sweep). `clamp_settings` puts either form into (features (n,),
values (n_settings, n)).

A steerable run directory holds `model/` (`lm.io`) and `sae/` (SAELens layout, `sae.io`), with
the SAE reading the hook point named in its cfg (`hook_name`, at top level or in `metadata`; a
short name or its TransformerLens spelling, `blocks.0.mlp.hook_post`). `load_run` refuses, with a
`SteeringError` naming the file, a directory whose files cannot be read or do not fit
together (the hook must be one of the model's, as wide as the SAE's d_in); `check_request`
refuses a feature out of range or given twice, a prompt that does not fit, `n_new < 1` and
clamp values that are not finite or exceed `MAX_CLAMP` in magnitude.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from superpos_jax.config import read_json
from superpos_jax.interop.saelens import CFG_FILENAME
from superpos_jax.lm.interventions import ClampFeatures
from superpos_jax.lm.io import load_transformer
from superpos_jax.lm.tokenizers import TOKENIZER_FILE, ByteTokenizer
from superpos_jax.lm.transformer import (
    TransformerParams,
    canonical_name,
    forward,
    generate,
    hook_names,
    hook_shapes,
)
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
    """A model, an SAE reading its hook point `hook`, and the model's tokenizer (bytes unless
    the run saved a `tokenizer.json` beside the model)."""

    model: TransformerParams
    sae: SAE
    hook: str
    tokenizer: Any = dataclasses.field(default_factory=ByteTokenizer)


def _read(what: Path, load: Callable[[Path], T]) -> T:
    """`load(what)`, its complaints about the file's content as a `SteeringError` naming it."""
    try:
        return load(what)
    except (ValueError, TypeError, KeyError, RecursionError) as e:  # JSON, safetensors, cfg fields
        text = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        raise SteeringError(f"cannot steer: {text}" if str(what) in text else f"cannot steer with {what}: {text}") from None


def _hook_name(sae_dir: Path) -> str:
    """The hook point the SAE reads, as SAELens files say it: `hook_name` at top level or in
    `metadata` (a disagreement is refused by the SAE reader), or the legacy `hook_point`."""
    cfg_path = sae_dir / CFG_FILENAME
    cfg = read_json(cfg_path)
    cfg = cfg if isinstance(cfg, dict) else {}
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    for hook in (cfg.get("hook_name"), metadata.get("hook_name"), cfg.get("hook_point")):
        if hook is not None:
            break
    if hook is None:
        raise ValueError(f"{cfg_path}: required field 'hook_name' is missing (at top level or in 'metadata'): "
                         f"it must name the model's hook point the SAE reads")
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
    if canonical_name(hook) not in hook_names(model.cfg, optional=True):
        raise SteeringError(f"cannot steer with {run_dir / 'sae' / CFG_FILENAME}: 'hook_name' = {hook!r} is not a "
                            f"hook point of the model in {run_dir / 'model'} (it has {', '.join(hook_names(model.cfg))}"
                            f", or their TransformerLens spellings)")
    hook = canonical_name(hook)
    shape = hook_shapes(model.cfg, 1, 1, optional=True)[hook]
    if len(shape) != 3 or shape[-1] != sae.d_in:
        width = f"width {shape[-1]}" if len(shape) == 3 else "no (batch, pos, width) activation"
        raise SteeringError(f"cannot steer with {run_dir / 'sae'}: the SAE's d_in = {sae.d_in}, but the model's "
                            f"hook point {hook!r} has {width}")
    tokenizer = ByteTokenizer()
    if (run_dir / "model" / TOKENIZER_FILE).is_file():
        from superpos_jax.lm.tokenizers import HFTokenizer

        tokenizer = _read(run_dir / "model" / TOKENIZER_FILE, HFTokenizer.from_file)
        if tokenizer.vocab_size > model.cfg.d_vocab:
            raise SteeringError(f"cannot steer with {run_dir / 'model' / TOKENIZER_FILE}: its {tokenizer.vocab_size} "
                                f"tokens exceed the model's vocabulary of {model.cfg.d_vocab}")
    return Steerable(model, sae, hook, tokenizer)


Features = int | Sequence[int] | npt.NDArray[np.integer]
"""One SAE feature, or a sequence of distinct features clamped together."""


def clamp_settings(features: Features, values: npt.ArrayLike | float) -> tuple[np.ndarray, np.ndarray]:
    """`features` as int32 (n,) and `values` as float64 (n_settings, n): an int feature with a
    scalar or 1-D `values` (one value per setting), or n features with n values (one setting)
    or an (n_settings, n) array. A `SteeringError` when the shapes do not match."""
    single = isinstance(features, (int, np.integer))
    f = np.asarray([features] if single else list(features))
    if f.ndim != 1 or f.size == 0 or not np.issubdtype(f.dtype, np.integer):
        raise SteeringError(f"features must be an int or a non-empty sequence of ints, got {features!r}")
    v = np.asarray(values, np.float64)
    if single and v.ndim <= 1:
        v = v.reshape(-1, 1)
    elif not single and v.ndim == 1 and v.shape[0] == f.size:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != f.size:
        want = "a scalar or 1-D values" if single else f"{f.size} values or an (n_settings, {f.size}) array"
        raise SteeringError(f"clamp values of shape {np.shape(values)} do not fit features {f.tolist()}: need {want}")
    return f.astype(np.int32), v


def check_request(run: Steerable, feature: Features, prompt: str, *, values: npt.ArrayLike | float = (),
                  n_new: int = 1) -> np.ndarray:
    """The prompt's tokens, after checking the feature indices (in range, distinct), the prompt
    length, the clamp `values` (any shape; finite, |v| <= `MAX_CLAMP`) and `n_new` (>= 1); a
    `SteeringError` otherwise."""
    d_sae = run.sae.d_sae
    features = [feature] if isinstance(feature, (int, np.integer)) else list(feature)
    for i, f in enumerate(features):
        if not 0 <= f < d_sae:
            raise SteeringError(f"--feature {f} is out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
        if f in features[:i]:
            raise SteeringError(f"--feature {f} is given twice: the clamped features must be distinct")
    tokens = run.tokenizer.encode(prompt)
    if tokens.size == 0 or tokens.size >= run.model.cfg.n_ctx:
        raise SteeringError(f"the prompt must have 1..{run.model.cfg.n_ctx - 1} tokens, got {tokens.size}")
    for v in np.asarray(values, np.float64).reshape(-1).tolist():
        if not (math.isfinite(v) and abs(v) <= MAX_CLAMP):
            raise SteeringError(f"clamp value {v!r} is invalid: must be a finite number in [-{MAX_CLAMP:g}, {MAX_CLAMP:g}]")
    if n_new < 1:
        raise SteeringError(f"--n-new = {n_new} is invalid: must be a positive integer (tokens to generate)")
    return tokens


def steer_generate(run: Steerable, prompt: str, feature: Features, value: npt.ArrayLike | float | None,
                   n_new: int = 40) -> str:
    """Greedy continuation of `prompt` with `feature` clamped to `value` (None: unsteered); a
    sequence of n features takes n values (one setting)."""
    if value is None:
        tokens = check_request(run, feature, prompt)
        n_new = min(n_new, run.model.cfg.n_ctx - tokens.size)
        out = generate(run.model, jnp.asarray(tokens)[None, :], n_new, {})
        return run.tokenizer.decode(np.asarray(out[0, tokens.size :]))
    check_request(run, feature, prompt, values=value)
    _, settings = clamp_settings(feature, value)
    if settings.shape[0] != 1:
        raise SteeringError(f"steer_generate takes one clamp setting, got {settings.shape[0]} (use steer_generate_sweep)")
    return steer_generate_sweep(run, prompt, feature, value, n_new)[0]


def steer_generate_sweep(run: Steerable, prompt: str, features: Features, values: npt.ArrayLike | float,
                         n_new: int = 40) -> list[str]:
    """Greedy continuations of `prompt`, one per clamp setting (`features` and `values` as in
    the module docstring), generated in one call: the settings are the batch axis, each row
    of the batch clamped to its own values."""
    tokens = check_request(run, features, prompt, values=values)
    features_arr, settings = clamp_settings(features, values)
    n_new = min(n_new, run.model.cfg.n_ctx - tokens.size)
    batch = np.broadcast_to(tokens[None, :], (settings.shape[0], tokens.size))
    hook = ClampFeatures(run.sae, features_arr, settings[:, None, :].astype(np.float32))  # (batch, pos, n) after broadcasting
    out = np.asarray(generate(run.model, jnp.asarray(batch), n_new, {run.hook: hook}))
    decode = run.tokenizer.decode
    return [decode(row[tokens.size :]) for row in out]


def next_token_sweep(run: Steerable, prompt: str, feature: Features, values: npt.ArrayLike | float) -> np.ndarray:
    """Next-token probabilities after `prompt` for every clamp setting, (n_settings, d_vocab),
    in one vmapped call: `feature` an int and `values` (n_values,), or n features and `values`
    (n_settings, n) (see the module docstring)."""
    tokens = jnp.asarray(check_request(run, feature, prompt, values=values))[None, :]
    features_arr, settings = clamp_settings(feature, values)

    def probs(setting: jax.Array) -> jax.Array:
        hook = ClampFeatures(run.sae, features_arr, setting)
        logits, _ = forward(run.model, tokens, {run.hook: hook}, cache_names=())
        return jax.nn.softmax(logits[0, -1])

    return np.asarray(jax.jit(jax.vmap(probs))(jnp.asarray(settings, jnp.float32)))
