"""BatchTopK SAE (Bussmann et al., 2024): f = ReLU(z) on the k·batch largest pre-activations of
the whole batch, 0 elsewhere; loss recon + α·AuxK as TopK.

At inference it is a JumpReLU with one shared threshold θ, a running average of the smallest
positive training activation (`state["threshold"]`), so rows are encoded independently; it is
saved to SAELens in that form ("jumprelu").

`BatchTopK()` is the dense reference; `BatchTopK(k_max=K)` the sparse kernels (see `ksparse`):
each row contributes at most `row_cap` candidates (default min(d_sae, 4·k_max)), its largest
pre-activations by `lax.top_k`, and the batch keeps the k·batch largest candidates (`rank_mask`,
ties kept as in the reference). That equals the reference unless some row has more than
`row_cap` of the batch's k·batch largest; such a row keeps its `row_cap` largest and the rest of
the budget goes to the next largest candidates of other rows (still k·batch in all). The loss
reports `capped_rows`, the number of rows whose every candidate was kept (the rows that may have
been truncated; 0 means the result is exactly the reference's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from superpos_jax.sae.architectures.base import TINY_THRESHOLD, Architecture, mask_latents, pre_activations
from superpos_jax.sae.architectures.ksparse import KSparseArchitecture, Selection, rank_mask
from superpos_jax.sae.architectures.jumprelu import JumpReLU, JumpReLUParams
from superpos_jax.sae.sparse import select_top


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


@dataclasses.dataclass(frozen=True)
class BatchTopK(KSparseArchitecture):
    """The BatchTopK SAE (hyperparameters as TopK, plus `threshold_momentum` of the running
    threshold, default 0.01).

    Attributes:
        k_max, k_aux_max: as `KSparseArchitecture` (None: the dense reference).
        row_cap: the sparse path's static bound on the latents one row may keep (None:
            min(d_sae, 4·k_max)); d_sae makes the sparse path exact for any batch.
    """

    row_cap: int | None = None

    name: ClassVar[str] = "batchtopk"
    default_hparams: ClassVar[Mapping[str, float]] = {"auxk_coefficient": 1.0 / 32.0, "threshold_momentum": 0.01}
    saelens_architecture: ClassVar[str | None] = None

    def keep(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Bool[Array, "batch sae"]:
        """The k·batch largest pre-activations of the batch."""
        n_keep = jnp.asarray(hp["k"]).astype(jnp.float32) * z.shape[0]
        return rank_mask(z.reshape(-1), n_keep).reshape(z.shape)

    def __post_init__(self) -> None:
        super().__post_init__()
        cap = self.row_cap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"BatchTopK.row_cap must be None or an integer >= 1, got {cap!r}")

    def select(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Selection:
        """Each row's `row_cap` largest by `lax.top_k`, then the batch's k·batch largest of
        those candidates; reports `capped_rows` (rows whose last candidate was kept)."""
        d_sae = z.shape[-1]
        cap = min(self.row_cap or 4 * int(self.k_max or d_sae), d_sae)
        vals, idx = select_top(z, cap)
        n_keep = jnp.asarray(hp["k"]).astype(jnp.float32) * z.shape[0]
        active = rank_mask(vals.reshape(-1), n_keep).reshape(vals.shape)  # a prefix of each row
        n = jnp.max(jnp.sum(active, axis=-1, dtype=jnp.int32))
        capped = jnp.sum(active[:, -1]).astype(jnp.float32) if cap < d_sae else jnp.float32(0.0)
        return Selection(idx=idx, active=active, n=n, scalars={"capped_rows": capped})

    def init_state(self, params: Any) -> dict[str, Array]:
        """`threshold`: the running inference threshold, starting at 0."""
        return {"threshold": jnp.float32(0.0)}

    def after_update(
        self, params: Any, state: dict[str, Array], aux: Mapping[str, Array], hp: Mapping[str, Any], *, unit_norm: bool
    ) -> tuple[Any, dict[str, Array]]:
        """As every architecture, then the running threshold from this batch's latents."""
        params, state = super().after_update(params, state, aux, hp, unit_norm=unit_norm)
        f = aux.get("f_active", aux["f"])  # the sparse path's kept values: the same smallest positive
        momentum = self.hparam(hp, "threshold_momentum", f)
        return params, {**state, "threshold": threshold_update(state["threshold"], f, momentum)}

    def encode_inference(
        self, params: Any, state: Mapping[str, Array], x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> Float[Array, "batch sae"]:
        """The JumpReLU at the running threshold (`inference_encode`), latents ≥ `n_latents` at 0."""
        return mask_latents(inference_encode(params, x, state["threshold"]), hp)

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
