"""TopK SAE (Gao et al., 2024): f = ReLU(z) on each row's k largest pre-activations, 0 elsewhere.

Loss: recon + α·AuxK over the dead latents. `k` may be traced (a float or int per instance).
`TopK()` is the dense reference; `TopK(k_max=K)` the sparse kernels for every k ≤ K (see
`ksparse`). SAELens: "topk", with cfg `k`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from superpos_jax.sae.architectures.ksparse import KSparseArchitecture, Selection, rank_mask
from superpos_jax.sae.sparse import select_top


class TopK(KSparseArchitecture):
    """The TopK SAE (hyperparameters: `k`, and AuxK's `dead`, `k_aux`, `auxk_coefficient`)."""

    name: ClassVar[str] = "topk"
    saelens_architecture: ClassVar[str | None] = "topk"

    def keep(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Bool[Array, "batch sae"]:
        """The `hp["k"]` largest pre-activations of each row."""
        return rank_mask(z, hp["k"])

    def select(self, z: Float[Array, "batch sae"], hp: Mapping[str, Any]) -> Selection:
        """Each row's K = min(k_max, d_sae) largest by `lax.top_k`; the first k are kept
        (exactly k, the lower index first among ties)."""
        K = min(int(self.k_max or z.shape[-1]), z.shape[-1])
        _, idx = select_top(z, K)
        k = jnp.clip(jnp.asarray(hp["k"]).astype(jnp.int32), 0, K)  # truncated, as rank_mask does
        return Selection(idx=idx, active=jnp.broadcast_to(jnp.arange(K)[None, :] < k, idx.shape), n=k, scalars={})

    def to_saelens(self, params: Any, hp: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The standard weights; cfg `k` (required in `hp`)."""
        if "k" not in hp:
            raise ValueError("a TopK SAE needs its k (hparams['k']) to be saved")
        weights, _ = super().to_saelens(params, hp)
        k = int(round(float(np.asarray(hp["k"]))))
        return weights, {"k": k, "activation_fn_kwargs": {"k": k}}

    def from_saelens(self, weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The standard weights; hparams `k` from cfg (top level or `activation_fn_kwargs`)."""
        params, _ = super().from_saelens(weights, cfg)
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        return params, {"k": jnp.float32(k)}
