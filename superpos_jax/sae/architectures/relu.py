"""ReLU SAE (Bricken et al., 2023; the April-2024 update): f = ReLU(z), z = x̄ W_encᵀ + b_enc.

Loss: recon + λ Σ_i f_i w_i with w_i = 1 (2023) or ‖W_dec,i‖ (2024, `decoder_norm_l1` = 1).
SAELens: "standard".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
from jaxtyping import Array, Float, Scalar

from superpos_jax.sae.architectures.base import (
    L1Architecture,
    linear_decode,
    loss_terms,
    mask_latents,
    pre_activations,
    reconstruction_error,
    weighted_l1,
)


class ReLU(L1Architecture):
    """The ReLU SAE (hyperparameters: `l1_coefficient` λ, `decoder_norm_l1` 0/1 flag)."""

    name: ClassVar[str] = "relu"
    default_hparams: ClassVar[Mapping[str, float]] = {"l1_coefficient": 0.0, "decoder_norm_l1": 0.0}
    recipes: ClassVar[tuple[str, ...]] = ("2023", "2024")
    saelens_architecture: ClassVar[str | None] = "standard"

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = ReLU(z) (0 for latents ≥ `hp["n_latents"]`)."""
        return mask_latents(jax.nn.relu(pre_activations(params, x)), hp)

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """recon + λ Σ_i f_i w_i (w_i = ‖W_dec,i‖ when `decoder_norm_l1`, else 1)."""
        f = self.encode(params, x, hp)
        x_hat = linear_decode(params, f)
        recon = reconstruction_error(x, x_hat)
        sparsity = weighted_l1(params, f, self.hparam(hp, "decoder_norm_l1", f))
        total = recon + self.hparam(hp, "l1_coefficient", x) * sparsity
        return total, loss_terms(x, x_hat, f, recon=recon, sparsity=sparsity)
