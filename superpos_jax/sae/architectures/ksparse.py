"""The k-sparse architectures' shared pieces: exact top-k by bisection, AuxK, and
`KSparseArchitecture` (TopK and BatchTopK keep k latents per row or k·batch per batch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from superpos_jax.sae.architectures.base import (
    Architecture,
    linear_decode,
    loss_terms,
    pre_activations,
    reconstruction_error,
)


def _order_key(z: Array) -> Array:
    """float32 → uint32, monotone: a < b iff key(a) < key(b) (for non-NaN values)."""
    u = jax.lax.bitcast_convert_type(z.astype(jnp.float32), jnp.uint32)
    return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))


def rank_mask(z: Array, k: ArrayLike | float | int) -> Array:
    """True at the k largest entries of each row of z (every entry tied with the k-th is
    kept too); k may be traced. The k-th largest value is found exactly by bisection on the
    values' order-preserving integer keys: 32 counting passes, O(32·size), no sort (a sort of
    each row is ~30× slower on CPU)."""
    key = _order_key(z)
    k = jnp.asarray(k).astype(jnp.int32)
    lo = jnp.zeros(z.shape[:-1] + (1,), jnp.uint32)  # invariant: count(key >= lo) >= k
    hi = jnp.full(z.shape[:-1] + (1,), 0xFFFFFFFF, jnp.uint32)

    def halve(_: Any, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = lo + ((hi - lo) >> 1) + ((hi - lo) & 1)
        ok = jnp.sum(key >= mid, axis=-1, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - jnp.uint32(1))

    lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    return (key >= lo) & (k > 0)


def auxk_loss(
    params: Any, z: Float[Array, "batch sae"], residual: Float[Array, "batch d_in"], hp: Mapping[str, Any]
) -> Scalar:
    """AuxK (Gao et al., 2024): ‖e − ê‖², ê = W_dec ReLU(TopK_{k_aux}(z over dead latents)),
    with e the (gradient-stopped) residual x − x̂. Only dead latents' encoder rows, b_enc entries
    and decoder columns (and b_dec through z) receive gradient; zero when no latent is dead
    (`hp["dead"]`, a (d_sae,) bool mask; without it the term is zero). `hp["k_aux"]` defaults
    to d_in // 2."""
    if "dead" not in hp:
        return jnp.zeros((), z.dtype)
    dead = jnp.broadcast_to(jnp.asarray(hp["dead"]).astype(bool)[None, :], z.shape)
    k_aux = hp.get("k_aux", residual.shape[-1] // 2)
    masked = jnp.where(dead, z, -jnp.inf)
    f_aux = jnp.where(rank_mask(masked, k_aux) & dead, jax.nn.relu(z), 0.0)
    e = jax.lax.stop_gradient(residual)
    aux = jnp.mean(jnp.sum(jnp.square(e - f_aux @ params.W_dec.T), axis=-1))
    return jnp.where(jnp.any(dead), aux, 0.0)


class KSparseArchitecture(Architecture):
    """An architecture that keeps k latents (`k`, may be traced and differ per instance), with
    AuxK for dead latents (`dead`, `k_aux`, `auxk_coefficient` α)."""

    swept: ClassVar[str] = "k"
    auxk: ClassVar[bool] = True
    default_hparams: ClassVar[Mapping[str, float]] = {"auxk_coefficient": 1.0 / 32.0}

    def keep(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Bool[Array, "batch sae"]:
        """Which pre-activations are kept."""
        raise NotImplementedError

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = ReLU(z) where kept, 0 elsewhere."""
        z = pre_activations(params, x)
        return jnp.where(self.keep(z, hp), jax.nn.relu(z), 0.0)

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """recon + α·AuxK."""
        f = self.encode(params, x, hp)
        z = pre_activations(params, x)  # AuxK's own path: its gradient joins after the matmul, as it always has
        x_hat = linear_decode(params, f)
        recon = reconstruction_error(x, x_hat)
        aux = auxk_loss(params, z, x - x_hat, hp)
        total = recon + self.hparam(hp, "auxk_coefficient", x) * aux
        return total, loss_terms(x, x_hat, f, recon=recon, auxk=aux)
