"""Transcoders (Dunefsky et al., 2024) and skip-transcoders (Paulo et al., 2025): a sparse
dictionary that reads one activation and predicts another (e.g. an MLP's input → its output).

    f = ReLU(x W_encᵀ + b_enc)                          (x: the input, NOT centred by b_dec)
    ŷ = f W_decᵀ + b_dec             ("transcoder")
    ŷ = f W_decᵀ + b_dec + x W_skipᵀ ("skip_transcoder"; W_skip (d_out, d_in) starts at 0)

Loss: mean_b ‖y_b − ŷ_b‖² + λ Σ_i f_i w_i, w_i = 1 (2023) or ‖W_dec,i‖ (2024, `decoder_norm_l1`),
as the ReLU SAE. These are SAELens's `transcoder` and `skip_transcoder` (ReLU, no b_dec
subtraction, W_skip of shape (d_out, d_in)).

Training rows. The engine hands `loss` one row array; a transcoder's rows are the
concatenation [x | y] of width d_in + d_out (`row_width`), split at d_in = W_enc's width
(`split`): `superpos_jax.sae.sources.LinearViews` builds such rows from a latent source, and
stored activations are paired with `np.concatenate([x_in, y_out], axis=1)`. `encode` takes the
input x alone (width d_in); a row of width d_in + d_out is also accepted and its x part used, so
the training loop's `aux["f"]` and the data statistics work unchanged.

Sizes. `init(d_in, d_sae)` takes the INPUT width d_in, as for every architecture; the output
width is the static field `d_out` (None, the registered default: d_out = d_in, as for an MLP's
input and output in the residual stream). `SAETraining(d_in=d_in)` trains on rows of width
`row_width(d_in)`; b_dec starts at the output part of the rows' geometric median. `decode(f)`
is f W_decᵀ + b_dec; the skip term needs x, so `reconstruct` (and `SAE.reconstruct`) adds
`direct(params, x)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, Scalar

from superpos_jax.sae.architectures.base import (
    L1Architecture,
    initial_bias,
    initial_decoder,
    linear_decode,
    loss_terms,
    mask_latents,
    reconstruction_error,
    weighted_l1,
)


class TranscoderParams(eqx.Module):
    """A transcoder's parameters: encoder of the input, decoder to the output."""

    LATENT_AXES: ClassVar[dict[str, int | None]] = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None}

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_out sae"]
    b_dec: Float[Array, " d_out"]


class SkipTranscoderParams(eqx.Module):
    """A skip-transcoder's parameters: a transcoder's plus the linear skip map W_skip."""

    LATENT_AXES: ClassVar[dict[str, int | None]] = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None,
                                                    "W_skip": None}

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_out sae"]
    b_dec: Float[Array, " d_out"]
    W_skip: Float[Array, "d_out d_in"]


