"""The k-sparse architectures' shared pieces: exact top-k by bisection, AuxK, and
`KSparseArchitecture` (TopK and BatchTopK keep k latents per row or k·batch per batch).

Two paths compute the same loss:

* the dense reference (`k_max=None`, the registered default): `rank_mask` selects among all
  d_sae pre-activations for any traced k, and decoding is the dense f W_decᵀ; its dense AuxK
  (value and gradient together) runs only when some instance has a dead latent;
* the sparse kernels (`k_max` an int, a static upper bound on every instance's k): each row's
  candidates come from `lax.top_k(z, K)` with K = k_max (BatchTopK: a per-row cap), entries
  j ≥ k are masked, and the active latents are decoded by gathering their W_dec columns
  (`superpos_jax.sae.sparse`); gradients reach W_dec, W_enc and b_enc only at the selected
  latents (scatter-adds), so the only dense matmul of the step is the encoder's forward
  x̄ W_encᵀ. AuxK is sparse too (top-k_aux over the dead latents) and costs nothing when no
  instance has a dead latent.

Ties at the k-th value: `rank_mask` keeps every entry tied with the k-th largest (possibly more
than k); the sparse TopK keeps exactly k, the lower latent index first. On tie-free data the two
paths select the same latents. (BatchTopK's sparse path thresholds its candidates with
`rank_mask`, so it keeps ties as the reference does.)

Dictionary-size mask: an optional per-instance `hp["n_latents"]` (float32 scalar) means only
latents i < n_latents exist; the others' pre-activations are −∞ before any selection and they
are never dead (both paths).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Scalar

from superpos_jax.sae.architectures.base import (
    Architecture,
    latent_mask,
    linear_decode,
    loss_terms,
    pre_activations,
    reconstruction_error,
)
from superpos_jax.sae.sparse import gather_decode, gather_dot, run_if, select_top


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


def existing_latents(hp: Mapping[str, Any], d_sae: int) -> Bool[Array, " sae"] | None:
    """`base.latent_mask` where `hp` has "n_latents", None when every latent exists (so the
    unmasked programs stay exactly as they were)."""
    return latent_mask(hp, d_sae) if "n_latents" in hp else None


def mask_missing(z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
    """z with the pre-activations of latents ≥ `hp["n_latents"]` set to −∞ (z if absent)."""
    exists = existing_latents(hp, z.shape[-1])
    return z if exists is None else jnp.where(exists[None, :], z, -jnp.inf)


def dead_latents(hp: Mapping[str, Any], d_sae: int) -> Bool[Array, " sae"] | None:
    """`hp["dead"]` restricted to the existing latents (None without a dead mask)."""
    if "dead" not in hp:
        return None
    dead = jnp.asarray(hp["dead"]).astype(bool)
    exists = existing_latents(hp, d_sae)
    return dead if exists is None else dead & exists


def auxk_loss(
    params: Any, z: Float[Array, "batch sae"], residual: Float[Array, "batch d_in"], hp: Mapping[str, Any]
) -> Scalar:
    """AuxK (Gao et al., 2024): ‖e − ê‖², ê = W_dec ReLU(TopK_{k_aux}(z over dead latents)),
    with e the (gradient-stopped) residual x − x̂. Only dead latents' encoder rows, b_enc entries
    and decoder columns (and b_dec through z) receive gradient; zero when no latent is dead
    (`hp["dead"]`, a (d_sae,) bool mask; without it the term is zero; latents ≥ `hp["n_latents"]`
    are never dead). `hp["k_aux"]` defaults to d_in // 2. The dense reference: its value and
    gradient are computed together, and not at all when no latent is dead (under `vmap`: in no
    instance), so a step with every latent alive pays nothing for AuxK."""
    dead_1d = dead_latents(hp, z.shape[-1])
    if dead_1d is None:
        return jnp.zeros((), z.dtype)
    k_aux = jnp.asarray(hp.get("k_aux", residual.shape[-1] // 2))
    return _auxk_if_dead(params.W_dec, z, jax.lax.stop_gradient(residual), dead_1d, k_aux)


def _dense_auxk(W_dec: Array, z: Array, e: Array, dead: Array, k_aux: ArrayLike) -> Array:
    mask = jnp.broadcast_to(dead[None, :], z.shape)
    f_aux = jnp.where(rank_mask(jnp.where(mask, z, -jnp.inf), k_aux) & mask, jax.nn.relu(z), 0.0)
    return jnp.mean(jnp.sum(jnp.square(e - f_aux @ W_dec.T), axis=-1))


def _no_cotangent(a: ArrayLike) -> Any:
    a = jnp.asarray(a)
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return jnp.zeros_like(a)
    return np.zeros(a.shape, jax.dtypes.float0)


@jax.custom_vjp
def _auxk_if_dead(W_dec: Array, z: Array, e: Array, dead: Array, k_aux: ArrayLike) -> Array:
    return run_if(jnp.any(dead), _dense_auxk, jnp.zeros((), z.dtype), W_dec, z, e, dead, k_aux)


def _auxk_if_dead_fwd(W_dec: Array, z: Array, e: Array, dead: Array, k_aux: ArrayLike) -> tuple[Array, tuple[Any, ...]]:
    def value_and_grads(*args: Any) -> tuple[Array, Array, Array]:
        value, (g_W, g_z) = jax.value_and_grad(_dense_auxk, argnums=(0, 1))(*args)
        return value, g_W, g_z

    default = (jnp.zeros((), z.dtype), jnp.zeros_like(W_dec), jnp.zeros_like(z))
    value, g_W, g_z = run_if(jnp.any(dead), value_and_grads, default, W_dec, z, e, dead, k_aux)
    return value, (g_W, g_z, e, dead, k_aux)


def _auxk_if_dead_bwd(res: tuple[Any, ...], g: Array) -> tuple[Any, ...]:
    g_W, g_z, e, dead, k_aux = res
    return g * g_W, g * g_z, jnp.zeros_like(e), _no_cotangent(dead), _no_cotangent(k_aux)


_auxk_if_dead.defvjp(_auxk_if_dead_fwd, _auxk_if_dead_bwd)


class Selection(NamedTuple):
    """The sparse path's choice of latents for a batch.

    Attributes:
        idx: (batch, K) int32 latent indices, each row's candidates in descending order.
        active: (batch, K) bool, which candidates are kept.
        n: () int32, a loop length: every kept entry has column index j < n.
        scalars: extra loss terms to report (e.g. BatchTopK's `capped_rows`).
    """

    idx: Int[Array, "batch K"]
    active: Bool[Array, "batch K"]
    n: Int[Array, ""]
    scalars: dict[str, Array]


def sparse_auxk_loss(
    params: Any, x: Float[Array, "batch d_in"], z: Float[Array, "batch sae"], residual: Float[Array, "batch d_in"],
    hp: Mapping[str, Any], k_aux_max: int,
) -> Scalar:
    """AuxK as `auxk_loss`, computed sparsely: the k_aux largest dead pre-activations of each
    row by `lax.top_k` (K = min(`k_aux_max`, d_sae); a traced `hp["k_aux"]` above it is clipped
    to it; exactly k_aux per row, lower index first among ties), re-evaluated by a gather and
    decoded by a gather. Selection and decoding are skipped entirely when no latent is dead (in
    every instance, under vmap). `z` (the pre-activations of x) is only used to select; the
selected ones are recomputed from x by gathers, and carry the gradient."""
    dead = dead_latents(hp, z.shape[-1])
    if dead is None:
        return jnp.zeros((), z.dtype)
    d_in = residual.shape[-1]
    K = min(int(k_aux_max), z.shape[-1])
    k_aux = jnp.asarray(hp.get("k_aux", d_in // 2)).astype(jnp.int32)
    n = jnp.minimum(jnp.minimum(k_aux, jnp.sum(dead, dtype=jnp.int32)), K)
    def pick(z: Array, dead: Array) -> Array:
        return select_top(jnp.where(dead[None, :], z, -jnp.inf), K)[1]

    idx = run_if(n > 0, pick, jnp.zeros((z.shape[0], K), jnp.int32), jax.lax.stop_gradient(z), dead)
    f_aux = jnp.where(jnp.arange(K)[None, :] < n, jax.nn.relu(selected_pre_activations(params, x, idx, n)), 0.0)
    e_hat = gather_decode(params.W_dec.T, f_aux, idx, n)
    e = jax.lax.stop_gradient(residual)
    aux = jnp.mean(jnp.sum(jnp.square(e - e_hat), axis=-1))
    return jnp.where(n > 0, aux, 0.0)


def selected_pre_activations(
    params: Any, x: Float[Array, "batch d_in"], idx: Int[Array, "batch K"], n: ArrayLike,
    z: Float[Array, "batch sae"] | None = None,
) -> Float[Array, "batch K"]:
    """z_bj = (x_b − b_dec) · W_enc[idx_bj] + b_enc[idx_bj] (the dot is 0 for j ≥ n); its
    gradient reaches W_enc and b_enc only at the selected latents. Given the dense
    pre-activations `z` of x, the values are picked from it; otherwise computed by gathers."""
    x_bar = x - params.b_dec[None, :]
    b = jnp.take(params.b_enc, idx)
    value = None if z is None else jnp.take_along_axis(jax.lax.stop_gradient(z), idx, axis=1) - b
    return gather_dot(params.W_enc, x_bar, idx, n, value=value) + b


def selection_terms(sel: Selection, f_sel: Float[Array, "batch K"], d_sae: int) -> dict[str, Array]:
    """The sparse path's latent statistics for the aux dict: `l0` and `fired` (d_sae,) as
    `base.loss_terms` computes them from the dense f, without densifying, and `f_active`
    (batch, K), the kept latents' values (0 elsewhere)."""
    f_sel = jax.lax.stop_gradient(f_sel)
    on = f_sel != 0
    fired = jnp.zeros(d_sae, bool).at[sel.idx].max(on)
    return {"l0": jnp.mean(jnp.sum(on.astype(f_sel.dtype), axis=-1)), "fired": fired, "f_active": f_sel}


@dataclasses.dataclass(frozen=True)
class KSparseArchitecture(Architecture):
    """An architecture that keeps k latents (`k`, may be traced and differ per instance), with
    AuxK for dead latents (`dead`, `k_aux`, `auxk_coefficient` α), and the dictionary-size mask
    `n_latents` (optional).

    Attributes:
        k_max: None (default) for the dense reference path; an int ≥ 1 for the sparse kernels,
            a static upper bound on every instance's k (e.g. the largest k of a sweep;
            `check_swept` rejects larger k before anything compiles). The cost of the sparse
            step grows with k_max, not with d_sae.
        k_aux_max: the sparse AuxK's static bound on k_aux (None: d_in // 2, AuxK's default
            k_aux); a larger traced `hp["k_aux"]` is clipped to it.
    """

    k_max: int | None = None
    k_aux_max: int | None = None

    swept: ClassVar[str] = "k"
    auxk: ClassVar[bool] = True
    default_hparams: ClassVar[Mapping[str, float]] = {"auxk_coefficient": 1.0 / 32.0}

    def __post_init__(self) -> None:
        for name in ("k_max", "k_aux_max"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{type(self).__name__}.{name} must be None or an integer >= 1, got {value!r}")

    @property
    def sparse(self) -> bool:
        """Whether the sparse kernels are used (`k_max` is set)."""
        return self.k_max is not None

    def check_swept(self, values: np.ndarray, d_sae: int) -> None:
        """k in [1, d_sae], and k ≤ k_max on the sparse path."""
        super().check_swept(values, d_sae)
        if self.k_max is not None and np.any(values > self.k_max):
            raise ValueError(f"k must be <= k_max={self.k_max} (the sparse kernels' static bound), "
                             f"got {values.tolist()}")

    # ------------------------------------------------------------------ the dense reference

    def keep(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Bool[Array, "batch sae"]:
        """Which pre-activations are kept (the dense reference; z already masked by n_latents)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the sparse path

    def select(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Selection:
        """The sparse path's selection from (gradient-stopped, n_latents-masked) z."""
        raise NotImplementedError

    def _sparse_latents(self, params: Any, x: Array, hp: Mapping[str, Any]) -> tuple[Array, Selection, Array]:
        """(z, selection, f_sel): dense z for selection only, f at the selected latents."""
        z = pre_activations(params, x)
        sel = self.select(jax.lax.stop_gradient(mask_missing(z, hp)), hp)
        z_sel = selected_pre_activations(params, x, sel.idx, sel.n, z)
        return z, sel, jnp.where(sel.active, jax.nn.relu(z_sel), 0.0)

    @staticmethod
    def _densify(f_sel: Array, idx: Array, d_sae: int) -> Float[Array, "batch sae"]:
        rows = jnp.arange(idx.shape[0])[:, None]
        return jnp.zeros((idx.shape[0], d_sae), f_sel.dtype).at[rows, idx].set(f_sel)

    # ------------------------------------------------------------------ the interface

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = ReLU(z) where kept, 0 elsewhere."""
        if self.sparse:
            _, sel, f_sel = self._sparse_latents(params, x, hp)
            return self._densify(f_sel, sel.idx, params.W_enc.shape[0])
        z = mask_missing(pre_activations(params, x), hp)
        return jnp.where(self.keep(z, hp), jax.nn.relu(z), 0.0)

    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """recon + α·AuxK."""
        if self.sparse:
            z, sel, f_sel = self._sparse_latents(params, x, hp)
            x_hat = gather_decode(params.W_dec.T, f_sel, sel.idx, sel.n) + params.b_dec[None, :]
            k_aux_max = self.k_aux_max or x.shape[-1] // 2
            aux = sparse_auxk_loss(params, x, mask_missing(z, hp), x - x_hat, hp, k_aux_max)
            # The dense f is for callers that read it; the training step reads `fired`, so
            # XLA drops the densifying scatter from the step.
            f = self._densify(jax.lax.stop_gradient(f_sel), sel.idx, params.W_enc.shape[0])
            scalars = {**sel.scalars, **selection_terms(sel, f_sel, params.W_enc.shape[0])}
        else:
            z = mask_missing(pre_activations(params, x), hp)
            f = jnp.where(self.keep(z, hp), jax.nn.relu(z), 0.0)
            x_hat = linear_decode(params, f)
            aux = auxk_loss(params, z, x - x_hat, hp)  # AuxK's own path from z
            scalars = {}
        recon = reconstruction_error(x, x_hat)
        total = recon + self.hparam(hp, "auxk_coefficient", x) * aux
        return total, loss_terms(x, x_hat, f, recon=recon, auxk=aux, **scalars)
