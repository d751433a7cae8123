"""Trained SAEs to and from the SAELens layout (`interop.saelens`).

`save_sae(sae, directory, ...)` writes an `SAE` in its inference form with its input scale
folded in, so the saved SAE acts on raw activations: W_enc·s, W_dec/s, b_dec/s (a JumpReLU
threshold is unchanged). Each architecture maps its own params (`Architecture.to_saelens`):

    ours        SAELens architecture   notes
    relu        standard
    topk        topk                   cfg k = the SAE's k
    batchtopk   jumprelu               inference form: threshold = the running threshold
    jumprelu    jumprelu               threshold = exp(log_threshold)
    gated       gated                  b_gate = b_enc

`load_sae(directory)` returns an `SAE` of the registered architecture that loads the
directory's SAELens architecture (`architectures.for_saelens`), with an input scale of 1.
cfg.json also records `superpos_architecture`, the architecture the SAE was trained as.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from superpos_jax.interop.saelens import from_saelens, save_saelens
from superpos_jax.sae.architectures import for_saelens
from superpos_jax.sae.model import SAE


def save_sae(sae: SAE, directory: str | os.PathLike[str], *, hook_name: str, model_name: str, **cfg: Any) -> Path:
    """Write one SAE as a SAELens directory (`cfg.json` + `sae_weights.safetensors`); extra
    `cfg` fields are written unchanged. Returns the directory."""
    inference = sae.inference()
    arch = inference.architecture
    if arch.saelens_architecture is None:
        raise ValueError(f"{arch.name} has no SAELens architecture (and no inference form that has one)")
    weights, fields = arch.to_saelens(inference.params, inference.hparams)
    full = {"architecture": arch.saelens_architecture, "hook_name": hook_name, "model_name": model_name,
            **fields, **cfg, "superpos_architecture": sae.architecture.name}
    return save_saelens(directory, weights, full)


def load_sae(directory: str | os.PathLike[str]) -> SAE:
    """A SAELens SAE directory as an `SAE` (SAELens "standard" loads as relu, "jumprelu" as
    jumprelu, "topk" with its k, "gated" as gated)."""
    weights, cfg = from_saelens(directory)
    arch = for_saelens(cfg["architecture"])
    params, hparams = arch.from_saelens(weights, cfg)
    return SAE(arch, params, hparams)

