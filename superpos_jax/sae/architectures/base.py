"""The `Architecture` interface of sparse autoencoders and the pieces architectures share.

An architecture is one static object (a frozen dataclass singleton, registered by name in
`superpos_jax.sae.architectures.registry`) whose methods are pure, single-instance functions:

    init(d_in, d_sae, *, key, recipe, ...)  -> params        (its own params pytree)
    encode(params, x, hp)                   -> f             (batch, d_sae)
    decode(params, f)                       -> x̂             (batch, d_in)
    loss(params, x, hp)                     -> (scalar, aux)
    init_state(params) / after_update(...)  running state and in-loop edits (projection, thresholds)
    encode_inference / inference_form       the form used after training (e.g. BatchTopK → JumpReLU)
    to_saelens / from_saelens               the SAELens layout

`hp` is a dict of per-instance hyperparameters that may all be traced (the engine vmaps these
functions); missing keys take the architecture's `default_hparams`. `swept` names the one
coefficient a sweep varies ("l1_coefficient" or "k").

Conventions. Batches are rows: x has shape (batch, d_in), latents f have shape (batch, d_sae).
Column i of W_dec (d_in, d_sae) is latent i's decoder direction; row i of W_enc (d_sae, d_in)
is its encoder direction. The standard encoder first centres the input, x̄ = x − b_dec, and the
standard decoder computes x̂ = f W_decᵀ + b_dec. Losses are sums over d_in / d_sae and means
over the batch: recon = mean_b ‖x_b − x̂_b‖².

Every params pytree names its per-latent leaves in `LATENT_AXES` (leaf name → the axis that
indexes latents, or None): resampling and optimizer-moment resets use it, so they work for any
architecture.

Dictionary-size sweeps (pad and mask): instances of one program share the largest d_sae, and
the optional per-instance hyperparameter `hp["n_latents"]` (a float32 scalar; absent = all)
says that only latents i < n_latents exist. Every architecture makes that exact: `init` is
prefix-consistent (latent i's parameters do not depend on d_sae, so the first N latents of a
size-N_max init are a size-N init), the latents ≥ n_latents are 0 in `encode` (their
pre-activations never fire and pass no gradient), and every loss term sums over the existing
latents only (`latent_mask`, `mask_latents`). The k-sparse architectures set the pre-activations
of masked latents to −∞ before selecting and leave them out of AuxK's dead set.

Decoder-norm constraint (2023 recipe, TopK family): chain `unit_norm_decoder()` before the
optimizer and let `after_update(..., unit_norm=True)` renormalise the columns after each update.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Key, PRNGKeyArray, PyTree, Scalar

RECIPES: tuple[str, ...] = ("2023", "2024")
TINY_THRESHOLD = 1e-30  # the smallest stored threshold: log θ stays finite at θ = 0


class SAEParams(eqx.Module):
    """The standard SAE parameters: a linear encoder with bias and a linear decoder with bias
    (ReLU, TopK, BatchTopK)."""

    LATENT_AXES: ClassVar[dict[str, int | None]] = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "b_dec": None}

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_in sae"]
    b_dec: Float[Array, " d_in"]


def _hp(hp: Mapping[str, Any], defaults: Mapping[str, float], name: str, like: Array) -> Array:
    if name in hp:
        value = hp[name]
    elif name in defaults:
        value = defaults[name]
    else:
        raise KeyError(f"SAE hyperparameter {name!r} is required")
    return jnp.asarray(value).astype(like.dtype)


def latent_mask(hp: Mapping[str, Any], d_sae: int) -> Bool[Array, " sae"]:
    """Which latents exist: i < `hp["n_latents"]` (every latent when `hp` has no "n_latents")."""
    if "n_latents" not in hp:
        return jnp.ones(d_sae, bool)
    return jnp.arange(d_sae, dtype=jnp.float32) < jnp.asarray(hp["n_latents"]).astype(jnp.float32)


def mask_latents(f: Float[Array, "*batch sae"], hp: Mapping[str, Any]) -> Float[Array, "*batch sae"]:
    """`f` with the latents ≥ `hp["n_latents"]` set to 0 (no gradient reaches them); `f` itself,
    unchanged, when `hp` has no "n_latents"."""
    if "n_latents" not in hp:
        return f
    return jnp.where(latent_mask(hp, f.shape[-1]), f, jnp.zeros((), f.dtype))


def latent_keys(key: PRNGKeyArray, d_sae: int) -> Key[Array, " sae"]:
    """One key per latent, `fold_in(key, i)`: latent i's draws do not depend on d_sae."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(d_sae, dtype=jnp.uint32))


