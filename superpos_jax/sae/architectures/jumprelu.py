"""JumpReLU SAE (Rajamanoharan et al., 2024; Gemma Scope): f = z · H(z − θ), θ = exp(log_threshold)
learned per latent with straight-through rectangle-kernel gradients.

Loss: recon + λ Σ_i H(z_i − θ_i) (mean over the batch; `bandwidth` ε of the kernel).
SAELens: "jumprelu", with the `threshold` tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from superpos_jax.sae.architectures.base import (
    TINY_THRESHOLD,
    L1Architecture,
    linear_decode,
    loss_terms,
    mask_latents,
    pre_activations,
    reconstruction_error,
)


class JumpReLUParams(eqx.Module):
    """The standard parameters plus a learned per-latent log threshold."""

    LATENT_AXES: ClassVar[dict[str, int | None]] = {
        "W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None, "log_threshold": 0,
    }

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_in sae"]
    b_dec: Float[Array, " d_in"]
    log_threshold: Float[Array, " sae"]


def _rectangle(u: Array) -> Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu(z: Array, threshold: Array, bandwidth: Array) -> Array:
    """JumpReLU z · H(z − θ) with straight-through gradients (Gemma Scope):
    ∂/∂z = H(z − θ), ∂/∂θ = −(θ/ε) K((z − θ)/ε), K the unit rectangle on (−½, ½)."""
    return jnp.where(z > threshold, z, 0.0)


def _jumprelu_fwd(z: Array, threshold: Array, bandwidth: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return jumprelu(z, threshold, bandwidth), (z, threshold, bandwidth)


def _jumprelu_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    z, threshold, bandwidth = res
    dz = jnp.where(z > threshold, g, 0.0)
    dtheta = -(threshold / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return dz, dtheta, jnp.zeros_like(bandwidth)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step(z: Array, threshold: Array, bandwidth: Array) -> Array:
    """Heaviside H(z − θ) with straight-through gradients: ∂/∂z = 0, ∂/∂θ = −(1/ε) K((z − θ)/ε)."""
    return (z > threshold).astype(z.dtype)


def _step_fwd(z: Array, threshold: Array, bandwidth: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return step(z, threshold, bandwidth), (z, threshold, bandwidth)


def _step_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    z, threshold, bandwidth = res
    dtheta = -(1.0 / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return jnp.zeros_like(z), dtheta, jnp.zeros_like(bandwidth)


step.defvjp(_step_fwd, _step_bwd)


class JumpReLU(L1Architecture):
    """The JumpReLU SAE (hyperparameters: `l1_coefficient` λ, `bandwidth` ε)."""

    name: ClassVar[str] = "jumprelu"
    default_hparams: ClassVar[Mapping[str, float]] = {"l1_coefficient": 0.0, "bandwidth": 0.001}
    saelens_architecture: ClassVar[str | None] = "jumprelu"
    params_type: ClassVar[type] = JumpReLUParams

    def initial_extra_leaves(self, d_sae: int, *, threshold: float | int) -> dict[str, Array]:
        """Every threshold θ = `threshold` (> 0)."""
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        return {"log_threshold": jnp.full(d_sae, np.log(threshold), jnp.float32)}

    def _gates(self, params: JumpReLUParams, x: Array, hp: Mapping[str, Any]) -> tuple[Array, Array, Array]:
        z = pre_activations(params, x)
        theta = jnp.broadcast_to(jnp.exp(params.log_threshold), z.shape)
        return z, theta, jnp.broadcast_to(self.hparam(hp, "bandwidth", z), z.shape)

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = z · H(z − θ), θ = exp(log_threshold) (0 for latents ≥ `hp["n_latents"]`)."""
        return mask_latents(jumprelu(*self._gates(params, x, hp)), hp)

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """recon + λ Σ_i H(z_i − θ_i) (mean over batch; existing latents only), straight-through
        gradients to θ."""
        z, theta, eps = self._gates(params, x, hp)
        f = mask_latents(jumprelu(z, theta, eps), hp)
        x_hat = linear_decode(params, f)
        recon = reconstruction_error(x, x_hat)
        sparsity = jnp.mean(jnp.sum(mask_latents(step(z, theta, eps), hp), axis=-1))
        total = recon + self.hparam(hp, "l1_coefficient", x) * sparsity
        return total, loss_terms(x, x_hat, f, recon=recon, sparsity=sparsity)

    def to_saelens(self, params: Any, hp: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The standard weights plus `threshold` = exp(log_threshold)."""
        weights, fields = super().to_saelens(params, hp)
        return {**weights, "threshold": np.exp(np.asarray(params.log_threshold, np.float32))}, fields

    def from_saelens(self, weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """log_threshold = log max(threshold, 1e-30)."""
        std, _ = super().from_saelens(weights, cfg)
        theta = np.maximum(np.asarray(weights["threshold"], np.float32), TINY_THRESHOLD)
        return JumpReLUParams(W_enc=std.W_enc, b_enc=std.b_enc, W_dec=std.W_dec, b_dec=std.b_dec,
                              log_threshold=jnp.asarray(np.log(theta), jnp.float32)), {}
