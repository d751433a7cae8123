"""Matryoshka BatchTopK SAE (Bussmann et al., 2025; Nabeshima, 2024): BatchTopK's selection over
the whole dictionary, trained so that every prefix of the dictionary reconstructs on its own.

With nested prefixes [0, m_1) ⊂ [0, m_2) ⊂ ... ⊂ [0, m_J) = every latent, the loss is

    Σ_j mean_b ‖x_b − x̂_b^{(j)}‖²  +  α·AuxK,     x̂^{(j)} = f[:, :m_j] W_dec[:, :m_j]ᵀ + b_dec,

the SUM over prefixes (as SAELens's `matryoshka_batchtopk` trainer, whose loss is the full
reconstruction plus one term per inner width), with f the BatchTopK latents of the batch and
AuxK exactly BatchTopK's (on the full reconstruction's residual). The loss's `recon` is the full
reconstruction's error (comparable with the other architectures); `prefix_recon` (J,) holds each
prefix's.

Prefix sizes are the static `prefix_fractions` q_1 < ... < q_J = 1 of the dictionary size:
m_j = max(1, round(q_j · n)), n = `hp["n_latents"]` in a padded dictionary-size sweep, else d_sae
(so a size-n instance of a padded sweep has the prefixes of a size-n SAE; m_j is traced).
Registered default: (1/8, 1/4, 1/2, 1).

At inference it is BatchTopK's JumpReLU at the running threshold, and saves to SAELens as
"jumprelu" (`inference_form`). `k_max` switches on BatchTopK's sparse kernels; each prefix is
then decoded by a gather of its kept latents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real, Scalar

from superpos_jax.sae.architectures.base import linear_decode, loss_terms, pre_activations, reconstruction_error
from superpos_jax.sae.architectures.batchtopk import BatchTopK
from superpos_jax.sae.architectures.ksparse import (
    auxk_loss,
    mask_missing,
    selection_terms,
    sparse_auxk_loss,
)
from superpos_jax.sae.sparse import gather_decode

DEFAULT_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)


def prefix_sizes(fractions: tuple[float | int, ...], n: Real[ArrayLike, ""] | int | float) -> Int[Array, " prefix"]:
    """m_j = max(1, round(q_j · n)) for the fractions q_j of a dictionary of n latents (float32
    arithmetic, so a traced n and a static one give the same sizes)."""
    q = jnp.asarray(fractions, jnp.float32)
    n = jnp.asarray(n).astype(jnp.float32)
    return jnp.maximum(jnp.round(q * n), 1.0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class MatryoshkaBatchTopK(BatchTopK):
    """The Matryoshka BatchTopK SAE (hyperparameters as BatchTopK).

    Attributes:
        prefix_fractions: strictly increasing fractions in (0, 1], the last 1.0: the nested
            prefixes' sizes as fractions of the dictionary (see the module docstring).
        k_max, k_aux_max, row_cap: as `BatchTopK`.
    """

    prefix_fractions: tuple[float | int, ...] = DEFAULT_FRACTIONS

    name: ClassVar[str] = "matryoshka_batchtopk"

    def __post_init__(self) -> None:
        super().__post_init__()
        q = self.prefix_fractions
        ok = (isinstance(q, tuple) and len(q) >= 1
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in q))
        if ok:
            a = np.asarray(q, np.float64)
            ok = bool(np.all(a > 0) and np.all(np.diff(a) > 0) and a[-1] == 1.0)
        if not ok:
            raise ValueError("MatryoshkaBatchTopK.prefix_fractions must be a tuple of strictly increasing numbers "
                             f"in (0, 1] ending at 1.0, got {q!r}")

    def prefixes(self, hp: Mapping[str, Any], d_sae: int) -> Int[Array, " prefix"]:
        """The prefix sizes m_j of this batch's dictionary (n_latents if given, else d_sae)."""
        return prefix_sizes(self.prefix_fractions, hp.get("n_latents", d_sae))

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """Σ_j recon of prefix j + α·AuxK (see the module docstring)."""
        d_sae = params.W_enc.shape[0]
        sizes = self.prefixes(hp, d_sae)
        if self.sparse:
            z, sel, f_sel = self._sparse_latents(params, x, hp)

            def decode_prefix(m: Array) -> Array:
                v = jnp.where(sel.idx < m.astype(sel.idx.dtype), f_sel, 0.0)
                return gather_decode(params.W_dec.T, v, sel.idx, sel.n) + params.b_dec[None, :]

            f = self._densify(jax.lax.stop_gradient(f_sel), sel.idx, d_sae)
            scalars = {**sel.scalars, **selection_terms(sel, f_sel, d_sae)}
        else:
            z = mask_missing(pre_activations(params, x), hp)
            f = jnp.where(self.keep(z, hp), jax.nn.relu(z), 0.0)

            def decode_prefix(m: Array) -> Array:
                return linear_decode(params, jnp.where(jnp.arange(d_sae, dtype=jnp.int32)[None, :] < m, f, 0.0))

            scalars = {}
        x_hats = [decode_prefix(sizes[j]) for j in range(len(self.prefix_fractions))]
        x_hat = x_hats[-1]  # the last prefix is every (existing) latent
        prefix_recon = jnp.stack([reconstruction_error(x, xh) for xh in x_hats])
        if self.sparse:
            aux = sparse_auxk_loss(params, x, mask_missing(z, hp), x - x_hat, hp, self.k_aux_max or x.shape[-1] // 2)
        else:
            aux = auxk_loss(params, z, x - x_hat, hp)
        recon = prefix_recon[-1]
        total = jnp.sum(prefix_recon) + self.hparam(hp, "auxk_coefficient", x) * aux
        return total, loss_terms(x, x_hat, f, recon=recon, prefix_recon=jax.lax.stop_gradient(prefix_recon),
                                 auxk=aux, **scalars)
