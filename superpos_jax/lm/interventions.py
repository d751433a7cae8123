"""Interventions on hook points: small `eqx.Module` callables `(activation) -> activation`.

Pass them as `hooks={name: intervention}` to `models.transformer.forward` (or any forward that
follows the hooks-are-data rule). Their arrays — patched values, masks, directions, scales,
SAE parameters, feature indices, clamp values — are pytree leaves, so they are traced: a sweep
over clamp values or ablated heads is one `jax.vmap`, and `jax.grad` flows through them.

Masks. Every intervention takes an optional boolean `mask` that is broadcast (numpy rules,
right-aligned) to the activation's shape; the intervention acts where the mask is True and leaves
the activation unchanged elsewhere (None: everywhere). Examples for `blocks.0.attn.z`
(batch, pos, head, d_head): head h at every position is `mask[..., h, :] = True` with a
(1, n_heads, 1) mask; position p only is a (pos, 1, 1) mask. `position_mask` and `head_mask`
build these.

=============================  ========================================================
intervention                   new activation (where mask)
=============================  ========================================================
Replace(value)                 value (e.g. the clean run's cached activation)
ZeroAblate()                   0
MeanAblate(mean)               mean (e.g. the activation averaged over a dataset)
AddDirection(direction, s)     x + s · direction
ClampFeature(sae, i, c)        x − x̂ + x̂′ = x + (c − f_i(x)) d_i   (SAE error term kept)
ClampFeatures(sae, is, cs)     x − x̂ + x̂′ = x + Σ_j (c_j − f_{i_j}(x)) d_{i_j}   (distinct i_j)
SpliceSAE(sae)                 x̂ = sae.decode(sae.encode(x))
Compose(h₁, h₂, ...)           h_n(… h₂(h₁(x)))
=============================  ========================================================

`ClampFeature`, `ClampFeatures` and `SpliceSAE` take one trained `superpos_jax.sae.SAE` and read
the activation's last axis as its d_in and every other axis as rows ((batch, pos, d) -> batch·pos
rows). `ClampFeatures` clamps a set of features at once, its feature indices and values traced
arrays: a sweep over settings, values (n_settings, n_features), is one `jax.vmap`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from superpos_jax.sae.model import SAE


def _apply(mask: Array | None, new: Array, x: Array) -> Array:
    new = jnp.broadcast_to(new.astype(x.dtype), x.shape)
    if mask is None:
        return new
    return jnp.where(jnp.broadcast_to(mask, x.shape), new, x)


def _mask(mask: ArrayLike | None) -> Array | None:
    return None if mask is None else jnp.asarray(mask).astype(bool)


class Intervention(eqx.Module):
    """An activation -> activation map with traced parameters."""

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array:
        """The intervened activation, same shape and dtype as `x`."""


class Replace(Intervention):
    """Patch in `value` (broadcast to the activation), where `mask`."""

    value: Array
    mask: Array | None

    def __init__(self, value: ArrayLike, mask: ArrayLike | None = None):
        self.value = jnp.asarray(value)
        self.mask = _mask(mask)

    def __call__(self, x: Array) -> Array:
        return _apply(self.mask, self.value, x)


class ZeroAblate(Intervention):
    """Set the activation to zero where `mask`."""

    mask: Array | None

    def __init__(self, mask: ArrayLike | None = None):
        self.mask = _mask(mask)

    def __call__(self, x: Array) -> Array:
        return _apply(self.mask, jnp.zeros((), x.dtype), x)


class MeanAblate(Intervention):
    """Replace the activation by `mean` (broadcast, e.g. shape (pos, d) or (d,)) where `mask`."""

    mean: Array
    mask: Array | None

    def __init__(self, mean: ArrayLike, mask: ArrayLike | None = None):
        self.mean = jnp.asarray(mean)
        self.mask = _mask(mask)

    def __call__(self, x: Array) -> Array:
        return _apply(self.mask, self.mean, x)


class AddDirection(Intervention):
    """x + scale · direction where `mask`; `direction` (d,) along the last axis (or broadcastable)."""

    direction: Array
    scale: Array
    mask: Array | None

    def __init__(self, direction: ArrayLike, scale: ArrayLike | float = 1.0, mask: ArrayLike | None = None):
        self.direction = jnp.asarray(direction)
        self.scale = jnp.asarray(scale, jnp.float32)
        self.mask = _mask(mask)

    def __call__(self, x: Array) -> Array:
        shift = self.scale.astype(x.dtype) * self.direction.astype(x.dtype)
        return _apply(self.mask, x + jnp.broadcast_to(shift, x.shape), x)


def _concrete(a: Array) -> np.ndarray | None:
    """`a` as a numpy array, or None when it is traced (its values unknown until run time)."""
    try:
        return np.asarray(a)
    except jax.errors.TracerArrayConversionError:
        return None


def _clamp(sae: SAE, features: Array, values: Array, mask: Array | None, x: Array) -> Array:
    """x + Σ_j (values_j − f_{features_j}(x)) d_{features_j} where `mask`; `values` broadcast to
    x.shape[:-1] + (n,)."""
    n = features.shape[0]
    f = sae.encode(x)[..., features]  # (..., n)
    w = sae.decoder[:, features].T.astype(x.dtype)  # (n, d_in)
    delta = jnp.broadcast_to(values.astype(x.dtype), x.shape[:-1] + (n,)) - f
    shift = jnp.einsum("...n,nd->...d", delta, w, precision=jax.lax.Precision.HIGHEST)
    return _apply(mask, x + shift, x)


def _check_features(cls: str, sae: SAE, features: Array) -> None:
    """Refuse concrete feature indices that are out of range or repeated (traced ones are not seen)."""
    known = _concrete(features)
    if known is None:
        return
    d_sae = sae.d_sae
    bad = known[(known < 0) | (known >= d_sae)]
    if bad.size:
        raise ValueError(f"{cls}: feature {int(bad[0])} is out of range: the SAE has {d_sae} features (0..{d_sae - 1})")
    values, counts = np.unique(known, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{cls}: feature {int(values[counts > 1][0])} is given {int(counts.max())} times: "
                         f"the features must be distinct (each is clamped to one value)")


class ClampFeature(Intervention):
    """Clamp SAE latent `feature` to `value`, keeping the SAE's error term, where `mask`.

    With f = sae.encode(x) and x̂ = sae.decode(f), x̂′ the decode of f with f_i := value, the
    result is x − x̂ + x̂′ = x + (value − f_i) d_i (d_i the SAE's raw-unit decoder column),
    computed in the second form (exact identity when value = f_i). `feature` (int scalar) and
    `value` (float, a scalar or an array broadcastable to the activation's shape without its
    last axis, e.g. (batch, pos)) may be traced, e.g. vmapped over a sweep of clamp values.
    The one-feature case of `ClampFeatures` (same math). A concrete `feature` out of range is
    a ValueError.
    """

    sae: SAE
    feature: Array
    value: Array
    mask: Array | None

    def __init__(
        self,
        sae: SAE,
        feature: Int[ArrayLike, ""] | int,
        value: Float[ArrayLike, "..."] | float | int,
        mask: ArrayLike | None = None,
    ):
        if not isinstance(sae, SAE):
            raise ValueError(f"ClampFeature needs an SAE (superpos_jax.sae.SAE), got {type(sae).__name__}")
        self.sae = sae
        self.feature = jnp.asarray(feature).astype(jnp.int32)
        self.value = jnp.asarray(value).astype(jnp.float32)
        self.mask = _mask(mask)
        _check_features("ClampFeature", sae, self.feature.reshape(1))

    def __call__(self, x: Array) -> Array:
        return _clamp(self.sae, self.feature.reshape(1), self.value[..., None], self.mask, x)


class ClampFeatures(Intervention):
    """Clamp a set of SAE latents, `features[j]` to `values[..., j]`, keeping the SAE's error
    term, where `mask`.

    With f = sae.encode(x), x̂ = sae.decode(f) and x̂′ the decode of f with f_{i_j} := c_j for
    every j, the result is x − x̂ + x̂′ = x + Σ_j (c_j − f_{i_j}) d_{i_j} (d_i the SAE's raw-unit
    decoder column), computed in the second form (exact identity when every c_j = f_{i_j});
    because the decoder is linear in f this equals clamping the features one at a time, each
    clamp reading the original activation's latents.

    Args:
        sae: the trained SAE reading this hook point.
        features: int (n,), the latents to clamp; distinct (a concrete array with a repeat or an
            index outside 0..d_sae − 1 is a ValueError; a traced one is not checked).
        values: float, broadcastable to the activation's shape without its last axis plus (n,):
            (n,) clamps everywhere, (batch, pos, n) per position, a scalar clamps every feature
            to one value.
        mask: where to clamp (see the module docstring); None: everywhere.

    `features` and `values` are traced: a sweep over clamp settings, values (n_settings, n), is
    `jax.vmap(lambda v: forward(..., {hook: ClampFeatures(sae, features, v)}))`, one compiled call.
    """

    sae: SAE
    features: Array
    values: Array
    mask: Array | None

    def __init__(
        self,
        sae: SAE,
        features: Int[ArrayLike, " n"] | Sequence[int],
        values: Float[ArrayLike, "..."] | Sequence[float] | float | int,
        mask: ArrayLike | None = None,
    ):
        if not isinstance(sae, SAE):
            raise ValueError(f"ClampFeatures needs an SAE (superpos_jax.sae.SAE), got {type(sae).__name__}")
        features_arr = jnp.asarray(features)
        if features_arr.ndim != 1 or not (features_arr.size == 0 or jnp.issubdtype(features_arr.dtype, jnp.integer)):
            raise ValueError(f"ClampFeatures: features must be a 1-D array of ints, got shape {features_arr.shape} "
                             f"and dtype {features_arr.dtype}")
        values_arr = jnp.asarray(values)
        n = features_arr.shape[0]
        if values_arr.ndim > 0 and values_arr.shape[-1] not in (1, n):
            raise ValueError(f"ClampFeatures: values of shape {values_arr.shape} do not fit {n} features: "
                             f"their last axis must be {n} (or 1)")
        self.sae = sae
        self.features = features_arr.astype(jnp.int32)
        self.values = values_arr.astype(jnp.float32)
        self.mask = _mask(mask)
        _check_features("ClampFeatures", sae, self.features)

    def __call__(self, x: Array) -> Array:
        return _clamp(self.sae, self.features, self.values, self.mask, x)


class SpliceSAE(Intervention):
    """Replace the activation by its SAE reconstruction x̂ = sae(x) where `mask` (for the CE
    loss recovered by an SAE, `lm.activations.ce_loss_recovered`)."""

    sae: SAE
    mask: Array | None

    def __init__(self, sae: SAE, mask: ArrayLike | None = None):
        if not isinstance(sae, SAE):
            raise ValueError(f"SpliceSAE needs an SAE (superpos_jax.sae.SAE), got {type(sae).__name__}")
        self.sae = sae
        self.mask = _mask(mask)

    def __call__(self, x: Array) -> Array:
        return _apply(self.mask, self.sae(x), x)


class Compose(Intervention):
    """Apply `hooks` in order: Compose(h1, h2)(x) = h2(h1(x))."""

    hooks: tuple[Any, ...]

    def __init__(self, *hooks: Any):
        self.hooks = tuple(hooks)

    def __call__(self, x: Array) -> Array:
        for h in self.hooks:
            x = h(x)
        return x


def position_mask(n_pos: int, positions: Sequence[int] | ArrayLike, trailing: int = 1) -> Bool[Array, "..."]:
    """Bool mask of shape (n_pos, 1, ..., 1) (`trailing` ones) that is True at `positions`;
    trailing=1 for (batch, pos, d) activations, 2 for (batch, pos, head, d_head)."""
    hit = np.zeros(n_pos, bool)
    hit[np.asarray(positions, np.int64)] = True
    return jnp.asarray(hit.reshape((n_pos,) + (1,) * trailing))


def head_mask(n_heads: int, heads: Sequence[int] | ArrayLike) -> Bool[Array, "1 head 1"]:
    """Bool mask (1, n_heads, 1) True at `heads`, for (batch, pos, head, d_head) activations
    (attn.q/k/v/z); `position_mask(n_pos, ps, trailing=2) & head_mask(n_heads, hs)` selects both."""
    hit = np.zeros(n_heads, bool)
    hit[np.asarray(heads, np.int64)] = True
    return jnp.asarray(hit[None, :, None])