def initial_decoder(
    d_in: int, d_sae: int, *, key: PRNGKeyArray, recipe: str, decoder_norm: float | int
) -> Float[Array, "d_in sae"]:
    """Random decoder columns of unit norm (recipe "2023") or of norm `decoder_norm` ("2024").

    Column i is drawn from `fold_in(key, i)` alone (`latent_keys`), so the first N columns of a
    size-N_max draw equal a size-N draw (the prefix-consistent init of dictionary-size sweeps)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}")
    W = jax.vmap(lambda k: jax.random.normal(k, (d_in,), jnp.float32), out_axes=1)(latent_keys(key, d_sae))
    W = W / jnp.linalg.norm(W, axis=0, keepdims=True)
    return decoder_norm * W if recipe == "2024" else W


def initial_bias(b_dec: npt.ArrayLike | None, d_in: int) -> Float[Array, " d_in"]:
    """b_dec as given (e.g. the geometric median of the data), or zero."""
    bias = jnp.zeros(d_in, jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32)
    if bias.shape != (d_in,):
        raise ValueError(f"b_dec has shape {bias.shape}; expected ({d_in},)")
    return bias


def pre_activations(params: Any, x: Float[Array, "batch d_in"]) -> Float[Array, "batch sae"]:
    """z = (x − b_dec) W_encᵀ + b_enc."""
    return (x - params.b_dec[None, :]) @ params.W_enc.T + params.b_enc[None, :]


def linear_decode(params: Any, f: Float[Array, "batch sae"]) -> Float[Array, "batch d_in"]:
    """x̂ = f W_decᵀ + b_dec."""
    return f @ params.W_dec.T + params.b_dec[None, :]


def reconstruction_error(x: Array, x_hat: Array) -> Scalar:
    """mean_b ‖x_b − x̂_b‖²."""
    return jnp.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))


def weighted_l1(params: Any, f: Array, flag: Array) -> Scalar:
    """mean_b Σ_i |f_i| w_i with w_i = ‖W_dec,i‖ where `flag` > 0, else 1."""
    weight = jnp.where(flag > 0, jnp.linalg.norm(params.W_dec, axis=0), 1.0)
    return jnp.mean(jnp.sum(jnp.abs(f) * weight[None, :], axis=-1))


def loss_terms(x: Array, x_hat: Array, f: Array, **scalars: Array) -> dict[str, Array]:
    """The loss's aux dict: its scalar terms, `l0`, and for the training loop the latents `f`
    (batch, d_sae), which latents `fired` (d_sae,) bool, and each example's squared error
    `sq_err` (batch,) (gradient-stopped). `l0` and `fired` given in `scalars` (a sparse path's,
    computed without f) are kept."""
    f = jax.lax.stop_gradient(f)
    sq_err = jax.lax.stop_gradient(jnp.sum(jnp.square(x - x_hat), axis=-1))
    out = {**scalars, "f": f, "sq_err": sq_err}
    if "l0" not in out:
        out["l0"] = jnp.mean(jnp.sum((f != 0).astype(f.dtype), axis=-1))
    if "fired" not in out:
        out["fired"] = jnp.any(f > 0, axis=0)
    return out


def unit_norm_decoder() -> optax.GradientTransformation:
    """Removes from the W_dec gradient the component parallel to each decoder column,
    g_i ← g_i − (g_i·w_i / ‖w_i‖²) w_i. Chain it before the optimizer; `params` (any
    architecture's params, possibly filtered to arrays) must be passed to `update`."""

    def init(params: PyTree) -> optax.EmptyState:
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any | None = None) -> tuple[Any, optax.EmptyState]:
        if params is None:
            raise ValueError("unit_norm_decoder needs the current params in update()")
        W, g = params.W_dec, updates.W_dec
        # Column dot products as a dot_general: XLA's CPU backend ran the equivalent
        # sum(W * g, axis=0) ~15x slower when g was a transposed sparse (scatter) gradient.
        coef = jnp.einsum("ij,ij->j", W, g) / jnp.einsum("ij,ij->j", W, W)
        return eqx.tree_at(lambda u: u.W_dec, updates, g - coef[None, :] * W), state

    return optax.GradientTransformation(init, update)


def project_decoder(params: Any) -> Any:
    """Renormalises every decoder column to unit norm."""
    W = params.W_dec
    return eqx.tree_at(lambda p: p.W_dec, params, W / jnp.linalg.norm(W, axis=0, keepdims=True))


