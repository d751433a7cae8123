"""Harvest activations from a Flax NNX model into (n_tokens, d) arrays for SAE training.

A model exposes activations by sowing them in its forward pass,

    self.sow(nnx.Intermediate, "hidden", h)            # or a custom nnx.Variable subclass

and `harvest` runs the model batch by batch under `nnx.capture(..., variable_type)` (Flax ≥ 0.12),
jitted, and returns one float32 NumPy array per sown name. Names are the dotted module path
of the sowing module plus the sow name, e.g. "hidden" (sown by the top module) or
"blocks.0.mlp.post". Every activation of shape (..., d) is flattened to (rows, d), so a
(batch, pos, d) residual stream yields batch · pos rows per batch — the layout that
`superpos_jax.sae.sources.ArraySource` streams. `write_npy` saves the arrays as `.npy` files for
its memory-mapped path.

If one name is sown k > 1 times in a forward pass (a loop over a shared module), the values are
returned separately as "name[0]", ..., "name[k-1]".

The forward runs under `jax.jit` on a merged copy of the model's state: stateful updates
(BatchNorm statistics, RNG counters) are not written back, so put the model in eval mode
(`model.eval()`) first. The compiled forward is cached on (graph definition, `forward`,
`variable_type`), so repeated harvests of one model reuse it (an inline lambda as `forward`
recompiles on every call).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpy.typing as npt
from flax import nnx

__all__ = ["harvest", "write_npy"]


def harvest(
    model: nnx.Module,
    inputs: npt.ArrayLike | Iterable[Any],
    *,
    names: Collection[str] | Callable[[str], bool] | None = None,
    batch_size: int | None = None,
    variable_type: type[nnx.Variable] = nnx.Intermediate,
    forward: Callable[[nnx.Module, Any], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Run `model` over `inputs` and collect its sown activations as (rows, d) float32 arrays.

    Args:
        model: an NNX module whose forward pass calls `sow(variable_type, name, value)`.
        inputs: an array whose leading axis indexes examples (split into batches of
            `batch_size` along it), or an iterable of ready-made batches (pytrees of arrays).
        names: which activations to keep: None for all, a collection of dotted names (each must
            be sown, else KeyError), or a predicate on the name.
        batch_size: examples per forward pass when `inputs` is an array (None: all at once).
        variable_type: the `nnx.Variable` subclass the model sows with.
        forward: `forward(model, batch)` to call instead of `model(batch)`.

    Returns:
        {name: float32 array of shape (total rows, d)}, rows in input order.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    call = forward if forward is not None else _call_model
    graphdef, state = nnx.split(model)
    collected: dict[str, list[np.ndarray]] = {}
    n_batches = 0
    for batch in _batches(inputs, batch_size):
        captured = _run(state, batch, graphdef=graphdef, call=call, variable_type=variable_type)
        selected = _select(captured, names)
        for name, value in selected.items():
            collected.setdefault(name, []).append(_rows(name, value))
        n_batches += 1
    if n_batches == 0:
        raise ValueError("inputs hold no batches")
    if not collected:
        raise ValueError(f"the model sowed no {variable_type.__name__} values matching {names!r}")
    return {name: np.concatenate(parts, axis=0) for name, parts in collected.items()}


def write_npy(arrays: dict[str, npt.ArrayLike], directory: str | os.PathLike) -> dict[str, Path]:
    """Save each array as `<directory>/<name>.npy` (name with characters outside [A-Za-z0-9._-] → "_").

    Returns:
        {name: path}; pass a path to `ArraySource` to stream it memory-mapped.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    used: set[str] = set()
    for name, array in arrays.items():
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        if stem in used:
            raise ValueError(f"names {sorted(arrays)} collide after sanitising to file names")
        used.add(stem)
        path = out / f"{stem}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        paths[name] = path
    return paths


def _call_model(model: nnx.Module, batch: Any) -> Any:
    return model(batch)


@functools.partial(jax.jit, static_argnames=("graphdef", "call", "variable_type"))
def _run(
    state: Any, batch: Any, *, graphdef: Any, call: Callable[[nnx.Module, Any], Any], variable_type: type
) -> dict[str, tuple[jax.Array, ...]]:
    # Module-level jit keyed on (graphdef, call, variable_type): repeated harvests of one model reuse the compile.
    merged = nnx.merge(graphdef, state)
    _, captured = nnx.capture(call, variable_type)(merged, batch)
    return {_path_name(path): _as_tuple(leaf) for path, leaf in nnx.to_flat_state(captured)}


def _batches(inputs: npt.ArrayLike | Iterable[Any], batch_size: int | None) -> Iterable[Any]:
    if isinstance(inputs, Mapping):
        raise TypeError("inputs must be an array or an iterable of batches; wrap one dict batch in a list of batches")
    if isinstance(inputs, (np.ndarray, jax.Array)) or not isinstance(inputs, Iterable):
        array = np.asarray(inputs)
        if array.ndim == 0:
            raise ValueError("inputs must have a leading example axis")
        step = array.shape[0] if batch_size is None else batch_size
        for start in range(0, array.shape[0], max(step, 1)):
            yield array[start : start + step]
    else:
        yield from inputs


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def _as_tuple(leaf: Any) -> tuple[Any, ...]:
    value = leaf.get_value() if hasattr(leaf, "get_value") else leaf
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _select(
    captured: dict[str, tuple[jax.Array, ...]], names: Collection[str] | Callable[[str], bool] | None
) -> dict[str, jax.Array]:
    flat: dict[str, jax.Array] = {}
    base: dict[str, str] = {}
    for name, values in captured.items():
        if len(values) == 1:
            flat[name] = values[0]
            base[name] = name
        else:
            for i, v in enumerate(values):
                flat[f"{name}[{i}]"] = v
                base[f"{name}[{i}]"] = name
    if names is None:
        return flat
    if callable(names):
        return {k: v for k, v in flat.items() if names(k)}
    wanted = set(names)
    missing = wanted - set(flat) - set(base.values())
    if missing:
        raise KeyError(f"activations {sorted(missing)} were not sown; sown: {sorted(flat)}")
    return {k: v for k, v in flat.items() if k in wanted or base[k] in wanted}


def _rows(name: str, value: jax.Array) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim < 2:
        raise ValueError(f"activation {name!r} has shape {array.shape}; expected (..., d) with a batch axis")
    return array.reshape(-1, array.shape[-1]).astype(np.float32)
