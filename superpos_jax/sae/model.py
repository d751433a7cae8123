"""`SAE`: one trained sparse autoencoder as a single `eqx.Module`.

It holds its architecture (static), its params, the hyperparameters that encoding reads (e.g.
`k`), its running state (e.g. BatchTopK's inference threshold) and the input scale it was
trained with, and it acts on RAW activations:

    sae.encode(x)   -> f     latents as used after training, (..., d_in) -> (..., d_sae)
    sae.decode(f)   -> x̂     (..., d_sae) -> (..., d_in)
    sae(x)          -> x̂     = sae.decode(sae.encode(x)) (also `reconstruct`)

(A transcoder's x̂ is its prediction ŷ of another activation, of width d_out; a skip-
transcoder's `reconstruct` adds its skip term x W_skipᵀ, which `decode` of latents alone lacks.)

Its arrays are pytree leaves, so an `SAE` goes through jit, vmap and grad (interventions hold
one). Build it from training with `SAE.from_training` / `SAE.from_sweep`, or load one with
`superpos_jax.sae.io.load_sae`.

An SAE of a dictionary-size sweep trained padded (hyperparameter `n_latents` < d_sae, see
`superpos_jax.sae.training`) is cut to its first n_latents latents when it is built from concrete
arrays (`trimmed`), so what is saved and analysed is a plain size-n_latents SAE; inside a traced
function (jit/vmap) the size is not known statically, and the SAE keeps its padded latents, which
`encode` holds at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Float, PyTree

from superpos_jax.sae.architectures import Architecture, get
from superpos_jax.sae.architectures.base import first_latents, mask_latents

if TYPE_CHECKING:
    from superpos_jax.engine.trainer import TrainState
    from superpos_jax.sae.training import SAETraining


class SAE(eqx.Module):
    """One trained SAE acting on raw activations (see the module docstring).

    Attributes:
        architecture: the `Architecture` (static).
        params: its params pytree (trained on activations scaled by `input_scale`).
        hparams: per-SAE hyperparameters (scalars), e.g. {"k": 32.0}.
        state: the architecture's running state, e.g. {"threshold": θ} for BatchTopK.
        input_scale: s, with the SAE trained on s·x (1 outside the April-2024 recipe).
    """

    architecture: Architecture = eqx.field(static=True)
    params: PyTree[Array]
    hparams: dict[str, Array]
    state: dict[str, Array]
    input_scale: Float[Array, ""]

    def __init__(
        self,
        architecture: Architecture | str,
        params: PyTree[Array],
        hparams: Mapping[str, ArrayLike] | None = None,
        state: Mapping[str, ArrayLike] | None = None,
        input_scale: Float[ArrayLike, ""] | float = 1.0,
    ):
        self.architecture = get(architecture)
        if not isinstance(params, self.architecture.params_type):
            raise ValueError(
                f"params of a {self.architecture.name} SAE must be {self.architecture.params_type.__name__}, "
                f"got {type(params).__name__}"
            )
        self.params = params
        self.hparams = {name: jnp.asarray(value) for name, value in (hparams or {}).items()}
        default = self.architecture.init_state(params)
        state = default if state is None else state
        if missing := sorted(set(default) - set(state)):
            raise ValueError(f"a {self.architecture.name} SAE needs its state {missing} (e.g. from training)")
        self.state = {name: jnp.asarray(value) for name, value in state.items()}
        self.input_scale = jnp.asarray(input_scale, jnp.float32)

    @classmethod
    def from_training(
        cls, training: SAETraining, params: PyTree[Array], hparams: Mapping[str, ArrayLike], extra: Mapping[str, Any]
    ) -> SAE:
        """One trained instance: its `params`, `hparams` and `TrainState.extra` (unbatched);
        cut to its first `hparams["n_latents"]` latents when that is a concrete value (`trimmed`)."""
        return cls(training.architecture, params, hparams, extra["arch"], extra["input_scale"]).trimmed()

    @classmethod
    def from_sweep(cls, training: SAETraining, state: TrainState, hparams: Mapping[str, npt.ArrayLike], index: int) -> SAE:
        """Instance `index` of a batched sweep state (host or device arrays)."""
        take = lambda tree: jax.tree.map(lambda a: jnp.asarray(a[index]), tree)  # noqa: E731
        return cls.from_training(training, take(state.params), take(dict(hparams)), take(state.extra))

    def trimmed(self) -> SAE:
        """This SAE without the latents a padded dictionary masks: params cut to the first
        `hparams["n_latents"]` latents and `n_latents` dropped. Itself when it has no
        `n_latents`, or when that is traced (inside jit/vmap its value is not static)."""
        if "n_latents" not in self.hparams or isinstance(self.hparams["n_latents"], jax.core.Tracer):
            return self
        n = int(np.asarray(self.hparams["n_latents"]))
        if n != np.asarray(self.hparams["n_latents"]) or not 1 <= n <= self.d_sae:
            raise ValueError(f"n_latents must be an integer in [1, d_sae={self.d_sae}], got {self.hparams['n_latents']}")
        hparams = {name: value for name, value in self.hparams.items() if name != "n_latents"}
        return SAE(self.architecture, first_latents(self.params, n), hparams, self.state, self.input_scale)

    @property
    def d_in(self) -> int:
        """Input dimension."""
        return self.architecture.d_in(self.params)

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.architecture.d_sae(self.params)

    @property
    def decoder(self) -> Float[Array, "d_in sae"]:
        """Decoder columns in raw units, W_dec / s (latent i adds f_i times column i)."""
        return self.params.W_dec / self.input_scale.astype(self.params.W_dec.dtype)

    @property
    def decoder_directions(self) -> Float[Array, "d_in sae"]:
        """Unit-norm decoder columns (the learned dictionary)."""
        W = self.params.W_dec
        return W / jnp.maximum(jnp.linalg.norm(W, axis=0, keepdims=True), 1e-12)

    def encode(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch sae"]:
        """Latents of raw activations (leading axes are rows, encoded independently); latents
        ≥ `hparams["n_latents"]` of a padded SAE are 0 whatever its inference form."""
        rows = x.reshape(-1, x.shape[-1])
        scaled = rows * self.input_scale.astype(rows.dtype)
        f = mask_latents(self.architecture.encode_inference(self.params, self.state, scaled, self.hparams), self.hparams)
        return f.reshape(x.shape[:-1] + (f.shape[-1],))

    def decode(self, f: Float[Array, "*batch sae"]) -> Float[Array, "*batch d_out"]:
        """Raw-unit reconstruction of latents (d_out = d_in but for transcoders)."""
        rows = f.reshape(-1, f.shape[-1])
        x_hat = self.architecture.decode(self.params, rows) / self.input_scale.astype(rows.dtype)
        return x_hat.reshape(f.shape[:-1] + (x_hat.shape[-1],))

    def reconstruct(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """x̂ = decode(encode(x)), plus the architecture's `direct` term of x where it has one
        (a skip-transcoder's x W_skipᵀ; a transcoder's x̂ is its prediction ŷ, of width d_out)."""
        x_hat = self.decode(self.encode(x))
        direct = getattr(self.architecture, "direct", None)
        if direct is None:
            return x_hat
        rows = x.reshape(-1, x.shape[-1])
        scale = self.input_scale.astype(rows.dtype)
        extra = direct(self.params, rows * scale) / scale
        return x_hat + extra.reshape(x.shape[:-1] + (extra.shape[-1],))

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        """x̂ = `reconstruct(x)`."""
        return self.reconstruct(x)

    def folded(self) -> SAE:
        """The same SAE with its input scale folded into the params (input_scale 1)."""
        params = self.architecture.fold_input_scale(self.params, self.input_scale)
        return SAE(self.architecture, params, self.hparams, self.state, 1.0)

    def inference(self) -> SAE:
        """The SAE in its inference form (BatchTopK → JumpReLU at its threshold) with the input
        scale folded in (and any masked latents dropped): what is saved to SAELens."""
        trimmed = self.trimmed()
        arch, params, state, hparams = trimmed.architecture.inference_form(trimmed.params, trimmed.state, trimmed.hparams)
        return SAE(arch, params, hparams, state, self.input_scale).folded()