def reset_latents(node: Any, dead: Bool[Array, " sae"]) -> Any:
    """`node` (a params-shaped pytree, e.g. an Adam moment) with every per-latent entry of the
    `dead` latents set to zero (leaves per `LATENT_AXES`; others unchanged)."""
    changes = {}
    for name, axis in type(node).LATENT_AXES.items():
        leaf = getattr(node, name)
        if axis is None or leaf is None:
            continue
        mask = dead if leaf.ndim == 1 else (dead[:, None] if axis == 0 else dead[None, :])
        changes[name] = jnp.where(mask, jnp.zeros((), leaf.dtype), leaf)
    return dataclasses.replace(node, **changes)


def first_latents(node: Any, n: int) -> Any:
    """`node` (a params-shaped pytree) with only its first `n` latents (leaves per
    `LATENT_AXES`; others unchanged): a size-n SAE from a padded one."""
    changes = {}
    for name, axis in type(node).LATENT_AXES.items():
        leaf = getattr(node, name)
        if axis is None or leaf is None:
            continue
        changes[name] = leaf[:n] if axis == 0 else leaf[:, :n]
    return dataclasses.replace(node, **changes)


@dataclasses.dataclass(frozen=True)
class Architecture(abc.ABC):
    """One SAE architecture (see the module docstring). Subclasses are frozen dataclasses
    without fields, so an instance is a hashable singleton usable as a static field.

    Class attributes:
        name: the registry name.
        swept: the hyperparameter a sweep varies ("l1_coefficient" or "k").
        default_hparams: values of optional hyperparameters missing from `hp`.
        recipes: the training recipes it supports ("2023"; "2024" for the April-2024 update;
            `init` itself accepts either, the recipe only choosing the decoder norm).
        auxk: dead latents are handled by AuxK (no resampling).
        saelens_architecture: its SAELens name, or None when it is saved in its inference form.
        params_type: the class of its params pytree.
        one_hook: it reads one hook's activations and reconstructs them (False for transcoders,
            which predict another hook, and crosscoders, which read several).
    """

    name: ClassVar[str]
    swept: ClassVar[str]
    default_hparams: ClassVar[Mapping[str, float]] = {}
    recipes: ClassVar[tuple[str, ...]] = ("2023",)
    auxk: ClassVar[bool] = False
    saelens_architecture: ClassVar[str | None]
    params_type: ClassVar[type] = SAEParams
    one_hook: ClassVar[bool] = True

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
        """Initial parameters of one SAE.

        Decoder columns are random directions, of unit norm for recipe "2023" and of norm
        `decoder_norm` (~0.1) for recipe "2024"; W_enc = W_decᵀ; b_enc is zero; b_dec is
        zero unless given (e.g. the geometric median of the data). `threshold` is the initial
        threshold of architectures that learn one (others ignore it).
        """
        W = initial_decoder(d_in, d_sae, key=key, recipe=recipe, decoder_norm=decoder_norm)
        return self.params_type(
            W_enc=W.T, b_enc=jnp.zeros(d_sae, jnp.float32), W_dec=W, b_dec=initial_bias(b_dec, d_in),
            **self.initial_extra_leaves(d_sae, threshold=threshold),
        )

    def initial_extra_leaves(self, d_sae: int, *, threshold: float | int) -> dict[str, Array]:
        """The initial values of the leaves of `params_type` beyond W_enc, b_enc, W_dec, b_dec
        (none for the standard SAE)."""
        return {}

    def d_in(self, params: Any) -> int:
        """Input dimension."""
        return int(params.W_enc.shape[-1])

    def d_sae(self, params: Any) -> int:
        """Number of latents."""
        return int(params.W_enc.shape[-2])

    def row_width(self, d_in: int) -> int:
        """Width of the training rows of an SAE reading `d_in` inputs: d_in itself (a
        transcoder's rows also hold its target, [x | y])."""
        return d_in

    def hparam(self, hp: Mapping[str, Any], name: str, like: Array) -> Array:
        """`hp[name]` (or the default) in the dtype of `like`."""
        return _hp(hp, self.default_hparams, name, like)

    # ------------------------------------------------------------------ the forward pass

    def pre_activations(self, params: Any, x: Float[Array, "batch d_in"]) -> Float[Array, "batch sae"]:
        """z = (x − b_dec) W_encᵀ + b_enc."""
        return pre_activations(params, x)

    @abc.abstractmethod
    def encode(self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]) -> Float[Array, "batch sae"]:
        """Latents f of a batch, as in training."""

    def decode(self, params: Any, f: Float[Array, "batch sae"]) -> Float[Array, "batch d_in"]:
        """x̂ = f W_decᵀ + b_dec."""
        return linear_decode(params, f)

    @abc.abstractmethod
    def loss(
        self, params: Any, x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> tuple[Scalar, dict[str, Array]]:
        """Training loss and a dict of its terms (`recon`, `l0`, ..., plus the latents `f` and
        per-example squared errors `sq_err` for the training loop)."""

    # ------------------------------------------------------------------ training state

    def init_state(self, params: Any) -> dict[str, Array]:
        """Running state kept beside the parameters (e.g. an inference threshold); {} by default."""
        return {}

    def after_update(
        self, params: Any, state: dict[str, Array], aux: Mapping[str, Array], hp: Mapping[str, Any], *, unit_norm: bool
    ) -> tuple[Any, dict[str, Array]]:
        """The in-loop edit after each optimizer update: decoder columns renormalised when
        `unit_norm`, running state updated from the step's `aux` (the loss's aux dict)."""
        return (project_decoder(params) if unit_norm else params), state

    def resample(
        self,
        params: Any,
        dead: Bool[Array, " sae"],
        directions: Float[Array, "sae d_in"],
        encoder_norm: Float[ArrayLike, ""],
    ) -> Any:
        """Params with each dead latent i re-initialised towards `directions[i]` (a unit input
        direction): decoder column = direction, encoder row = `encoder_norm` · direction, its
        encoder bias 0 (Anthropic, 2023)."""
        return dataclasses.replace(
            params,
            W_enc=jnp.where(dead[:, None], encoder_norm * directions, params.W_enc),
            b_enc=jnp.where(dead, 0.0, params.b_enc),
            W_dec=jnp.where(dead[None, :], directions.T, params.W_dec),
        )

    # ------------------------------------------------------------------ after training

    def encode_inference(
        self, params: Any, state: Mapping[str, Array], x: Float[Array, "batch d_in"], hp: Mapping[str, Any]
    ) -> Float[Array, "batch sae"]:
        """Latents as used after training (each row encoded independently); `encode` by default."""
        return self.encode(params, x, hp)

    def inference_form(
        self, params: Any, state: Mapping[str, Array], hp: Mapping[str, Any]
    ) -> tuple[Architecture, Any, dict[str, Array], dict[str, Any]]:
        """`(architecture, params, state, hparams)` of the architecture this one is used as
        after training (itself by default; BatchTopK becomes a JumpReLU)."""
        return self, params, dict(state), dict(hp)

    def fold_input_scale(self, params: Any, scale: Float[ArrayLike, ""]) -> Any:
        """Params acting on raw activations x of an SAE trained on s·x: W_enc·s, W_dec/s, b_dec/s
        (exact: the pre-activations are unchanged, x̂ is divided by s)."""
        s = jnp.asarray(scale, jnp.float32)
        return dataclasses.replace(params, W_enc=params.W_enc * s, W_dec=params.W_dec / s, b_dec=params.b_dec / s)

    # ------------------------------------------------------------------ SAELens

    def to_saelens(self, params: Any, hp: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """`(weights, cfg fields)` in the SAELens naming of `interop.saelens` (our orientation):
        W_enc, b_enc, W_dec, b_dec by default; params of an architecture that is its own
        inference form."""
        return {name: np.asarray(getattr(params, name), np.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}, {}

    def from_saelens(self, weights: Mapping[str, np.ndarray], cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`(params, hparams)` from SAELens weights (our orientation) and cfg."""
        return SAEParams(**{name: jnp.asarray(weights[name], jnp.float32) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}), {}

    # ------------------------------------------------------------------ the swept coefficient

    def check_swept(self, values: np.ndarray, d_sae: int) -> None:
        """Raises a ValueError naming `swept` unless every value is allowed."""
        if self.swept == "k":
            if np.any(~np.isfinite(values)) or np.any(values < 1) or np.any(values > d_sae):
                raise ValueError(f"k must be in [1, d_sae={d_sae}], got {values.tolist()}")
        elif np.any(~np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"{self.swept} must be finite and >= 0, got {values.tolist()}")


class L1Architecture(Architecture):
    """An architecture whose sparsity is a penalty with coefficient λ (`l1_coefficient`);
    dead latents are resampled."""

    swept: ClassVar[str] = "l1_coefficient"
