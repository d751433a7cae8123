"""Save and load sparse autoencoders in the SAELens directory layout.

A SAELens SAE directory holds two files:

    cfg.json                  the configuration (JSON object)
    sae_weights.safetensors   the parameters, under SAELens's names and shapes

Parameter conventions. SAELens computes `x @ W_enc`, so its encoder is (d_in, d_sae) and its decoder
(d_sae, d_in). This library writes maps as matrices acting on column vectors, so OUR weights are
transposed:

    name        ours             SAELens          architectures
    W_enc       (d_sae, d_in)    (d_in, d_sae)    all
    W_dec       (d_in, d_sae)    (d_sae, d_in)    all
    b_dec       (d_in,)          (d_in,)          all
    b_enc       (d_sae,)         (d_sae,)         standard, topk, jumprelu
    threshold   (d_sae,)         (d_sae,)         jumprelu
    b_gate      (d_sae,)         (d_sae,)         gated
    r_mag       (d_sae,)         (d_sae,)         gated
    b_mag       (d_sae,)         (d_sae,)         gated

The weights interface here is a plain `dict[str, np.ndarray]` with the names above in OUR
convention, so it does not depend on the model classes: each SAE architecture converts its own
params to and from such a dict (`superpos_jax.sae.architectures`, `Architecture.to_saelens` /
`from_saelens`; `superpos_jax.sae.io.save_sae` / `load_sae` for a whole `SAE`). The branches below
are on SAELens's architecture names (its file format), not on ours.

cfg.json fields written (`saelens_cfg`), following SAELens's flat (v5) layout, which its loaders
still read, plus the v6 top-level `k` for TopK:

    architecture            "standard" | "topk" | "jumprelu" | "gated"           (required in `cfg`)
    d_in, d_sae             ints, inferred from the weights (checked if given)
    dtype                   "float32" | "float64" | "float16" | "bfloat16", from W_enc (checked if given)
    device                  "cpu"
    hook_name, model_name   strs                                                 (required in `cfg`)
    hook_layer              int or null (default null)
    hook_head_index         int or null (default null)
    apply_b_dec_to_input    bool (default true)
    normalize_activations   "none" (default)
    activation_fn_str       "relu", or "topk" for topk
    activation_fn_kwargs    {} or, for topk, {"k": k}
    k                       topk only: the number of active latents               (required for topk)
    finetuning_scaling_factor  false
    sae_lens_training_version  null
    context_size, prepend_bos, dataset_path, model_from_pretrained_kwargs: defaults, overridable

Any other field in `cfg` is written unchanged, and every field of a loaded cfg.json is kept, known or
not. On load, `hook_name`/`model_name` missing at top level are copied from a SAELens v6 nested
`"metadata"` object if it has them; a missing `architecture` means "standard" (SAELens's default).
Tensors are returned in the dtype they were stored in (cfg `dtype` is what SAELens would cast to).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from superpos_jax.interop import bounded_json
from superpos_jax.interop.safetensors import load_file, save_file, write_atomic

__all__ = [
    "ARCHITECTURES",
    "CFG_FIELDS",
    "CFG_FILENAME",
    "WEIGHTS_FILENAME",
    "SAELensFormatError",
    "UNSUPPORTED",
    "check_cfg_types",
    "check_supported",
    "from_saelens",
    "saelens_cfg",
    "save_saelens",
    "to_saelens",
    "weights_from_saelens",
]

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}
"""Architecture → the tensors its SAELens weights file holds (no more, no fewer)."""

_TRANSPOSED = ("W_enc", "W_dec")
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
_MAX_CFG_BYTES = 16_000_000
_MAX_CFG_DEPTH = 32
_DEFAULTS: dict[str, Any] = {
    "device": "cpu",
    "hook_layer": None,
    "hook_head_index": None,
    "apply_b_dec_to_input": True,
    "normalize_activations": "none",
    "finetuning_scaling_factor": False,
    "sae_lens_training_version": None,
    "context_size": None,
    "prepend_bos": True,
    "dataset_path": None,
    "model_from_pretrained_kwargs": {},
}


class SAELensFormatError(ValueError):
    """An SAE directory, config or weights dict does not fit the SAELens layout."""


def _shapes(architecture: str, d_in: int, d_sae: int, *, ours: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {name: (d_sae,) for name in ARCHITECTURES[architecture]}
    shapes["b_dec"] = (d_in,)
    shapes["W_enc"] = (d_sae, d_in) if ours else (d_in, d_sae)
    shapes["W_dec"] = (d_in, d_sae) if ours else (d_sae, d_in)
    return shapes


def _architecture(cfg: Mapping[str, Any]) -> str:
    architecture = cfg.get("architecture", "standard")
    if not isinstance(architecture, str) or architecture not in ARCHITECTURES:
        raise SAELensFormatError(f"cfg architecture {architecture!r} is not one of {sorted(ARCHITECTURES)}")
    return architecture


def _positive_int(cfg: Mapping[str, Any], field: str) -> int:
    if field not in cfg:
        raise SAELensFormatError(f"cfg is missing required field {field!r}")
    value = cfg[field]
    if not _is_int(value) or value < 1:
        raise SAELensFormatError(f"cfg field {field!r} must be a positive int, got {bounded_json.short(value)}")
    return value


def _topk_k(cfg: Mapping[str, Any], d_sae: int) -> int:
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise SAELensFormatError(f"cfg field 'activation_fn_kwargs' must be an object, got {kwargs!r}")
    given = [v for v in (cfg.get("k"), kwargs.get("k")) if v is not None]
    for k in given:
        if not _is_int(k) or not 1 <= k <= d_sae:
            raise SAELensFormatError(f"topk cfg k must be an int in [1, d_sae={d_sae}], got {k!r}")
    candidates = set(given)
    if not candidates:
        raise SAELensFormatError("topk cfg is missing 'k' (top level or in 'activation_fn_kwargs')")
    if len(candidates) > 1:
        raise SAELensFormatError(f"topk cfg gives conflicting k values {sorted(candidates)}")
    (k,) = candidates
    return k


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FieldRule = tuple[Callable[[Any], bool], str]
_OPTIONAL_INT: _FieldRule = (lambda v: v is None or _is_int(v), "an int or null")
_OPTIONAL_STR: _FieldRule = (lambda v: v is None or isinstance(v, str), "a string or null")
_STR: _FieldRule = (lambda v: isinstance(v, str), "a string")
_BOOL: _FieldRule = (lambda v: isinstance(v, bool), "true or false")
_OBJECT: _FieldRule = (lambda v: v is None or isinstance(v, dict), "a JSON object or null")
CFG_FIELDS: dict[str, _FieldRule] = {
    "architecture": (lambda v: isinstance(v, str) and v in ARCHITECTURES, f"one of {sorted(ARCHITECTURES)}"),
    "d_in": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "d_sae": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "dtype": _STR,
    "device": _STR,
    "hook_name": _STR,
    "model_name": _STR,
    "hook_layer": _OPTIONAL_INT,
    "hook_head_index": _OPTIONAL_INT,
    "apply_b_dec_to_input": _BOOL,
    "normalize_activations": _OPTIONAL_STR,
    "activation_fn_str": _STR,
    "activation_fn_kwargs": _OBJECT,
    "k": _OPTIONAL_INT,
    "finetuning_scaling_factor": _BOOL,
    "sae_lens_training_version": _OPTIONAL_STR,
    "context_size": _OPTIONAL_INT,
    "prepend_bos": _BOOL,
    "dataset_path": _OPTIONAL_STR,
    "model_from_pretrained_kwargs": _OBJECT,
    "metadata": _OBJECT,
    "superpos_architecture": _STR,
}
"""The cfg.json fields this module reads or writes → (test, what is allowed). Any other field is
kept as it is."""


_NONE_STRINGS = (None, "none")
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "apply_b_dec_to_input": (lambda v: v is True, "true (b_dec is always subtracted from the input here)"),
    "normalize_activations": (lambda v: v in _NONE_STRINGS,
                              '"none" or null (no input normalisation is implemented here)'),
    "rescale_acts_by_decoder_norm": (lambda v: v is False or v is None,
                                     "false (latents are not rescaled by decoder norms here)"),
    "reshape_activations": (lambda v: v in _NONE_STRINGS, '"none" (hook_z reshaping is not implemented here)'),
    "finetuning_scaling_factor": (lambda v: v is False or v is None, "false (no fine-tuning scale is applied here)"),
    "hook_head_index": (lambda v: v is None, "null (single-head hook points are not implemented here)"),
    "activation_fn_str": (lambda v: v in ("relu", "topk"), '"relu", or "topk" for topk'),
}
"""cfg.json fields that change what an SAE computes → (accepted, what is allowed). A value this
module does not implement is refused (`check_supported`) rather than loaded into an SAE whose
encodings would be wrong."""


def check_supported(cfg: Mapping[str, Any], where: str = "cfg") -> None:
    """Refuse a cfg whose fields ask for behaviour not implemented here (`UNSUPPORTED`), naming
    `where`, the field, its value and what is allowed; TopK's `activation_fn_str` must be
    "topk" and the others' "relu"."""
    for field, (test, allowed) in UNSUPPORTED.items():
        if field in cfg and not test(cfg[field]):
            raise SAELensFormatError(f"{where}: field {field!r} = {bounded_json.short(cfg[field])} is not supported: "
                                     f"must be {allowed}")
    fn = cfg.get("activation_fn_str")
    if fn is not None and cfg.get("architecture") in ARCHITECTURES:
        expected = "topk" if cfg["architecture"] == "topk" else "relu"
        if fn != expected:
            raise SAELensFormatError(f"{where}: field 'activation_fn_str' = {bounded_json.short(fn)} is not supported "
                                     f"for a {cfg['architecture']} SAE: must be {expected!r}")


