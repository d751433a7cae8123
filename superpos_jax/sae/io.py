"""Trained SAEs to and from the SAELens layout (`interop.saelens`).

`save_sae(sae, directory, ...)` writes an `SAE` in its inference form with its input scale
folded in, so the saved SAE acts on raw activations: W_enc·s, W_dec/s, b_dec/s (a JumpReLU
threshold is unchanged). The directory is in the SAELens 6 layout, which
`sae_lens.SAE.load_from_disk` loads as the SAELens class below, computing the same latents and
reconstructions. Each architecture maps its own params (`Architecture.to_saelens`):

    ours                  SAELens architecture   notes
    relu                  standard
    topk                  topk                   cfg k = the SAE's k
    batchtopk             jumprelu               inference form: threshold = the running threshold
    matryoshka_batchtopk  jumprelu               as batchtopk
    jumprelu              jumprelu               threshold = exp(log_threshold)
    gated                 gated                  b_gate = b_enc
    transcoder            transcoder             cfg d_out; apply_b_dec_to_input false (b_dec is
                                                 the output bias, as in SAELens)
    skip_transcoder       skip_transcoder        + W_skip (d_out, d_in)
    crosscoder            (none)                 this library's own layout, below

cfg.json also records `superpos_architecture`, the architecture the SAE was trained as.

Own layout (an architecture whose inference form has no SAELens counterpart: the crosscoder). The
same two files: cfg.json holds `superpos_format` = 1, `architecture` and `superpos_architecture`
(our name), `architecture_fields` (the architecture's static fields, e.g. {"n_layers": 2}),
`d_in`, `d_sae`, `hook_name`, `model_name` and the extra fields given; the safetensors file holds
every params leaf under its field name (our orientation), the running state as `state.<name>` and
the hyperparameters as `hparams.<name>`. sae_lens refuses such a directory (it has no such
architecture); `load_sae` reads it back exactly.

`load_sae(directory)` returns an `SAE` of the registered architecture that loads the
directory's (canonical) SAELens architecture (`architectures.for_saelens`), with an input scale
of 1: "standard" as relu, "topk" with its k, "jumprelu" as jumprelu, "gated" as gated,
"transcoder" / "skip_transcoder" as transcoder / skip_transcoder (with the file's d_out), and a
SAELens BatchTopK training checkpoint ("batchtopk") in its inference form, as jumprelu. Fields
SAELens uses that are implemented by folding (apply_b_dec_to_input false,
rescale_acts_by_decoder_norm true) are folded into the params; fields asking for behaviour not
implemented here are refused by name (see `interop.saelens`). The SAE does not hold the hook
point: `from_saelens(directory)[1]["hook_name"]` has it, or None where the file does not say.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from superpos_jax.interop import bounded_json
from superpos_jax.interop.safetensors import load_file, save_file, write_atomic
from superpos_jax.interop.saelens import CFG_FILENAME, WEIGHTS_FILENAME, SAELensFormatError, from_saelens, save_saelens
from superpos_jax.sae.architectures import Transcoder, for_saelens, get, names
from superpos_jax.sae.model import SAE

OWN_FORMAT = 1
"""The version of this library's own SAE layout (`superpos_format` in cfg.json)."""


def save_sae(sae: SAE, directory: str | os.PathLike[str], *, hook_name: str, model_name: str, **cfg: Any) -> Path:
    """Write one SAE as a SAELens directory (`cfg.json` + `sae_weights.safetensors`); `hook_name`
    and `model_name` go into cfg.json's `metadata` (and its top level), extra `cfg` fields are
    written unchanged. Returns the directory."""
    inference = sae.inference()
    arch = inference.architecture
    if arch.saelens_architecture is None:
        return _save_own(inference, directory, {"hook_name": hook_name, "model_name": model_name, **cfg},
                         sae.architecture.name)
    weights, fields = arch.to_saelens(inference.params, inference.hparams)
    full = {"architecture": arch.saelens_architecture, "hook_name": hook_name, "model_name": model_name,
            **fields, **cfg, "superpos_architecture": sae.architecture.name}
    return save_saelens(directory, weights, full)


def load_sae(directory: str | os.PathLike[str]) -> SAE:
    """A SAELens SAE directory, or one in this library's own layout, as an `SAE` (see the module
    docstring for what loads as what)."""
    own = _own_cfg(Path(directory))
    if own is not None:
        return _load_own(Path(directory), own)
    weights, cfg = from_saelens(directory)
    arch = for_saelens(cfg["architecture"])
    if isinstance(arch, Transcoder) and cfg["d_out"] != cfg["d_in"]:
        arch = dataclasses.replace(arch, d_out=cfg["d_out"])
    params, hparams = arch.from_saelens(weights, cfg)
    return SAE(arch, params, hparams)