def _unit(a: Array) -> Array:
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass(frozen=True)
class Transcoder(L1Architecture):
    """The ReLU transcoder (hyperparameters: `l1_coefficient` λ, `decoder_norm_l1` 0/1 flag).

    Attributes:
        d_out: the output width (None: equal to the input width d_in).
    """

    d_out: int | None = None

    name: ClassVar[str] = "transcoder"
    default_hparams: ClassVar[Mapping[str, float]] = {"l1_coefficient": 0.0, "decoder_norm_l1": 0.0}
    recipes: ClassVar[tuple[str, ...]] = ("2023", "2024")
    saelens_architecture: ClassVar[str | None] = "transcoder"
    params_type: ClassVar[type] = TranscoderParams
    skip: ClassVar[bool] = False
    one_hook: ClassVar[bool] = False

    def __post_init__(self) -> None:
        d = self.d_out
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1):
            raise ValueError(f"{type(self).__name__}.d_out must be None or an integer >= 1, got {d!r}")

    # ------------------------------------------------------------------ sizes

    def output_width(self, d_in: int) -> int:
        """d_out for an input width d_in."""
        return int(d_in if self.d_out is None else self.d_out)

    def row_width(self, d_in: int) -> int:
        """The width of the training rows [x | y]: d_in + d_out."""
        return int(d_in) + self.output_width(d_in)

    def d_out_of(self, params: Any) -> int:
        """Output width of `params`."""
        return int(params.W_dec.shape[0])

    def split(self, params: Any, rows: Float[Array, "batch row"]) -> tuple[Array, Array]:
        """(x, y) of training rows [x | y] (x: the first d_in = W_enc's width columns)."""
        d_in, d_out = params.W_enc.shape[1], params.W_dec.shape[0]
        if rows.shape[-1] != d_in + d_out:
            raise ValueError(f"{self.name} rows must be [x | y] of width d_in + d_out = {d_in} + {d_out}, "
                             f"got width {rows.shape[-1]}")
        return rows[..., :d_in], rows[..., d_in:]

    def _input(self, params: Any, x: Array) -> Array:
        """x itself, or the x part of a training row."""
        d_in = params.W_enc.shape[1]
        if x.shape[-1] == d_in:
            return x
        return self.split(params, x)[0]

    # ------------------------------------------------------------------ parameters

    def init(
        self,
        d_in: int,
        d_sae: int,
        *,
        key: PRNGKeyArray,
        recipe: str = "2023",
        b_dec: npt.ArrayLike | None = None,
        decoder_norm: float | int = 0.1,
        threshold: float | int = 0.001,
    ) -> Any:
        """Initial parameters: random decoder columns (unit norm for "2023", `decoder_norm` for
        "2024", prefix-consistent as `base.initial_decoder`), W_enc = W_decᵀ when d_out = d_in
        (else random rows of the decoder's norm), b_enc = 0, W_skip = 0; b_dec as given (of
        width d_out, or the output part of a row-wide median of width d_in + d_out) or zero.
        `threshold` is ignored."""
        d_out = self.output_width(d_in)
        W_dec = initial_decoder(d_out, d_sae, key=key, recipe=recipe, decoder_norm=decoder_norm)
        if d_out == d_in:
            W_enc = W_dec.T
        else:
            W_enc = initial_decoder(d_in, d_sae, key=jax.random.fold_in(key, 1), recipe=recipe,
                                    decoder_norm=decoder_norm).T
        if b_dec is not None and np.shape(b_dec) == (d_in + d_out,):
            b_dec = jnp.asarray(b_dec)[d_in:]
        leaves = {"W_enc": W_enc, "b_enc": jnp.zeros(d_sae, jnp.float32), "W_dec": W_dec,
                  "b_dec": initial_bias(b_dec, d_out)}
        if self.skip:
            leaves["W_skip"] = jnp.zeros((d_out, d_in), jnp.float32)
        return self.params_type(**leaves)

    # ------------------------------------------------------------------ the forward pass

    def pre_activations(self, params: Any, x: Float[Array, "batch d_in"]) -> Float[Array, "batch sae"]:
        """z = x W_encᵀ + b_enc (no b_dec: it lives in the output space)."""
        return self._input(params, x) @ params.W_enc.T + params.b_enc[None, :]

    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """f = ReLU(z) (0 for latents ≥ `hp["n_latents"]`); x of width d_in (or a training row)."""
        return mask_latents(jax.nn.relu(self.pre_activations(params, x)), hp)

    def decode(self, params: Any, f: Float[Array, "batch sae"]) -> Float[Array, "batch d_out"]:
        """f W_decᵀ + b_dec (without the skip term, which needs x: `direct`)."""
        return linear_decode(params, f)

    def direct(self, params: Any, x: Float[Array, "batch d_in"]) -> Float[Array, "batch d_out"]:
        """The part of ŷ computed from x directly: x W_skipᵀ (skip-transcoder), else 0."""
        x = self._input(params, x)
        if not self.skip:
            return jnp.zeros(x.shape[:-1] + (params.W_dec.shape[0],), x.dtype)
        return x @ params.W_skip.T

    def reconstruct(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch d_out"]:
        """ŷ = decode(encode(x)) + direct(x)."""
        return self.decode(params, self.encode(params, x, hp)) + self.direct(params, x)

    def loss(
        self, params: Any, rows: Float[Array, "batch row"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """mean_b ‖y − ŷ‖² + λ Σ_i f_i w_i on rows [x | y]; `sq_err` is each row's ‖y − ŷ‖²."""
        x, y = self.split(params, rows)
        f = self.encode(params, x, hp)
        y_hat = self.decode(params, f) + self.direct(params, x)
        recon = reconstruction_error(y, y_hat)
        sparsity = weighted_l1(params, f, self.hparam(hp, "decoder_norm_l1", f))
        total = recon + self.hparam(hp, "l1_coefficient", y) * sparsity
        return total, loss_terms(y, y_hat, f, recon=recon, sparsity=sparsity)

    # ------------------------------------------------------------------ training edits

    def resample(
        self, params: Any, dead: Bool[Array, " sae"], directions: Float[Array, "sae row"],
        encoder_norm: Float[ArrayLike, ""],
    ) -> Any:
        """As the base resampling with each direction a training row [x | y]: the decoder
        column is y's unit direction, the encoder row `encoder_norm` times x's."""
        x_dir, y_dir = self.split(params, directions)
        return dataclasses.replace(
            params,
            W_enc=jnp.where(dead[:, None], encoder_norm * _unit(x_dir), params.W_enc),
            b_enc=jnp.where(dead, 0.0, params.b_enc),
            W_dec=jnp.where(dead[None, :], _unit(y_dir).T, params.W_dec),
        )

    # ------------------------------------------------------------------ SAELens

    def to_saelens(self, params: Any, hp: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """W_enc, b_enc, W_dec, b_dec (+ W_skip) and cfg `d_out`."""
        names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if self.skip else ())
        weights = {name: np.asarray(getattr(params, name), np.float32) for name in names}
        return weights, {"d_out": self.d_out_of(params)}

    def from_saelens(self, weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The params from SAELens weights (our orientation)."""
        names = ("W_enc", "b_enc", "W_dec", "b_dec") + (("W_skip",) if self.skip else ())
        return self.params_type(**{name: jnp.asarray(weights[name], jnp.float32) for name in names}), {}


@dataclasses.dataclass(frozen=True)
class SkipTranscoder(Transcoder):
    """The ReLU skip-transcoder: a transcoder plus ŷ += x W_skipᵀ (hyperparameters as
    `Transcoder`; W_skip is not penalised)."""

    name: ClassVar[str] = "skip_transcoder"
    saelens_architecture: ClassVar[str | None] = "skip_transcoder"
    params_type: ClassVar[type] = SkipTranscoderParams
    skip: ClassVar[bool] = True