def check_cfg_types(cfg: Mapping[str, Any], where: str = "cfg") -> None:
    """Check the type of every known field present in `cfg` (`CFG_FIELDS`), before any is used.
    Raises `SAELensFormatError` naming `where`, the field, its value and what is allowed."""
    for field, (test, allowed) in CFG_FIELDS.items():
        if field in cfg and not test(cfg[field]):
            raise SAELensFormatError(f"{where}: field {field!r} = {bounded_json.short(cfg[field])} is invalid: must be {allowed}")


def _check_tensor_names(architecture: str, names: set[str], where: str) -> None:
    expected = set(ARCHITECTURES[architecture])
    if missing := expected - names:
        raise SAELensFormatError(f"{where}: {architecture} SAE is missing tensor(s) {sorted(missing)}")
    if unexpected := names - expected:
        raise SAELensFormatError(
            f"{where}: unexpected tensor(s) {sorted(unexpected)} for a {architecture} SAE (expects {sorted(expected)})"
        )


def _check_shapes(
    tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], where: str, dims: str
) -> None:
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise SAELensFormatError(
                f"{where}: tensor {name!r} has shape {tensors[name].shape}, expected {shape} ({dims})"
            )


def _dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in _DTYPE_NAMES:
        raise SAELensFormatError(f"W_enc dtype {name!r} is not a SAELens float dtype {_DTYPE_NAMES}")
    return name


