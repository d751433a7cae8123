"""Save and load sparse autoencoders in the SAELens directory layout.

A SAELens SAE directory holds two files:

    cfg.json                  the configuration (JSON object)
    sae_weights.safetensors   the parameters, under SAELens's names and shapes

Parameter conventions. SAELens computes `x @ W_enc`, so its encoder is (d_in, d_sae) and its decoder
(d_sae, d_in). This library writes maps as matrices acting on column vectors, so OUR weights are
transposed:

    name        ours             SAELens          architectures
    W_enc       (d_sae, d_in)    (d_in, d_sae)    all
    W_dec       (d_in, d_sae)    (d_sae, d_in)    all (transcoders: d_out for d_in)
    b_dec       (d_in,)          (d_in,)          all (transcoders: (d_out,))
    b_enc       (d_sae,)         (d_sae,)         standard, topk, jumprelu, transcoders
    threshold   (d_sae,)         (d_sae,)         jumprelu
    b_gate      (d_sae,)         (d_sae,)         gated
    r_mag       (d_sae,)         (d_sae,)         gated
    b_mag       (d_sae,)         (d_sae,)         gated
    W_skip      (d_out, d_in)    (d_out, d_in)    skip_transcoder (not transposed: both compute x W_skipᵀ)

Transcoders ("transcoder", "skip_transcoder": read an input of width d_in, predict an output of
width d_out, cfg field `d_out`) never subtract b_dec from the input (b_dec is the output's bias),
in SAELens as here: their files say apply_b_dec_to_input false, and that is their own semantics,
not something to fold.

The weights interface here is a plain `dict[str, np.ndarray]` with the names above in OUR
convention, and OUR semantics: b_dec is subtracted from the input, pre-activations are not
rescaled by decoder norms (each SAE architecture converts its own params to and from such a dict:
`Architecture.to_saelens` / `from_saelens`; `superpos_jax.sae.io.save_sae` / `load_sae` for a
whole `SAE`). The branches below are on SAELens's architecture names (its file format), not on ours.

Writing (`saelens_cfg`, `save_saelens`): the SAELens 6 layout, which `sae_lens.SAE.load_from_disk`
loads (tested against sae-lens 6.54.12):

    architecture            "standard" | "topk" | "jumprelu" | "gated" | "transcoder" |
                            "skip_transcoder"                                    (required in `cfg`)
    d_in, d_sae, dtype      from the weights (checked if given); dtype from W_enc
    d_out                   transcoders: from W_dec (checked if given)
    device                  "cpu" (overridable)
    apply_b_dec_to_input    true (transcoders: false);  normalize_activations "none";
                            reshape_activations "none"
    k                       topk: the number of active latents (required, `k` or legacy
                            `activation_fn_kwargs["k"]`); with rescale_acts_by_decoder_norm false
    metadata                `cfg["metadata"]` + {"model_name", "hook_name", "sae_lens_version":
                            SAELENS_VERSION} (defaults: sae_lens_training_version null,
                            hook_head_index null)
    hook_name, model_name   also at top level (str or null): SAELens 6 ignores top-level fields
                            that its config class lacks, and readers of the flat layout find them

Any other field of `cfg` is written unchanged at top level.

Reading (`from_saelens`, `from_saelens_tensors`): files written here, by sae-lens 6 (`save_model`
of inference and training SAEs, `save_inference_model`) and by sae-lens < 6 (flat layout). Every
field SAELens 6.54.12 reads for the shared architectures is either implemented or refused, naming
the field, its value and what is allowed (`SAELensFormatError`):

    field                         accepted (and how)
    architecture                  standard, topk, jumprelu, gated, transcoder, skip_transcoder,
                                  batchtopk and matryoshka_batchtopk (training checkpoints) (absent:
                                  "standard"); others (abstopk, jumprelu_transcoder,
                                  jumprelu_skip_transcoder, temporal, matching_pursuit) refused
    d_in, d_sae                   positive ints, checked against the tensors
    d_out                         transcoders: a positive int, checked against the tensors
    dtype                         float32/float64/float16/bfloat16 (or "torch."-prefixed); tensors are
                                  returned as stored (SAELens would cast them to dtype)
    device                        any string (ignored: arrays load on the host)
    apply_b_dec_to_input          true; false is folded into the encoder biases (exact):
                                  b_enc += b_dec W_enc; gated b_gate += b_dec W_enc,
                                  b_mag += exp(r_mag) ⊙ b_dec W_enc. Transcoders: false only
                                  (as SAELens requires), kept as it is
    rescale_acts_by_decoder_norm  false; true (topk, batchtopk: SAELens's TopK training default) is
                                  folded (exact): W_enc·n, b_enc·n, W_dec/n, n_i = ‖W_dec row i‖;
                                  refused for other architectures
    normalize_activations         "none"/null/false; refused: layer_norm, constant_norm_rescale
                                  (per-input normalisation, not implemented here),
                                  expected_average_only_in, covariance_whitening, true (statistics
                                  not stored in the files; SAELens folds them in after training)
    reshape_activations           "none"; "hook_z" refused
    k                             topk: int in [1, d_sae]; batchtopk: number > 0 (not read)
    hook_head_index (top level, `hook_point_head_index`, metadata)   null only
    activation_fn_str / activation_fn   legacy: "relu", "topk" for topk; others refused. A pre-6
                                  "standard" file with "topk" and activation_fn_kwargs k is a topk
                                  SAE (as SAELens reads it)
    finetuning_scaling_factor     legacy: false/null; a `scaling_factor` tensor of ones is dropped,
                                  any other refused
    hook_name, model_name         str or null, top level or in `metadata` (they must agree);
                                  legacy `hook_point`; absent: null (a consumer needing the hook
                                  point must complain)

Accepted and not read (kept in the returned cfg): the training-only fields `TRAINING_FIELDS`,
every `metadata` field but hook_name/model_name/hook_head_index, and any field unknown here
(SAELens 6.54.12 keeps only its config class's fields, so such a field does not change what it
computes either; a field a later sae-lens adds is not recognised). A SAELens BatchTopK training
checkpoint (architecture "batchtopk" or "matryoshka_batchtopk", scalar `topk_threshold`) loads in
the form SAELens's `save_inference_model` writes it: a JumpReLU whose every threshold is
`topk_threshold` (after the decoder-norm fold); a JumpReLU with `log_threshold` (older training
checkpoints) gets threshold = exp(log_threshold).

The returned cfg describes the returned weights: `architecture` is one of `ARCHITECTURES`,
`apply_b_dec_to_input` is true and `rescale_acts_by_decoder_norm` false where a fold was applied,
`hook_name`/`model_name` are at top level (null if unknown); every other field is as stored.
"""

