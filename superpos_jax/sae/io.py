"""Trained SAEs to and from the SAELens layout (`interop.saelens`).

`save_sae(sae, directory, ...)` writes an `SAE` in its inference form with its input scale
folded in, so the saved SAE acts on raw activations: W_enc·s, W_dec/s, b_dec/s (a JumpReLU
threshold is unchanged). The directory is in the SAELens 6 layout, which
`sae_lens.SAE.load_from_disk` loads as the SAELens class below, computing the same latents and
reconstructions. Each architecture maps its own params (`Architecture.to_saelens`):

    ours        SAELens architecture   notes
    relu        standard
    topk        topk                   cfg k = the SAE's k
    batchtopk   jumprelu               inference form: threshold = the running threshold
    jumprelu    jumprelu               threshold = exp(log_threshold)
    gated       gated                  b_gate = b_enc

cfg.json also records `superpos_architecture`, the architecture the SAE was trained as.

`load_sae(directory)` returns an `SAE` of the registered architecture that loads the
directory's (canonical) SAELens architecture (`architectures.for_saelens`), with an input scale
of 1: "standard" as relu, "topk" with its k, "jumprelu" as jumprelu, "gated" as gated, and a
SAELens BatchTopK training checkpoint ("batchtopk") in its inference form, as jumprelu. Fields
SAELens uses that are implemented by folding (apply_b_dec_to_input false,
rescale_acts_by_decoder_norm true) are folded into the params; fields asking for behaviour not
implemented here are refused by name (see `interop.saelens`). The SAE does not hold the hook
point: `from_saelens(directory)[1]["hook_name"]` has it, or None where the file does not say.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from superpos_jax.interop.saelens import from_saelens, save_saelens
from superpos_jax.sae.architectures import for_saelens
from superpos_jax.sae.model import SAE


def save_sae(sae: SAE, directory: str | os.PathLike[str], *, hook_name: str, model_name: str, **cfg: Any) -> Path:
    """Write one SAE as a SAELens directory (`cfg.json` + `sae_weights.safetensors`); `hook_name`
    and `model_name` go into cfg.json's `metadata` (and its top level), extra `cfg` fields are
    written unchanged. Returns the directory."""
    inference = sae.inference()
    arch = inference.architecture
    if arch.saelens_architecture is None:
        raise ValueError(f"{arch.name} has no SAELens architecture (and no inference form that has one)")
    weights, fields = arch.to_saelens(inference.params, inference.hparams)
    full = {"architecture": arch.saelens_architecture, "hook_name": hook_name, "model_name": model_name,
            **fields, **cfg, "superpos_architecture": sae.architecture.name}
    return save_saelens(directory, weights, full)


def load_sae(directory: str | os.PathLike[str]) -> SAE:
    """A SAELens SAE directory as an `SAE` (see the module docstring for what loads as what)."""
    weights, cfg = from_saelens(directory)
    arch = for_saelens(cfg["architecture"])
    params, hparams = arch.from_saelens(weights, cfg)
    return SAE(arch, params, hparams)