def _check_float_tensors(tensors: Mapping[str, np.ndarray], where: str) -> None:
    """Every tensor of a float dtype SAELens uses, with finite values only."""
    for name, tensor in tensors.items():
        if tensor.dtype.name not in _DTYPE_NAMES:
            raise SAELensFormatError(
                f"{where}: tensor {name!r} has dtype {tensor.dtype.name}; SAE weights must be one of {_DTYPE_NAMES}")
        if not np.all(np.isfinite(tensor)):
            bad = int(np.size(tensor) - np.count_nonzero(np.isfinite(tensor)))
            raise SAELensFormatError(f"{where}: tensor {name!r} holds {bad} non-finite values (NaN or inf)")


def saelens_cfg(cfg: Mapping[str, Any], *, d_in: int, d_sae: int, dtype: str) -> dict[str, Any]:
    """The full cfg.json object for an SAE of the given sizes and dtype name.

    `cfg` must give `architecture`, `hook_name` and `model_name` (and `k` for topk, at top level or
    as `activation_fn_kwargs["k"]`); it may override any default field and add extra ones, which
    are kept. `d_in`, `d_sae`, `dtype` in `cfg`, if present, must agree with the arguments.
    Raises `SAELensFormatError` naming the offending field.
    """
    if "architecture" not in cfg:
        raise SAELensFormatError("cfg is missing required field 'architecture'")
    architecture = _architecture(cfg)
    for field in ("hook_name", "model_name"):
        if not isinstance(cfg.get(field), str):
            raise SAELensFormatError(f"cfg field {field!r} is required and must be a str, got {cfg.get(field)!r}")
    for field, value in (("d_in", d_in), ("d_sae", d_sae), ("dtype", dtype)):
        if field in cfg and cfg[field] != value:
            raise SAELensFormatError(f"cfg field {field!r} is {cfg[field]!r} but the weights give {value!r}")
    out: dict[str, Any] = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": dtype}
    out.update(_DEFAULTS)
    out["activation_fn_str"] = "topk" if architecture == "topk" else "relu"
    out["activation_fn_kwargs"] = {}
    out.update(cfg)
    check_cfg_types(out)
    check_supported(out)
    if architecture == "topk":
        k = _topk_k(out, d_sae)
        out["k"] = k
        out["activation_fn_kwargs"] = {**out["activation_fn_kwargs"], "k": k}
    return out