from __future__ import annotations

import json
import math
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
    "LOADED_ARCHITECTURES",
    "METADATA_FIELDS",
    "SAELENS_VERSION",
    "TRAINING_FIELDS",
    "UNSUPPORTED",
    "WEIGHTS_FILENAME",
    "TRANSCODERS",
    "SAELensFormatError",
    "check_cfg_types",
    "check_supported",
    "from_saelens",
    "from_saelens_tensors",
    "saelens_cfg",
    "save_saelens",
    "to_saelens",
    "weights_from_saelens",
]

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAELENS_VERSION = "6.54.12"
"""The sae-lens version whose layout is written (`metadata.sae_lens_version`); SAELens reads a
file without a version >= 6 as the older flat layout."""

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
    "transcoder": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "skip_transcoder": ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"),
}
"""Architecture → the tensors of its weights (written, and returned by the readers): no more, no
fewer."""

TRANSCODERS: tuple[str, ...] = ("transcoder", "skip_transcoder")
"""The architectures that predict another activation (cfg `d_out`; b_dec never subtracted)."""

LOADED_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    **ARCHITECTURES,
    "batchtopk": ("W_enc", "b_enc", "W_dec", "b_dec", "topk_threshold"),
    "matryoshka_batchtopk": ("W_enc", "b_enc", "W_dec", "b_dec", "topk_threshold"),
}
"""Architecture → the tensors a SAELens weights file of it holds, as read (besides these, a
jumprelu file may hold `log_threshold` instead of `threshold`, and a legacy file a
`scaling_factor` of ones)."""

