"""Gated SAE (Rajamanoharan et al., 2024): a gate path π = x̄ W_encᵀ + b_enc decides which latents
are active, a magnitude path with the same encoder directions, rescaled per latent, sets their
values: f = H(π) ⊙ ReLU(exp(r_mag) ⊙ x̄W_encᵀ + b_mag).

Loss: recon + λ Σ_i ReLU(π_i) w_i + ‖x − x̂_frozen(ReLU(π))‖², x̂_frozen decoding through
stop-gradient copies of W_dec and b_dec; w_i = 1 (2023) or ‖W_dec,i‖ (2024, `decoder_norm_l1`).
SAELens: "gated" (b_gate = b_enc).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from superpos_jax.sae.architectures.base import (
    L1Architecture,
    linear_decode,
    loss_terms,
    mask_latents,
    reconstruction_error,
    weighted_l1,
)


class GatedParams(eqx.Module):
    """Encoder W_enc and gate bias b_enc, the magnitude path's per-latent log scale r_mag and
    bias b_mag, and the linear decoder."""

    LATENT_AXES: ClassVar[dict[str, int | None]] = {
        "W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None, "r_mag": 0, "b_mag": 0,
    }

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_in sae"]
    b_dec: Float[Array, " d_in"]
    r_mag: Float[Array, " sae"]
    b_mag: Float[Array, " sae"]


def _paths(params: GatedParams, x: Array) -> tuple[Array, Array]:
    xw = (x - params.b_dec[None, :]) @ params.W_enc.T
    gate = xw + params.b_enc[None, :]
    magnitude = jax.nn.relu(jnp.exp(params.r_mag)[None, :] * xw + params.b_mag[None, :])
    return gate, magnitude


class Gated(L1Architecture):
    """The gated SAE (hyperparameters: `l1_coefficient` λ, `decoder_norm_l1` 0/1 flag)."""

    name: ClassVar[str] = "gated"
    default_hparams: ClassVar[Mapping[str, float]] = {"l1_coefficient": 0.0, "decoder_norm_l1": 0.0}
    recipes: ClassVar[tuple[str, ...]] = ("2023", "2024")
    saelens_architecture: ClassVar[str | None] = "gated"
    params_type: ClassVar[type] = GatedParams

    def initial_extra_leaves(self, d_sae: int, *, threshold: float | int) -> dict[str, Array]:
        """r_mag = b_mag = 0: the magnitude path starts as the gate path."""
        zeros = jnp.zeros(d_sae, jnp.float32)
        return {"r_mag": zeros, "b_mag": zeros}

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = H(π) ⊙ ReLU(exp(r_mag) ⊙ x̄W_encᵀ + b_mag), π = x̄W_encᵀ + b_enc (0 for latents
        ≥ `hp["n_latents"]`)."""
        gate, magnitude = _paths(params, x)
        return mask_latents(jnp.where(gate > 0, magnitude, 0.0), hp)

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """recon + λ Σ_i ReLU(π_i) w_i + ‖x − (ReLU(π) sg(W_dec)ᵀ + sg(b_dec))‖² (mean over batch;
        the sums over the existing latents only)."""
        gate, magnitude = _paths(params, x)
        f = mask_latents(jnp.where(gate > 0, magnitude, 0.0), hp)
        x_hat = linear_decode(params, f)
        recon = reconstruction_error(x, x_hat)
        gate_act = mask_latents(jax.nn.relu(gate), hp)
        sparsity = weighted_l1(params, gate_act, self.hparam(hp, "decoder_norm_l1", f))
        frozen = jax.lax.stop_gradient(params)
        aux = reconstruction_error(x, linear_decode(frozen, gate_act))
        total = recon + self.hparam(hp, "l1_coefficient", x) * sparsity + aux
        return total, loss_terms(x, x_hat, f, recon=recon, sparsity=sparsity, aux=aux)

    def resample(
        self,
        params: Any,
        dead: Bool[Array, " sae"],
        directions: Float[Array, "sae d_in"],
        encoder_norm: Float[ArrayLike, ""],
    ) -> Any:
        """As every architecture, and the magnitude path's r_mag, b_mag of the latent zeroed."""
        params = super().resample(params, dead, directions, encoder_norm)
        return dataclasses.replace(params, r_mag=jnp.where(dead, 0.0, params.r_mag),
                                   b_mag=jnp.where(dead, 0.0, params.b_mag))

    def to_saelens(self, params: Any, hp: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """W_enc, b_gate (= b_enc), r_mag, b_mag, W_dec, b_dec."""
        arrays = {name: np.asarray(getattr(params, name), np.float32)
                  for name in ("W_enc", "W_dec", "b_dec", "r_mag", "b_mag")}
        return {**arrays, "b_gate": np.asarray(params.b_enc, np.float32)}, {}

    def from_saelens(self, weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """b_enc = b_gate."""
        get = lambda name: jnp.asarray(weights[name], jnp.float32)  # noqa: E731
        return GatedParams(W_enc=get("W_enc"), b_enc=get("b_gate"), W_dec=get("W_dec"), b_dec=get("b_dec"),
                           r_mag=get("r_mag"), b_mag=get("b_mag")), {}
