"""Activations of a transformer for dictionary learning: harvesting them at a hook point, the
next-token loss under hooks, and the CE loss recovered by an SAE spliced in.

    harvest(model, tokens, hook)                 -> (n, pos, d) activations at `hook`
    loss_under_hooks(model, tokens, hooks)       -> mean next-token cross-entropy (nats)
    ce_loss_recovered(model, sae, hook, tokens)  -> CELossRecovered(recovered, clean, spliced, ablated)

The CE loss recovered (Bricken et al., 2023) compares the model's loss with the SAE's
reconstruction spliced in at the hook (`interventions.SpliceSAE`) against the clean loss and
the loss with the hook's activation zero-ablated:

    recovered = (CE_ablated − CE_spliced) / (CE_ablated − CE_clean)

1 when the SAE reconstructs perfectly, 0 when it does no better than zero-ablation (the
denominator is floored at 1e-9). Each function runs over `tokens` in batches of `batch`
windows, one compiled program per hook structure.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from superpos_jax.lm.interventions import SpliceSAE, ZeroAblate
from superpos_jax.lm.transformer import TransformerParams, forward, per_token_loss
from superpos_jax.sae.model import SAE


class CELossRecovered(NamedTuple):
    """The CE loss recovered and the three losses (nats) it is made of."""

    recovered: float
    clean: float
    spliced: float
    ablated: float


@jax.jit
def _batch_loss(model: TransformerParams, windows: Array, hooks: dict[str, Any]) -> Array:
    return jnp.mean(per_token_loss(model, windows, hooks))


@partial(jax.jit, static_argnames="hook")
def _activations(model: TransformerParams, windows: Array, hook: str) -> Array:
    return forward(model, windows, cache_names=(hook,))[1][hook]


def _batches(n: int, batch: int) -> list[slice]:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return [slice(i, min(i + batch, n)) for i in range(0, n, batch)]


def _windows(tokens: Int[Array | np.ndarray, "n pos"]) -> Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty (n_windows, pos) array, got shape {tokens.shape}")
    return tokens


def harvest(
    model: TransformerParams, tokens: Int[Array | np.ndarray, "n pos"], hook: str, *, batch: int = 64
) -> np.ndarray:
    """The activations at hook point `hook` on every window of `tokens`, as a host array
    (n_windows, pos, ...) (e.g. (n, pos, d_mlp) for `blocks.0.mlp.post`)."""
    tokens = _windows(tokens)
    return np.concatenate([np.asarray(_activations(model, tokens[s], hook)) for s in _batches(tokens.shape[0], batch)])


def loss_under_hooks(
    model: TransformerParams,
    tokens: Int[Array | np.ndarray, "n pos"],
    hooks: Mapping[str, Any] | None = None,
    *,
    batch: int = 64,
) -> float:
    """Mean next-token cross-entropy (nats) over every predicted position of `tokens`, with
    `hooks` applied (none: the clean loss)."""
    tokens = _windows(tokens)
    slices = _batches(tokens.shape[0], batch)
    losses = [float(_batch_loss(model, tokens[s], dict(hooks or {}))) for s in slices]
    return float(np.average(losses, weights=[s.stop - s.start for s in slices]))


def ce_loss_recovered(
    model: TransformerParams,
    sae: SAE,
    hook: str,
    tokens: Int[Array | np.ndarray, "n pos"],
    *,
    clean: float | None = None,
    ablated: float | None = None,
    batch: int = 64,
) -> CELossRecovered:
    """The CE loss recovered by `sae` spliced in at `hook` on `tokens` (module docstring).

    `clean` and `ablated` may be given when already known (e.g. the same for every SAE of a
    sweep); they are computed otherwise."""
    if clean is None:
        clean = loss_under_hooks(model, tokens, batch=batch)
    if ablated is None:
        ablated = loss_under_hooks(model, tokens, {hook: ZeroAblate()}, batch=batch)
    spliced = loss_under_hooks(model, tokens, {hook: SpliceSAE(sae)}, batch=batch)
    recovered = (ablated - spliced) / max(ablated - clean, 1e-9)
    return CELossRecovered(float(recovered), float(clean), float(spliced), float(ablated))