TRAINING_FIELDS: tuple[str, ...] = (
    "decoder_init_norm", "l1_coefficient", "lp_norm", "l1_warm_up_steps", "use_sparse_activations",
    "aux_loss_coefficient", "topk_threshold_lr", "jumprelu_init_threshold", "jumprelu_bandwidth",
    "jumprelu_sparsity_loss_mode", "l0_coefficient", "l0_warm_up_steps", "pre_act_loss_coefficient",
    "jumprelu_tanh_scale", "jumprelu_ste_to_input", "target_l0", "matryoshka_widths", "use_matryoshka_aux_loss",
)
"""The fields SAELens 6.54.12's training configs (standard, topk, batchtopk, matryoshka_batchtopk,
jumprelu, gated) add
to cfg.json: they shape training only, so they are accepted and not read."""

_TRANSPOSED = ("W_enc", "W_dec")
_DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")
_CFG_DTYPES = _DTYPE_NAMES + tuple(f"torch.{name}" for name in _DTYPE_NAMES)
_MAX_CFG_BYTES = 16_000_000
_MAX_CFG_DEPTH = 32
_BATCHTOPK = ("batchtopk", "matryoshka_batchtopk")
_RESCALING = ("topk", *_BATCHTOPK)


class SAELensFormatError(ValueError):
    """An SAE directory, config or weights dict does not fit the SAELens layout."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


_FieldRule = tuple[Callable[[Any], bool], str]
_OPTIONAL_INT: _FieldRule = (lambda v: v is None or _is_int(v), "an int or null")
_OPTIONAL_STR: _FieldRule = (lambda v: v is None or isinstance(v, str), "a string or null")
_STR: _FieldRule = (lambda v: isinstance(v, str), "a string")
_BOOL: _FieldRule = (lambda v: isinstance(v, bool), "true or false")
_OPTIONAL_BOOL: _FieldRule = (lambda v: v is None or isinstance(v, bool), "true, false or null")
_OBJECT: _FieldRule = (lambda v: v is None or isinstance(v, dict), "a JSON object or null")
CFG_FIELDS: dict[str, _FieldRule] = {
    "architecture": (lambda v: isinstance(v, str) and v in LOADED_ARCHITECTURES,
                     f"one of {sorted(LOADED_ARCHITECTURES)} (the SAELens architectures implemented here)"),
    "d_in": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "d_sae": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "d_out": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "dtype": (lambda v: isinstance(v, str) and v in _CFG_DTYPES, f"a string naming a float dtype {_DTYPE_NAMES}"),
    "device": _STR,
    "apply_b_dec_to_input": _BOOL,
    "normalize_activations": (lambda v: v is None or isinstance(v, (str, bool)), "a string, a bool or null"),
    "reshape_activations": _OPTIONAL_STR,
    "rescale_acts_by_decoder_norm": _OPTIONAL_BOOL,
    "k": (lambda v: v is None or _is_number(v), "an int or null (a number for batchtopk)"),
    "metadata": _OBJECT,
    "hook_name": _OPTIONAL_STR,
    "model_name": _OPTIONAL_STR,
    "hook_point": _OPTIONAL_STR,
    "hook_layer": _OPTIONAL_INT,
    "hook_head_index": _OPTIONAL_INT,
    "hook_point_head_index": _OPTIONAL_INT,
    "activation_fn_str": _OPTIONAL_STR,
    "activation_fn": _OPTIONAL_STR,
    "activation_fn_kwargs": _OBJECT,
    "finetuning_scaling_factor": _OPTIONAL_BOOL,
    "sae_lens_version": _OPTIONAL_STR,
    "sae_lens_training_version": _OPTIONAL_STR,
    "context_size": _OPTIONAL_INT,
    "prepend_bos": _BOOL,
    "dataset_path": _OPTIONAL_STR,
    "model_from_pretrained_kwargs": _OBJECT,
    "superpos_architecture": _STR,
}
"""The top-level cfg.json fields read here → (test, what is allowed). The types are checked before
any value is used; other fields are kept as they are."""

METADATA_FIELDS: dict[str, _FieldRule] = {
    "hook_name": _OPTIONAL_STR,
    "model_name": _OPTIONAL_STR,
    "hook_head_index": _OPTIONAL_INT,
    "sae_lens_version": _OPTIONAL_STR,
}
"""The fields of cfg.json's `metadata` object read here → (test, what is allowed); the others
(sae_lens_training_version, context_size, prepend_bos, seqpos_slice, dataset_path,
model_from_pretrained_kwargs, neuronpedia_id, training_architecture, l0, ...) are kept unread."""

_NONE_STRINGS = (None, "none")
UNSUPPORTED: dict[str, _FieldRule] = {
    "normalize_activations": (lambda v: v in _NONE_STRINGS or v is False,
                              '"none" (or null/false): "layer_norm" and "constant_norm_rescale" normalise each '
                              'input, which is not implemented here; "expected_average_only_in", '
                              '"covariance_whitening" (and true) need statistics the SAE files do not hold '
                              "(SAELens folds them into the weights after training and writes \"none\")"),
    "reshape_activations": (lambda v: v in _NONE_STRINGS, '"none" (hook_z reshaping is not implemented here)'),
    "finetuning_scaling_factor": (lambda v: v is False or v is None, "false (no fine-tuning scale is applied here)"),
    "hook_head_index": (lambda v: v is None, "null (single-head hook points are not implemented here)"),
    "hook_point_head_index": (lambda v: v is None, "null (single-head hook points are not implemented here)"),
    "metadata.hook_head_index": (lambda v: v is None, "null (single-head hook points are not implemented here)"),
    "activation_fn_str": (lambda v: v in (None, "relu", "topk"), '"relu", or "topk" for topk'),
    "activation_fn": (lambda v: v in (None, "relu", "topk"), '"relu", or "topk" for topk'),
}
"""cfg.json fields (`metadata.` for those in the metadata object) whose other values change what an
SAE computes in a way not implemented here → (accepted, what is allowed). Such a value is refused
(`check_supported`) rather than loaded into an SAE whose encodings would be wrong. (Implemented by
folding, not listed: apply_b_dec_to_input false, rescale_acts_by_decoder_norm true.)"""


def _field(cfg: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """(present, value) of a top-level field or, for "metadata.x", of a metadata field."""
    if name.startswith("metadata."):
        metadata = cfg.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        key = name.removeprefix("metadata.")
        return key in metadata, metadata.get(key)
    return name in cfg, cfg.get(name)


def check_cfg_types(cfg: Mapping[str, Any], where: str = "cfg") -> None:
    """Check the type of every field read here (`CFG_FIELDS`, and `METADATA_FIELDS` inside
    `metadata`) that `cfg` has, before any is used. Raises `SAELensFormatError` naming `where`, the
    field, its value and what is allowed."""
    for field, (test, allowed) in CFG_FIELDS.items():
        if field in cfg and not test(cfg[field]):
            raise SAELensFormatError(f"{where}: field {field!r} = {bounded_json.short(cfg[field])} is invalid: must be {allowed}")
    metadata = cfg.get("metadata")
    for field, (test, allowed) in METADATA_FIELDS.items():
        if isinstance(metadata, Mapping) and field in metadata and not test(metadata[field]):
            raise SAELensFormatError(f"{where}: field 'metadata.{field}' = {bounded_json.short(metadata[field])} is "
                                     f"invalid: must be {allowed}")


def check_supported(cfg: Mapping[str, Any], where: str = "cfg") -> None:
    """Refuse a cfg whose fields ask for behaviour not implemented here (`UNSUPPORTED`; the
    activation function must be "topk" for a topk SAE and "relu" for the others;
    rescale_acts_by_decoder_norm true only for topk and batchtopk; apply_b_dec_to_input false for
    transcoders, absent meaning true as in SAELens), naming `where`, the field, its value and what
    is allowed."""
    for field, (test, allowed) in UNSUPPORTED.items():
        present, value = _field(cfg, field)
        if present and not test(value):
            raise SAELensFormatError(f"{where}: field {field!r} = {bounded_json.short(value)} is not supported: "
                                     f"must be {allowed}")
    architecture = cfg.get("architecture", "standard")
    for field in ("activation_fn_str", "activation_fn"):
        fn = cfg.get(field)
        if fn is not None and architecture in LOADED_ARCHITECTURES:
            expected = "topk" if architecture in _RESCALING else "relu"
            if fn != expected:
                raise SAELensFormatError(f"{where}: field {field!r} = {bounded_json.short(fn)} is not supported "
                                         f"for a {architecture} SAE: must be {expected!r}")
    if architecture in TRANSCODERS and cfg.get("apply_b_dec_to_input", True) is not False:
        raise SAELensFormatError(f"{where}: field 'apply_b_dec_to_input' = "
                                 f"{bounded_json.short(cfg.get('apply_b_dec_to_input', True))} is not supported for a "
                                 f"{architecture}: must be false (its b_dec is the output's bias, never subtracted "
                                 "from the input)")
    if cfg.get("rescale_acts_by_decoder_norm") is True and architecture not in _RESCALING:
        raise SAELensFormatError(f"{where}: field 'rescale_acts_by_decoder_norm' = True is not supported for a "
                                 f"{architecture} SAE: must be false (only {', '.join(_RESCALING)} SAEs rescale "
                                 "their latents by decoder norms)")


# ----------------------------------------------------------------------------- shapes and tensors


def _architecture(cfg: Mapping[str, Any], known: Mapping[str, tuple[str, ...]] = ARCHITECTURES) -> str:
    architecture = cfg.get("architecture", "standard")
    if not isinstance(architecture, str) or architecture not in known:
        raise SAELensFormatError(f"cfg architecture {architecture!r} is not one of {sorted(known)}")
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


def _shapes(
    names: tuple[str, ...], d_in: int, d_sae: int, *, ours: bool, d_out: int | None = None
) -> dict[str, tuple[int, ...]]:
    d_out = d_in if d_out is None else d_out
    shapes: dict[str, tuple[int, ...]] = {name: (d_sae,) for name in names}
    shapes["b_dec"] = (d_out,)
    shapes["W_enc"] = (d_sae, d_in) if ours else (d_in, d_sae)
    shapes["W_dec"] = (d_out, d_sae) if ours else (d_sae, d_out)
    if "W_skip" in shapes:
        shapes["W_skip"] = (d_out, d_in)
    if "topk_threshold" in shapes:
        shapes["topk_threshold"] = ()
    return shapes


def _check_tensor_names(architecture: str, names: set[str], expected: set[str], where: str) -> None:
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


# ----------------------------------------------------------------------------- writing


_WRITTEN = ("architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
            "reshape_activations", "k", "rescale_acts_by_decoder_norm", "metadata", "hook_name", "model_name",
            "activation_fn_kwargs", "sae_lens_version")


def saelens_cfg(
    cfg: Mapping[str, Any], *, d_in: int, d_sae: int, dtype: str, d_out: int | None = None
) -> dict[str, Any]:
    """The full cfg.json object (SAELens 6 layout, see the module docstring) for an SAE of the given
    sizes and dtype name, whose weights are in this library's convention.

    `cfg` must give `architecture` (one of `ARCHITECTURES`) and, for topk, `k` (top level or as the
    legacy `activation_fn_kwargs["k"]`); `hook_name` and `model_name` are strings or null (absent:
    null), at top level or in a `metadata` object (which is merged into the written one); `d_in`,
    `d_sae`, `dtype` (and a transcoder's `d_out`, required for one), if present, must agree with the
    arguments; any field describing behaviour the weights do not have (apply_b_dec_to_input false, or
    true for a transcoder; rescale_acts_by_decoder_norm true, `UNSUPPORTED`) is refused. Other fields
    are written unchanged. Raises `SAELensFormatError` naming the field.
    """
    if "architecture" not in cfg:
        raise SAELensFormatError("cfg is missing required field 'architecture'")
    architecture = _architecture(cfg)
    check_cfg_types(cfg)
    transcoder = architecture in TRANSCODERS
    if transcoder and d_out is None:
        raise SAELensFormatError(f"a {architecture} needs its output width d_out")
    if not transcoder and "d_out" in cfg:
        raise SAELensFormatError(f"cfg field 'd_out' is only for transcoders {TRANSCODERS}, not {architecture}")
    for field, value in (("d_in", d_in), ("d_sae", d_sae), ("dtype", dtype), ("d_out", d_out)):
        if field in cfg and cfg[field] != value:
            raise SAELensFormatError(f"cfg field {field!r} is {cfg[field]!r} but the weights give {value!r}")
    for field, written in (("apply_b_dec_to_input", not transcoder), ("rescale_acts_by_decoder_norm", False)):
        if field in cfg and cfg[field] is not written:
            raise SAELensFormatError(f"cfg field {field!r} = {cfg[field]!r} is not supported when writing: must be "
                                     f"{str(written).lower()} (the weights are written in this library's convention)")
    check_supported({**cfg, "apply_b_dec_to_input": not transcoder})  # the value written
    metadata = dict(cfg.get("metadata") or {})
    names = {}
    for field in ("hook_name", "model_name"):
        top, inner = cfg.get(field), metadata.get(field)
        if top is not None and inner is not None and top != inner:
            raise SAELensFormatError(f"cfg field {field!r} = {top!r} disagrees with 'metadata.{field}' = {inner!r}")
        names[field] = top if top is not None else inner
    out: dict[str, Any] = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": dtype,
                           "device": cfg.get("device", "cpu"), "apply_b_dec_to_input": not transcoder,
                           "normalize_activations": "none", "reshape_activations": "none"}
    if transcoder:
        out["d_out"] = d_out
    if architecture == "topk":
        out["k"] = _topk_k(cfg, d_sae)
        out["rescale_acts_by_decoder_norm"] = False
    out["metadata"] = {"sae_lens_training_version": None, "hook_head_index": None, **metadata, **names,
                       "sae_lens_version": SAELENS_VERSION}
    out.update(names)
    out.update({field: value for field, value in cfg.items() if field not in _WRITTEN})
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
    _check_tensor_names(architecture, set(arrays), set(ARCHITECTURES[architecture]), "weights")
    if arrays["W_enc"].ndim != 2:
        raise SAELensFormatError(f"weights: W_enc must be 2-D (d_sae, d_in), got shape {arrays['W_enc'].shape}")
    d_sae, d_in = arrays["W_enc"].shape
    d_out = None
    if architecture in TRANSCODERS:
        if arrays["W_dec"].ndim != 2:
            raise SAELensFormatError(f"weights: W_dec must be 2-D (d_out, d_sae), got shape {arrays['W_dec'].shape}")
        d_out = int(arrays["W_dec"].shape[0])
    shapes = _shapes(ARCHITECTURES[architecture], d_in, d_sae, ours=True, d_out=d_out)
    dims = f"d_in={d_in}, d_sae={d_sae} from W_enc" + (f", d_out={d_out} from W_dec" if d_out is not None else "")
    _check_shapes(arrays, shapes, "weights", f"our convention, {dims}")
    cfg_json = saelens_cfg(cfg, d_in=d_in, d_sae=d_sae, dtype=_dtype_name(arrays["W_enc"].dtype), d_out=d_out)
    _check_float_tensors(arrays, "weights")
    tensors = {
        name: np.ascontiguousarray(array.T if name in _TRANSPOSED else array) for name, array in arrays.items()
    }
    return tensors, cfg_json


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


# ----------------------------------------------------------------------------- reading


def _major_version(cfg: Mapping[str, Any]) -> int | None:
    metadata = cfg.get("metadata")
    version = cfg.get("sae_lens_version")
    if not version and isinstance(metadata, Mapping):
        version = metadata.get("sae_lens_version")
    head = str(version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def _resolved(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """cfg with `architecture` filled in (pre-6 topk as SAELens reads it) and `hook_name` /
    `model_name` at top level (from `metadata` or the legacy `hook_point`; null if unknown)."""
    out = dict(cfg)
    out.setdefault("architecture", "standard")
    fn = out.get("activation_fn_str", out.get("activation_fn"))
    kwargs = out.get("activation_fn_kwargs")
    if ((_major_version(out) or 0) < 6 and out["architecture"] == "standard" and fn == "topk"
            and isinstance(kwargs, Mapping) and kwargs.get("k") is not None):
        out["architecture"] = "topk"
    metadata = out.get("metadata") if isinstance(out.get("metadata"), Mapping) else {}
    for field, legacy in (("hook_name", "hook_point"), ("model_name", None)):
        given = {name: value for name, value in ((field, out.get(field)), (f"metadata.{field}", metadata.get(field)),
                                                  (legacy, out.get(legacy) if legacy else None)) if value is not None}
        if len(set(given.values())) > 1:
            raise SAELensFormatError(f"{where}: fields {' and '.join(repr(n) for n in given)} disagree: "
                                     f"{', '.join(bounded_json.short(v) for v in given.values())}")
        out[field] = next(iter(given.values()), None)
    return out


def _folded(array: np.ndarray) -> np.dtype:
    """The dtype a folded tensor is returned in: its own, at least float32."""
    return array.dtype if array.dtype.itemsize >= 4 else np.dtype(np.float32)


def _canonical(
    tensors: Mapping[str, np.ndarray], cfg: dict[str, Any], where: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """SAELens-oriented tensors and resolved cfg of any accepted file → the equivalent tensors of
    one of `ARCHITECTURES` with b_dec subtracted from the input and no decoder-norm rescaling."""
    architecture = _architecture(cfg, LOADED_ARCHITECTURES)
    d_in, d_sae = _positive_int(cfg, "d_in"), _positive_int(cfg, "d_sae")
    transcoder = architecture in TRANSCODERS
    d_out = _positive_int(cfg, "d_out") if transcoder else None
    if architecture == "topk":
        _topk_k(cfg, d_sae)
    if architecture in _BATCHTOPK and not (_is_number(cfg.get("k")) and cfg["k"] > 0):
        raise SAELensFormatError(f"{where}: {architecture} field 'k' = {bounded_json.short(cfg.get('k'))} is invalid: "
                                 "must be a number > 0")
    t = dict(tensors)
    _check_float_tensors(t, where)
    if "scaling_factor" in t:
        scale = t.pop("scaling_factor")
        if scale.shape != (d_sae,) or not np.all(scale.astype(np.float64) == 1.0):
            raise SAELensFormatError(f"{where}: tensor 'scaling_factor' (a fine-tuning scale) must be {d_sae} ones: "
                                     "a finetuning_scaling_factor is not supported here")
    if architecture == "jumprelu" and "log_threshold" in t and "threshold" not in t:
        log_threshold = t.pop("log_threshold")
        t["threshold"] = np.exp(log_threshold.astype(np.float64)).astype(_folded(log_threshold))
    names = LOADED_ARCHITECTURES[architecture]
    _check_tensor_names(architecture, set(t), set(names), where)
    _check_shapes(t, _shapes(names, d_in, d_sae, ours=False, d_out=d_out), where,
                  f"SAELens convention, d_in={d_in}, d_sae={d_sae}" + (f", d_out={d_out}" if transcoder else "")
                  + " from cfg")
    out = dict(cfg)
    fold_b_dec = cfg.get("apply_b_dec_to_input") is False and not transcoder
    rescale = cfg.get("rescale_acts_by_decoder_norm") is True
    wide = {name: t[name].astype(np.float64) for name in t} if fold_b_dec or rescale else {}  # folds in float64
    changed: set[str] = set()
    if fold_b_dec:
        shift = wide["b_dec"] @ wide["W_enc"]
        if architecture == "gated":
            wide["b_gate"] = wide["b_gate"] + shift
            wide["b_mag"] = wide["b_mag"] + np.exp(wide["r_mag"]) * shift
            changed |= {"b_gate", "b_mag"}
        else:
            wide["b_enc"] = wide["b_enc"] + shift
            changed.add("b_enc")
        out["apply_b_dec_to_input"] = True
    if rescale:
        norm = np.maximum(np.linalg.norm(wide["W_dec"], axis=1), 1e-8)
        wide["W_enc"] = wide["W_enc"] * norm[None, :]
        wide["b_enc"] = wide["b_enc"] * norm
        wide["W_dec"] = wide["W_dec"] / norm[:, None]
        changed |= {"W_enc", "b_enc", "W_dec"}
    if "rescale_acts_by_decoder_norm" in cfg or architecture in _BATCHTOPK:
        out["rescale_acts_by_decoder_norm"] = False
    t.update({name: wide[name].astype(_folded(t[name])) for name in changed})
    if architecture in _BATCHTOPK:
        threshold = t.pop("topk_threshold")
        t["threshold"] = np.full(d_sae, threshold.astype(np.float64), t["b_enc"].dtype)
        out["architecture"] = "jumprelu"
    _check_float_tensors(t, where)
    return t, out


def from_saelens_tensors(
    tensors: Mapping[str, np.ndarray], cfg: Mapping[str, Any], *, where: str = "SAELens weights"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """SAELens tensors and their cfg → `(weights in OUR convention, cfg describing them)`.

    Checks the types of the fields read (`check_cfg_types`), refuses behaviour not implemented
    (`check_supported`), resolves the architecture and the hook/model names, validates the tensor
    names, dtypes, finiteness and shapes against `d_in`/`d_sae`, folds apply_b_dec_to_input false and
    rescale_acts_by_decoder_norm true, converts a batchtopk checkpoint to its JumpReLU form, and
    transposes W_enc to (d_sae, d_in) and W_dec to (d_in, d_sae). Raises `SAELensFormatError`
    naming `where` and the field or tensor.
    """
    check_cfg_types(cfg, where)
    resolved = _resolved(cfg, where)
    check_supported(resolved, where)
    canonical, out = _canonical(tensors, resolved, where)
    weights = {name: np.ascontiguousarray(t.T) if name in _TRANSPOSED else t for name, t in canonical.items()}
    return weights, out


def weights_from_saelens(
    tensors: Mapping[str, np.ndarray], cfg: Mapping[str, Any], *, where: str = "SAELens weights"
) -> dict[str, np.ndarray]:
    """The weights of `from_saelens_tensors`, in OUR convention (W_enc (d_sae, d_in), W_dec
    (d_in, d_sae)), for the architecture `from_saelens_tensors`'s cfg names."""
    return from_saelens_tensors(tensors, cfg, where=where)[0]


def from_saelens(directory: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a SAELens SAE directory as `(weights in OUR convention, cfg dict)`.

    cfg.json is read with bounds (at most 16 MB, nesting at most 32 deep), then converted by
    `from_saelens_tensors` (see the module docstring for the fields accepted, folded and refused);
    the cfg returned is cfg.json with every field kept, except those it rewrites to describe the
    returned weights (`architecture`, `apply_b_dec_to_input`, `rescale_acts_by_decoder_norm`) and
    `hook_name`/`model_name` at top level (null if the file does not say).

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
    check_cfg_types(cfg, str(cfg_path))
    check_supported(_resolved(cfg, str(cfg_path)), str(cfg_path))
    try:
        return from_saelens_tensors(load_file(weights_path), cfg, where=str(weights_path))
    except SAELensFormatError as e:
        if str(directory) in str(e):
            raise
        raise SAELensFormatError(f"{cfg_path}: {e}") from None
