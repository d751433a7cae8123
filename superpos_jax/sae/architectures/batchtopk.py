"""BatchTopK SAE (Bussmann et al., 2024): f = ReLU(z) on the k·batch largest pre-activations of
the whole batch, 0 elsewhere; loss recon + α·AuxK as TopK.

At inference it is a JumpReLU with one shared threshold θ, a running average of the smallest
positive training activation (`state["threshold"]`), so rows are encoded independently; it is
saved to SAELens in that form ("jumprelu").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from superpos_jax.sae.architectures.base import TINY_THRESHOLD, Architecture, pre_activations
from superpos_jax.sae.architectures.ksparse import KSparseArchitecture, rank_mask
from superpos_jax.sae.architectures.jumprelu import JumpReLU, JumpReLUParams


def threshold_update(
    threshold: Float[ArrayLike, ""] | float, f: Float[Array, "batch sae"], momentum: Float[ArrayLike, ""] | float = 0.01
) -> Scalar:
    """Running estimate of BatchTopK's inference threshold: an exponential moving average of
    the smallest positive activation of each training batch (unchanged if none is positive)."""
    threshold = jnp.asarray(threshold).astype(f.dtype)
    momentum = jnp.asarray(momentum).astype(f.dtype)
    positive = f > 0
    smallest = jnp.min(jnp.where(positive, f, jnp.inf))
    new = (1.0 - momentum) * threshold + momentum * smallest
    return jnp.where(jnp.any(positive), new, threshold)


def inference_encode(
    params: Any, x: Float[Array, "batch d_in"], threshold: Float[ArrayLike, ""] | float
) -> Float[Array, "batch sae"]:
    """BatchTopK at inference: a JumpReLU with one shared threshold, f = z · H(z − θ), θ ≥ 0.
    Each row is encoded independently of the rest of the batch."""
    z = pre_activations(params, x)
    threshold = jnp.maximum(jnp.asarray(threshold).astype(z.dtype), 0.0)
    return jnp.where(z > threshold, z, 0.0)


class BatchTopK(KSparseArchitecture):
    """The BatchTopK SAE (hyperparameters as TopK, plus `threshold_momentum` of the running
    threshold, default 0.01)."""

    name: ClassVar[str] = "batchtopk"
    default_hparams: ClassVar[Mapping[str, float]] = {"auxk_coefficient": 1.0 / 32.0, "threshold_momentum": 0.01}
    saelens_architecture: ClassVar[str | None] = None

    def keep(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Bool[Array, "batch sae"]:
        """The k·batch largest pre-activations of the batch."""
        n_keep = jnp.asarray(hp["k"]).astype(jnp.float32) * z.shape[0]
        return rank_mask(z.reshape(-1), n_keep).reshape(z.shape)

    def init_state(self, params: Any) -> dict[str, Array]:
        """`threshold`: the running inference threshold, starting at 0."""
        return {"threshold": jnp.float32(0.0)}

    def after_update(
        self, params: Any, state: dict[str, Array], aux: Mapping[str, Array], hp: Mapping[str, Any], *, unit_norm: bool
    ) -> tuple[Any, dict[str, Array]]:
        """As every architecture, then the running threshold from this batch's latents."""
        params, state = super().after_update(params, state, aux, hp, unit_norm=unit_norm)
        momentum = self.hparam(hp, "threshold_momentum", aux["f"])
        return params, {**state, "threshold": threshold_update(state["threshold"], aux["f"], momentum)}

    def encode_inference(
        self, params: Any, state: Mapping[str, Array], x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> Float[Array, "batch sae"]:
        """The JumpReLU at the running threshold (`inference_encode`)."""
        return inference_encode(params, x, state["threshold"])

    def inference_form(
        self, params: Any, state: Mapping[str, Array], hp: Mapping[str, Any]
    ) -> tuple[Architecture, Any, dict[str, Array], dict[str, Any]]:
        """A JumpReLU whose every latent has θ = max(running threshold, 0) (log θ clipped at
        log 1e-30, so θ = 0 keeps every positive activation above 1e-30)."""
        theta = jnp.maximum(jnp.asarray(state["threshold"], jnp.float32), 0.0)
        log_threshold = jnp.log(jnp.maximum(jnp.broadcast_to(theta, params.b_enc.shape), TINY_THRESHOLD))
        jump = JumpReLUParams(W_enc=params.W_enc, b_enc=params.b_enc, W_dec=params.W_dec, b_dec=params.b_dec,
                              log_threshold=log_threshold)
        return JumpReLU(), jump, {}, dict(hp)
