"""Save and load a trained transformer: `config.json` (the `TransformerConfig`) and
`weights.safetensors` (every parameter under its pytree path, e.g. `.blocks[0].attn.W_Q`)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from superpos_jax.interop.safetensors import load_file, save_file, write_atomic
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams, init_transformer

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"


def _named(params: TransformerParams) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_transformer(directory: str | os.PathLike[str], params: TransformerParams) -> Path:
    """Write one model's config and weights into `directory` (created; files written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_named(params), directory / WEIGHTS)
    write_atomic(directory / CONFIG, [json.dumps(dataclasses.asdict(params.cfg), indent=2).encode()])
    return directory


def load_transformer(directory: str | os.PathLike[str]) -> TransformerParams:
    """The model saved by `save_transformer` (clear errors for a missing file or a tensor that
    does not fit the config)."""
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} has no {name} (not a saved transformer)")
    cfg = TransformerConfig(**json.loads((directory / CONFIG).read_text()))
    template = jax.eval_shape(lambda: init_transformer(cfg, key=jax.random.key(0)))
    tensors = load_file(directory / WEIGHTS)
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, spec in paths:
        name = jax.tree_util.keystr(path)
        if name not in tensors or tensors[name].shape != spec.shape:
            got = tensors[name].shape if name in tensors else "missing"
            raise ValueError(f"{directory / WEIGHTS}: tensor {name} is {got}, expected {spec.shape}")
        leaves.append(jnp.asarray(tensors[name], spec.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)
