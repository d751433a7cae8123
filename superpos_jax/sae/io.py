"""Trained SAEs to and from the SAELens layout (`interop.saelens`): the bridge between
`SAEParams` (+ the training state's extras) and SAELens's architectures.

    ours        SAELens architecture   notes
    relu        standard
    topk        topk                   cfg k = the instance's k
    batchtopk   jumprelu               inference form: threshold = the running threshold
    jumprelu    jumprelu               threshold = exp(log_threshold)
    gated       gated                  b_gate = b_enc

An input scale s (April-2024 recipe) is folded into the weights exactly — W_enc·s, W_dec/s,
b_dec/s (and a JumpReLU threshold is unchanged) — so the saved SAE acts on raw activations.
Loading returns `(kind, params, hparams)` with an input scale of 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from superpos_jax.interop.saelens import from_saelens, save_saelens
from superpos_jax.sae.architectures import SAEParams

_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "gated": "gated"}


def to_weights(
    kind: str, params: SAEParams, *, input_scale: float = 1.0, threshold: float | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """One SAE's weights in the SAELens naming of `interop.saelens` (our orientation) and its
    SAELens architecture. `threshold` is BatchTopK's running threshold (required for it)."""
    if kind not in _ARCH:
        raise ValueError(f"unknown SAE kind {kind!r}; choose from {tuple(_ARCH)}")
    s = float(input_scale)
    p = {name: np.asarray(getattr(params, name), np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    weights = {"W_enc": p["W_enc"] * s, "W_dec": p["W_dec"] / s, "b_dec": p["b_dec"] / s}
    if kind == "gated":
        weights.update(b_gate=p["b_enc"], r_mag=np.asarray(params.r_mag, np.float32),
                       b_mag=np.asarray(params.b_mag, np.float32))
    else:
        weights["b_enc"] = p["b_enc"]
    if kind == "jumprelu":
        weights["threshold"] = np.exp(np.asarray(params.log_threshold, np.float32))
    if kind == "batchtopk":
        if threshold is None:
            raise ValueError("a BatchTopK SAE is saved in its inference form: pass its running threshold")
        weights["threshold"] = np.full(p["b_enc"].shape, max(float(threshold), 0.0), np.float32)
    return weights, _ARCH[kind]


def save_sae(
    directory: str | os.PathLike[str],
    kind: str,
    params: SAEParams,
    *,
    hook_name: str,
    model_name: str,
    k: int | None = None,
    input_scale: float = 1.0,
    threshold: float | None = None,
    **cfg: Any,
) -> Path:
    """Write one SAE as a SAELens directory (`cfg.json` + `sae_weights.safetensors`)."""
    weights, architecture = to_weights(kind, params, input_scale=input_scale, threshold=threshold)
    full = {"architecture": architecture, "hook_name": hook_name, "model_name": model_name, **cfg}
    if architecture == "topk":
        if k is None:
            raise ValueError("a TopK SAE needs its k")
        full["k"] = int(k)
        full["activation_fn_kwargs"] = {"k": int(k)}
    full["superpos_kind"] = kind
    return save_saelens(directory, weights, full)


def load_sae(directory: str | os.PathLike[str]) -> tuple[str, SAEParams, dict[str, Any]]:
    """A SAELens SAE directory as `(kind, SAEParams, hparams)` for `models.sae.encode/decode`
    (hparams hold `k` for topk). SAELens "standard" loads as relu, "jumprelu" as jumprelu."""
    weights, cfg = from_saelens(directory)
    architecture = cfg["architecture"]
    kind = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}[architecture]
    W_enc = np.asarray(weights["W_enc"], np.float32)
    d_sae = W_enc.shape[0]
    zeros = np.zeros(d_sae, np.float32)
    b_enc = weights["b_gate"] if kind == "gated" else weights["b_enc"]
    threshold = np.asarray(weights.get("threshold", np.ones(d_sae)), np.float32)
    params = SAEParams(
        W_enc=jnp.asarray(W_enc),
        b_enc=jnp.asarray(b_enc, jnp.float32),
        W_dec=jnp.asarray(weights["W_dec"], jnp.float32),
        b_dec=jnp.asarray(weights["b_dec"], jnp.float32),
        log_threshold=jnp.asarray(np.log(np.maximum(threshold, 1e-30)), jnp.float32),
        r_mag=jnp.asarray(weights.get("r_mag", zeros), jnp.float32),
        b_mag=jnp.asarray(weights.get("b_mag", zeros), jnp.float32),
    )
    hparams: dict[str, Any] = {}
    if kind == "topk":
        hparams["k"] = float(cfg.get("k") or cfg["activation_fn_kwargs"]["k"])
    return kind, params, hparams


def inference_params(kind: str, params: SAEParams, *, input_scale: float = 1.0,
                     threshold: float | None = None) -> tuple[str, SAEParams]:
    """One trained SAE as `(kind, params)` acting on RAW activations at inference: the input
    scale folded in, and BatchTopK turned into the JumpReLU at its running `threshold`."""
    weights, _ = to_weights(kind, params, input_scale=input_scale, threshold=threshold)
    b_enc = weights.get("b_enc", weights.get("b_gate"))
    log_threshold = np.log(np.maximum(weights["threshold"], 1e-30)) if "threshold" in weights else params.log_threshold
    folded = SAEParams(
        W_enc=jnp.asarray(weights["W_enc"]), b_enc=jnp.asarray(b_enc), W_dec=jnp.asarray(weights["W_dec"]),
        b_dec=jnp.asarray(weights["b_dec"]), log_threshold=jnp.asarray(log_threshold, jnp.float32),
        r_mag=params.r_mag, b_mag=params.b_mag,
    )
    return ("jumprelu" if kind == "batchtopk" else kind), folded
