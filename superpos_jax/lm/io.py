"""Save and load a trained transformer: `config.json` (the `TransformerConfig`) and
`weights.safetensors` (every parameter under its TransformerLens state-dict name, e.g.
`embed.W_E`, `blocks.0.attn.W_Q`, `ln_final.w`, `unembed.W_U`; see `pretrained.to_tl_state_dict`).

Files written before the TransformerLens names (tensors under their pytree paths, e.g.
`.blocks[0].attn.W_Q`) still load, as do configs written before the fields `ln_eps` and
`tied_unembed` existed (they take their defaults).

Loading trusts neither file: config.json is read with bounds (size, nesting), each field's type
is checked against `TransformerConfig` (no missing, extra, list-for-int, ...; sizes at most
2**31 - 1) before the config is built, and the weights must be exactly the config's tensors,
each of its shape, of a float dtype and finite. Problems are `TransformerFormatError` (or the
`SafetensorsError` of a corrupt weights file), naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from superpos_jax.config import ConfigError
from superpos_jax.interop import bounded_json
from superpos_jax.interop.safetensors import load_file, save_file, write_atomic
from superpos_jax.lm.pretrained import tl_param_names, to_tl_state_dict
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams, init_transformer

__all__ = ["CONFIG", "WEIGHTS", "TransformerFormatError", "load_transformer", "save_transformer"]

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
_MAX_CONFIG_BYTES = 1_000_000
_MAX_SIZE = 2**31 - 1
_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")
_ADDED_FIELDS = frozenset({"ln_eps", "tied_unembed"})  # absent from configs saved before them


class TransformerFormatError(ValueError):
    """A saved transformer's config.json or weights do not describe a valid model."""


def save_transformer(directory: str | os.PathLike[str], params: TransformerParams) -> Path:
    """Write one model's config and weights into `directory` (created; files written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(to_tl_state_dict(params), directory / WEIGHTS)
    write_atomic(directory / CONFIG, [json.dumps(dataclasses.asdict(params.cfg), indent=2).encode()])
    return directory


def _read_config(path: Path) -> TransformerConfig:
    raw = bounded_json.read(path, error=TransformerFormatError, max_bytes=_MAX_CONFIG_BYTES, max_depth=4)
    if not isinstance(raw, dict):
        raise TransformerFormatError(f"{path}: must hold a JSON object of TransformerConfig fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(TransformerConfig)
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    if extra := sorted(set(raw) - fields):
        raise TransformerFormatError(f"{path}: unknown field(s) {extra}; allowed: {sorted(fields)}")
    if missing := sorted(fields - set(raw) - _ADDED_FIELDS):
        raise TransformerFormatError(f"{path}: missing field(s) {missing}")
    values: dict[str, Any] = {}
    for name in sorted(fields & set(raw)):
        value, kind = raw[name], hints[name]  # Annotated stripped
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE
            allowed = f"an int in [0, {_MAX_SIZE}]"
        elif kind is float:
            ok, allowed = isinstance(value, int | float) and not isinstance(value, bool), "a number"
            value = float(value) if ok else value
        elif kind is bool:
            ok, allowed = isinstance(value, bool), "true or false"
        else:
            ok, allowed = isinstance(value, str), "a string"
        if not ok:
            raise TransformerFormatError(f"{path}: field {name!r} = {bounded_json.short(value)} is invalid: must be {allowed}")
        values[name] = value
    try:
        return TransformerConfig(**values)
    except ConfigError as e:
        raise TransformerFormatError(f"{path}: {e}") from None


def _check_sizes_fit(cfg: TransformerConfig, tensors: dict[str, np.ndarray], where: Path) -> None:
    """Sizes no saved tensor could hold are refused before the model is built from them (a
    config of 10**9 layers or a d_model of 2**31 is a wrong file, not a model to lay out): every
    layer has tensors, and every size is some tensor's dimension."""
    if cfg.n_layers > len(tensors):
        raise TransformerFormatError(f"{where}: {CONFIG} says n_layers = {cfg.n_layers}, but the file holds "
                                     f"only {len(tensors)} tensors")
    largest = max((d for t in tensors.values() for d in t.shape), default=0)
    sizes = ["d_model", "n_heads", "d_head", "n_ctx", "d_vocab"] + ([] if cfg.attn_only else ["d_mlp"])
    for name in sizes:
        if getattr(cfg, name) > largest:
            raise TransformerFormatError(f"{where}: {CONFIG} says {name} = {getattr(cfg, name)}, larger than any "
                                         f"dimension of the saved tensors (at most {largest})")


def load_transformer(directory: str | os.PathLike[str]) -> TransformerParams:
    """The model saved by `save_transformer`.

    Raises `FileNotFoundError` for a missing file, `TransformerFormatError` for a config.json that
    is not a valid `TransformerConfig` or weights that do not fit it (a missing, extra, misshapen,
    non-float or non-finite tensor), `SafetensorsError` for a corrupt weights file.
    """
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name} (not a saved transformer)")
    cfg = _read_config(directory / CONFIG)
    tensors = load_file(directory / WEIGHTS)
    where = directory / WEIGHTS
    _check_sizes_fit(cfg, tensors, where)
    template = jax.eval_shape(lambda: init_transformer(cfg, key=jax.random.key(0)))
    specs, treedef = jax.tree_util.tree_flatten(template)
    names = tl_param_names(template)
    if any(name.startswith(".") for name in tensors):  # written under pytree paths
        legacy = {jax.tree_util.keystr(path): name
                  for (path, _), name in zip(jax.tree_util.tree_leaves_with_path(template), names, strict=True)}
        renamed = {legacy.get(name, name): tensor for name, tensor in tensors.items()}
        if len(renamed) != len(tensors):
            raise TransformerFormatError(f"{where}: holds tensors under both the old and the new name of a parameter")
        tensors = renamed
    if extra := sorted(set(tensors) - set(names)):
        raise TransformerFormatError(f"{where}: unexpected tensor(s) {extra[:5]} for the model in {CONFIG}")
    leaves = []
    for name, spec in zip(names, specs, strict=True):
        if name not in tensors or tensors[name].shape != spec.shape:
            got = tensors[name].shape if name in tensors else "missing"
            raise TransformerFormatError(f"{where}: tensor {name} is {got}, expected {spec.shape} (from {CONFIG})")
        tensor = tensors[name]
        if tensor.dtype.name not in _FLOAT_KINDS:
            raise TransformerFormatError(f"{where}: tensor {name} has dtype {tensor.dtype.name}; must be one of {_FLOAT_KINDS}")
        if not np.all(np.isfinite(tensor)):
            raise TransformerFormatError(f"{where}: tensor {name} holds non-finite values (NaN or inf)")
        leaves.append(jnp.asarray(tensor, spec.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)
