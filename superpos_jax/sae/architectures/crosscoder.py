"""Crosscoders (Lindsey et al., Anthropic 2024, "Sparse Crosscoders for Cross-Layer Features and
Model Diffing"): one dictionary that reads and writes L activation vectors at once (L layers of
one model, or the same layer of L models).

Rows are the L vectors concatenated, x = [x^1 | ... | x^L] of width L·d; latent i has one
decoder column per layer, W_dec,i^l (d,), and

    f   = ReLU(Σ_l x^l W_enc^lᵀ + b_enc) = ReLU(x W_encᵀ + b_enc)     (no b_dec centring)
    x̂^l = f W_dec^lᵀ + b_dec^l
    loss = mean_b Σ_l ‖x^l − x̂^l‖² + λ mean_b Σ_i f_i Σ_l ‖W_dec,i^l‖

(the paper's L1-of-norms penalty; hyperparameter `l1_coefficient` λ). The per-latent, per-layer
decoder norms `layer_norms` (L, d_sae) are the analysis object: a latent with equal norms on
every layer is shared, one with a single non-zero norm is exclusive to that layer / model.

Params are the standard `SAEParams` at width L·d (W_enc (d_sae, L·d), W_dec (L·d, d_sae)), so
the training loop, resampling and `SAE` need nothing new; the number of layers is the static
field `n_layers` (registered default 2: two layers, or two models to diff). Recipes: "2024"
(the paper's: no decoder constraint, inputs scaled, λ warm-up) and "2023" (each latent's whole
column, all layers together, held at unit norm). No SAELens counterpart: saved in this
library's own layout (`superpos_jax.sae.io.save_sae`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from superpos_jax.sae.architectures.base import (
    L1Architecture,
    linear_decode,
    loss_terms,
    mask_latents,
    reconstruction_error,
)


def layer_norms(W_dec: Float[Array, "row sae"], n_layers: int) -> Float[Array, "layer sae"]:
    """‖W_dec,i^l‖ for each layer l and latent i, W_dec (L·d, d_sae) split into L blocks of d rows
    (gradient 0 at a zero block)."""
    if W_dec.shape[0] % n_layers:
        raise ValueError(f"W_dec has {W_dec.shape[0]} rows, not a multiple of n_layers={n_layers}")
    blocks = W_dec.reshape(n_layers, W_dec.shape[0] // n_layers, W_dec.shape[1])
    sq = jnp.sum(jnp.square(blocks), axis=1)
    # A zero block has the subgradient 0 (not sqrt's NaN): an exclusive latent's empty layer.
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


@dataclasses.dataclass(frozen=True)
class Crosscoder(L1Architecture):
    """The ReLU crosscoder (hyperparameter `l1_coefficient` λ).

    Attributes:
        n_layers: L, the number of activation vectors a row concatenates (each of width
            d = d_in / L).
    """

    n_layers: int = 2

    name: ClassVar[str] = "crosscoder"
    one_hook: ClassVar[bool] = False
    default_hparams: ClassVar[Mapping[str, float]] = {"l1_coefficient": 0.0}
    recipes: ClassVar[tuple[str, ...]] = ("2023", "2024")
    saelens_architecture: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        L = self.n_layers
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
            raise ValueError(f"Crosscoder.n_layers must be an integer >= 1, got {L!r}")

    def init(self, d_in: int, d_sae: int, **kwargs: Any) -> Any:
        """As every architecture, at d_in = L·d (which must be a multiple of n_layers)."""
        if d_in % self.n_layers:
            raise ValueError(f"a crosscoder of n_layers={self.n_layers} needs d_in = n_layers · d, got d_in={d_in}")
        return super().init(d_in, d_sae, **kwargs)

    def layer_norms(self, params: Any) -> Float[Array, "layer sae"]:
        """‖W_dec,i^l‖, (n_layers, d_sae)."""
        return layer_norms(params.W_dec, self.n_layers)

    def pre_activations(self, params: Any, x: Float[Array, "batch row"]) -> Float[Array, "batch sae"]:
        """z = x W_encᵀ + b_enc = Σ_l x^l W_enc^lᵀ + b_enc."""
        return x @ params.W_enc.T + params.b_enc[None, :]

    def encode(self, params: Any, x: Float[Array, "batch row"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = ReLU(z) (0 for latents ≥ `hp["n_latents"]`)."""
        return mask_latents(jax.nn.relu(self.pre_activations(params, x)), hp)

    def loss(
        self, params: Any, x: Float[Array, "batch row"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """Σ_l recon of layer l + λ Σ_i f_i Σ_l ‖W_dec,i^l‖."""
        f = self.encode(params, x, hp)
        x_hat = linear_decode(params, f)
        recon = reconstruction_error(x, x_hat)
        weight = jnp.sum(self.layer_norms(params), axis=0)
        sparsity = jnp.mean(jnp.sum(f * weight[None, :], axis=-1))
        total = recon + self.hparam(hp, "l1_coefficient", x) * sparsity
        return total, loss_terms(x, x_hat, f, recon=recon, sparsity=sparsity)