def _save_own(inference: SAE, directory: str | os.PathLike[str], cfg: dict[str, Any], trained_as: str) -> Path:
    """Write an SAE in inference form (input scale folded) in the own layout."""
    arch = inference.architecture
    fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch)}
    tensors = {f.name: np.asarray(getattr(inference.params, f.name), np.float32)
               for f in dataclasses.fields(inference.params)}
    tensors.update({f"state.{k}": np.asarray(v, np.float32) for k, v in inference.state.items()})
    tensors.update({f"hparams.{k}": np.asarray(v, np.float32) for k, v in inference.hparams.items()})
    for name, value in fields.items():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise ValueError(f"{arch.name}.{name} = {value!r} cannot be written to cfg.json")
    reserved = ("superpos_format", "architecture", "architecture_fields", "d_in", "d_sae")
    if clash := sorted(set(cfg) & set(reserved)):
        raise ValueError(f"cfg fields {clash} are written by save_sae itself")
    full = {"superpos_format": OWN_FORMAT, "architecture": arch.name, "superpos_architecture": trained_as,
            "architecture_fields": fields, "d_in": inference.d_in, "d_sae": inference.d_sae, **cfg}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILENAME)
    write_atomic(directory / CFG_FILENAME, [(json.dumps(full, indent=2) + "\n").encode("utf-8")])
    return directory


def _own_cfg(directory: Path) -> dict[str, Any] | None:
    """cfg.json of an own-layout directory, None for any other (left to the SAELens reader)."""
    path = directory / CFG_FILENAME
    if not path.is_file():
        return None
    # The same bounds as the SAELens reader (non-finite numbers included: SAELens cfgs hold NaN).
    cfg = bounded_json.read(path, error=SAELensFormatError, max_bytes=16_000_000, max_depth=32, allow_nonfinite=True)
    return cfg if isinstance(cfg, dict) and "superpos_format" in cfg else None


def _load_own(directory: Path, cfg: dict[str, Any]) -> SAE:
    where = str(directory / CFG_FILENAME)
    if cfg["superpos_format"] != OWN_FORMAT:
        raise SAELensFormatError(f"{where}: superpos_format {cfg['superpos_format']!r} is not {OWN_FORMAT}")
    name = cfg.get("architecture")
    if name not in names():
        raise SAELensFormatError(f"{where}: architecture {name!r} is not one of {names()}")
    arch = get(name)
    fields = cfg.get("architecture_fields") or {}
    known = {f.name for f in dataclasses.fields(arch)}
    if not isinstance(fields, dict) or set(fields) - known:
        raise SAELensFormatError(f"{where}: architecture_fields {fields!r} must be fields of {name}: {sorted(known)}")
    try:
        arch = dataclasses.replace(arch, **fields)
    except (TypeError, ValueError) as e:
        raise SAELensFormatError(f"{where}: architecture_fields {fields!r}: {e}") from None
    tensors = load_file(directory / WEIGHTS_FILENAME)
    leaves = {f.name for f in dataclasses.fields(arch.params_type)}
    given = {k for k in tensors if "." not in k}
    if given != leaves:
        raise SAELensFormatError(f"{where}: a {name} needs tensors {sorted(leaves)}, the file has {sorted(given)}")
    for k, t in tensors.items():
        if t.dtype != np.float32 or not np.all(np.isfinite(t)):
            raise SAELensFormatError(f"{where}: tensor {k!r} must be finite float32")
    params = arch.params_type(**{k: jnp.asarray(tensors[k]) for k in leaves})
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    for field, value in (("W_enc", (d_sae, d_in)), ("b_enc", (d_sae,))):
        if tensors[field].shape != value:
            raise SAELensFormatError(f"{where}: tensor {field!r} has shape {tensors[field].shape}, expected {value} "
                                     f"(d_in={d_in}, d_sae={d_sae})")
    state = {k.removeprefix("state."): jnp.asarray(v) for k, v in tensors.items() if k.startswith("state.")}
    hparams = {k.removeprefix("hparams."): jnp.asarray(v) for k, v in tensors.items() if k.startswith("hparams.")}
    return SAE(arch, params, hparams, state)