def to_saelens(
    weights: Mapping[str, npt.ArrayLike], cfg: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Convert weights in OUR convention and a partial cfg to SAELens tensors and a full cfg.json.

    Args:
        weights: name → array, the tensors of `ARCHITECTURES[cfg["architecture"]]` in our
            convention (W_enc (d_sae, d_in), W_dec (d_in, d_sae)); numpy or JAX arrays.
        cfg: partial config, see `saelens_cfg`.

    Returns:
        `(tensors, cfg_json)`: tensors in SAELens shapes (W_enc (d_in, d_sae), W_dec (d_sae, d_in)),
        C-contiguous, same dtypes; and the full cfg.json object.

    Raises `SAELensFormatError` for a missing/unexpected tensor or a shape that disagrees with
    W_enc's (d_sae, d_in), naming it.
    """
    if "architecture" not in cfg:
        raise SAELensFormatError("cfg is missing required field 'architecture'")
    architecture = _architecture(cfg)
    arrays = {name: np.asarray(value) for name, value in weights.items()}
    _check_tensor_names(architecture, set(arrays), "weights")
    if arrays["W_enc"].ndim != 2:
        raise SAELensFormatError(f"weights: W_enc must be 2-D (d_sae, d_in), got shape {arrays['W_enc'].shape}")
    d_sae, d_in = arrays["W_enc"].shape
    shapes = _shapes(architecture, d_in, d_sae, ours=True)
    _check_shapes(arrays, shapes, "weights", f"our convention, d_in={d_in}, d_sae={d_sae} from W_enc")
    cfg_json = saelens_cfg(cfg, d_in=d_in, d_sae=d_sae, dtype=_dtype_name(arrays["W_enc"].dtype))
    _check_float_tensors(arrays, "weights")
    tensors = {
        name: np.ascontiguousarray(array.T if name in _TRANSPOSED else array) for name, array in arrays.items()
    }
    return tensors, cfg_json


def weights_from_saelens(
    tensors: Mapping[str, np.ndarray], cfg: Mapping[str, Any], *, where: str = "SAELens weights"
) -> dict[str, np.ndarray]:
    """Convert SAELens tensors, validated against `cfg`'s architecture, d_in and d_sae, to OUR convention.

    Returns name → array with W_enc (d_sae, d_in) and W_dec (d_in, d_sae), other tensors unchanged.
    Raises `SAELensFormatError` naming a missing or unexpected tensor, a shape that disagrees with
    d_in/d_sae, or a bad cfg field (`d_in`, `d_sae`, `architecture`, topk `k`).
    """
    check_cfg_types(cfg)
    check_supported(cfg)
    architecture = _architecture(cfg)
    d_in, d_sae = _positive_int(cfg, "d_in"), _positive_int(cfg, "d_sae")
    if architecture == "topk":
        _topk_k(cfg, d_sae)
    _check_tensor_names(architecture, set(tensors), where)
    _check_float_tensors(tensors, where)
    _check_shapes(tensors, _shapes(architecture, d_in, d_sae, ours=False), where,
                  f"SAELens convention, d_in={d_in}, d_sae={d_sae} from cfg")
    return {name: np.ascontiguousarray(t.T) if name in _TRANSPOSED else t for name, t in tensors.items()}


def _write_json_atomic(obj: Mapping[str, Any], path: Path) -> None:
    write_atomic(path, [(json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")])


def save_saelens(
    directory: str | os.PathLike[str], weights: Mapping[str, npt.ArrayLike], cfg: Mapping[str, Any]
) -> Path:
    """Write an SAE (weights in OUR convention, partial cfg) as a SAELens directory; return it.

    Creates `directory` if needed and writes `sae_weights.safetensors` then `cfg.json`, each
    atomically (temporary file + rename). Validation happens before anything is written.
    """
    tensors, cfg_json = to_saelens(weights, cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / WEIGHTS_FILENAME)
    _write_json_atomic(cfg_json, directory / CFG_FILENAME)
    return directory


def from_saelens(directory: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a SAELens SAE directory as `(weights in OUR convention, cfg dict)`.

    The cfg is cfg.json as stored, every field kept, with `architecture` filled in ("standard") if
    absent and `hook_name`/`model_name` copied up from a v6 `"metadata"` object if absent at top
    level. cfg.json is read with bounds (at most 16 MB, nesting at most 32 deep) and the type of
    every known field (`CFG_FIELDS`) is checked before any is used; `hook_name` is required.
    Tensors must have a float dtype SAELens uses and finite values.

    Raises `FileNotFoundError` naming a missing file, `SAELensFormatError` for an invalid cfg.json
    or mismatched/missing/non-float tensors, `SafetensorsError` for a corrupt weights file.
    """
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILENAME, directory / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"SAELens directory {directory} has no {path.name}")
    cfg = bounded_json.read(cfg_path, error=SAELensFormatError, max_bytes=_MAX_CFG_BYTES, max_depth=_MAX_CFG_DEPTH,
                            allow_nonfinite=True)
    if not isinstance(cfg, dict):
        raise SAELensFormatError(f"{cfg_path}: must hold a JSON object, got {type(cfg).__name__}")
    cfg.setdefault("architecture", "standard")
    metadata = cfg.get("metadata")
    if isinstance(metadata, dict):
        for field in ("hook_name", "model_name"):
            if field not in cfg and field in metadata:
                cfg[field] = metadata[field]
    check_cfg_types(cfg, str(cfg_path))
    check_supported(cfg, str(cfg_path))
    if "hook_name" not in cfg:
        raise SAELensFormatError(f"{cfg_path}: required field 'hook_name' is missing (at top level and in 'metadata')")
    try:
        weights = weights_from_saelens(load_file(weights_path), cfg, where=str(weights_path))
    except SAELensFormatError as e:
        if str(directory) in str(e):
            raise
        raise SAELensFormatError(f"{cfg_path}: {e}") from None
    return weights, cfg
