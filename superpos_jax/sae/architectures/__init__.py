"""Sparse autoencoders (dictionary learning) as pure, single-instance functions.

Every architecture shares one parameter pytree, `SAEParams`, and one interface:

    encode(kind, params, x, hp) -> f        (batch, d_sae)
    decode(params, f)           -> x̂        (batch, d_in)
    loss(kind, params, x, hp)   -> (scalar, aux dict)

with `kind` one of `SAE_KINDS` (static: each kind is its own compiled program) and `hp` a dict
of per-instance hyperparameters that may all be traced (swept with `jax.vmap`). There is no
instance axis here: the engine vmaps these functions.

Conventions. Batches are rows: x has shape (batch, d_in), latents f have shape (batch, d_sae).
Column i of W_dec (d_in, d_sae) is latent i's decoder direction; row i of W_enc (d_sae, d_in)
is its encoder direction. Every encoder first centres the input, x̄ = x − b_dec, and every
decoder computes x̂ = f W_decᵀ + b_dec. Losses are sums over d_in / d_sae and means over the
batch: recon = mean_b ‖x_b − x̂_b‖².

=========  ==========================================  ========================================
kind       f                                           loss (+ hp keys)
=========  ==========================================  ========================================
relu       ReLU(z),  z = x̄ W_encᵀ + b_enc               recon + λ Σ_i f_i w_i, w_i = 1 (2023) or
                                                       ‖W_dec,i‖ (2024, `decoder_norm_l1` = 1)
topk       ReLU(z) on each row's k largest z           recon + α·AuxK (`k`, `dead`, `k_aux`, α)
batchtopk  ReLU(z) on the batch's k·batch largest z    recon + α·AuxK (as topk)
jumprelu   z · H(z − θ),  θ = exp(log_threshold)       recon + λ Σ_i H(z_i − θ_i) (`bandwidth`)
gated      H(π) ⊙ ReLU(exp(r_mag) ⊙ x̄W_encᵀ + b_mag),   recon + λ Σ_i ReLU(π_i) w_i
           π = x̄ W_encᵀ + b_enc                          + ‖x − x̂_frozen(ReLU(π))‖²
=========  ==========================================  ========================================

x̂_frozen decodes through stop-gradient copies of W_dec and b_dec; H has zero gradient except in
jumprelu, whose threshold gets the straight-through rectangle-kernel gradient (`jumprelu`, `step`).

`hp` keys (missing keys take the defaults in `DEFAULT_HPARAMS`): `l1_coefficient` λ,
`decoder_norm_l1` (0/1 flag), `k` (int or float, may differ per instance), `k_aux`,
`auxk_coefficient` α (1/32), `dead` (a (d_sae,) bool mask of dead latents; without it the AuxK
term is zero), `bandwidth` ε of the JumpReLU rectangle kernel (0.001).

Decoder-norm constraint (2023 recipe, TopK): chain `unit_norm_decoder()` before the optimizer
and call `project_decoder` on the parameters after each update.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree, Scalar

SAE_KINDS: tuple[str, ...] = ("relu", "topk", "batchtopk", "jumprelu", "gated")
RECIPES: tuple[str, ...] = ("2023", "2024")

DEFAULT_HPARAMS: dict[str, float] = {
    "l1_coefficient": 0.0,
    "decoder_norm_l1": 0.0,
    "auxk_coefficient": 1.0 / 32.0,
    "bandwidth": 0.001,
}


class SAEParams(eqx.Module):
    """Parameters of every SAE kind; leaves a kind does not use receive zero gradient.

    `log_threshold` is used by jumprelu only; `r_mag` and `b_mag` by gated only (its gate
    path uses `W_enc`, `b_enc`).
    """

    W_enc: Float[Array, "sae d_in"]
    b_enc: Float[Array, " sae"]
    W_dec: Float[Array, "d_in sae"]
    b_dec: Float[Array, " d_in"]
    log_threshold: Float[Array, " sae"]
    r_mag: Float[Array, " sae"]
    b_mag: Float[Array, " sae"]


def _check_kind(kind: str) -> None:
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; choose from {SAE_KINDS}")


def init_sae(
    kind: str,
    d_in: int,
    d_sae: int,
    *,
    key: PRNGKeyArray,
    recipe: str = "2023",
    decoder_norm: float | int = 0.1,
    threshold: float | int = 0.001,
    b_dec: npt.ArrayLike | None = None,
) -> SAEParams:
    """Initial parameters of one SAE.

    Decoder columns are random directions, of unit norm for recipe "2023" and of norm
    `decoder_norm` (~0.1) for recipe "2024"; in both W_enc = W_decᵀ. b_enc, r_mag and b_mag are
    zero; the JumpReLU threshold starts at `threshold` (log_threshold = log threshold); b_dec is
    zero unless given (e.g. the geometric median of the data).
    """
    _check_kind(kind)
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    if d_in < 1 or d_sae < 1:
        raise ValueError(f"d_in and d_sae must be >= 1, got d_in={d_in}, d_sae={d_sae}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    W = jax.random.normal(key, (d_in, d_sae), jnp.float32)
    W = W / jnp.linalg.norm(W, axis=0, keepdims=True)
    if recipe == "2024":
        W = decoder_norm * W
    bias = jnp.zeros(d_in, jnp.float32) if b_dec is None else jnp.asarray(b_dec, jnp.float32)
    if bias.shape != (d_in,):
        raise ValueError(f"b_dec has shape {bias.shape}; expected ({d_in},)")
    zeros = jnp.zeros(d_sae, jnp.float32)
    return SAEParams(
        W_enc=W.T,
        b_enc=zeros,
        W_dec=W,
        b_dec=bias,
        log_threshold=jnp.full(d_sae, np.log(threshold), jnp.float32),
        r_mag=zeros,
        b_mag=zeros,
    )


def _hp(hp: dict[str, Any], name: str, like: Array) -> Array:
    if name in hp:
        value = hp[name]
    elif name in DEFAULT_HPARAMS:
        value = DEFAULT_HPARAMS[name]
    else:
        raise KeyError(f"SAE hyperparameter {name!r} is required")
    return jnp.asarray(value).astype(like.dtype)


def pre_activations(params: SAEParams, x: Float[Array, "batch d_in"]) -> Float[Array, "batch sae"]:
    """z = (x − b_dec) W_encᵀ + b_enc."""
    return (x - params.b_dec[None, :]) @ params.W_enc.T + params.b_enc[None, :]


def decode(params: SAEParams, f: Float[Array, "batch sae"]) -> Float[Array, "batch d_in"]:
    """x̂ = f W_decᵀ + b_dec."""
    return f @ params.W_dec.T + params.b_dec[None, :]


def _order_key(z: Array) -> Array:
    """float32 → uint32, monotone: a < b iff key(a) < key(b) (for non-NaN values)."""
    u = jax.lax.bitcast_convert_type(z.astype(jnp.float32), jnp.uint32)
    return jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))


def _rank_mask(z: Array, k: ArrayLike | float | int) -> Array:
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


def relu_encode(params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]) -> Float[Array, "batch sae"]:
    """f = ReLU(z)."""
    return jax.nn.relu(pre_activations(params, x))


def topk_encode(params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]) -> Float[Array, "batch sae"]:
    """f = ReLU(z) on the `hp["k"]` largest pre-activations of each row, 0 elsewhere."""
    z = pre_activations(params, x)
    return jnp.where(_rank_mask(z, hp["k"]), jax.nn.relu(z), 0.0)


def batchtopk_encode(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> Float[Array, "batch sae"]:
    """f = ReLU(z) on the k·batch largest pre-activations of the whole batch, 0 elsewhere."""
    z = pre_activations(params, x)
    n_keep = jnp.asarray(hp["k"]).astype(jnp.float32) * x.shape[0]
    keep = _rank_mask(z.reshape(-1), n_keep).reshape(z.shape)
    return jnp.where(keep, jax.nn.relu(z), 0.0)


def batchtopk_threshold_update(
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


def batchtopk_inference_encode(
    params: SAEParams, x: Float[Array, "batch d_in"], threshold: Float[ArrayLike, ""] | float
) -> Float[Array, "batch sae"]:
    """BatchTopK at inference: a JumpReLU with one shared threshold, f = z · H(z − θ), θ ≥ 0.
    Each row is encoded independently of the rest of the batch."""
    z = pre_activations(params, x)
    threshold = jnp.maximum(jnp.asarray(threshold).astype(z.dtype), 0.0)
    return jnp.where(z > threshold, z, 0.0)


def _rectangle(u: Array) -> Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu(z: Array, threshold: Array, bandwidth: Array) -> Array:
    """JumpReLU z · H(z − θ) with straight-through gradients (Gemma Scope):
    ∂/∂z = H(z − θ), ∂/∂θ = −(θ/ε) K((z − θ)/ε), K the unit rectangle on (−½, ½)."""
    return jnp.where(z > threshold, z, 0.0)


def _jumprelu_fwd(z: Array, threshold: Array, bandwidth: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return jumprelu(z, threshold, bandwidth), (z, threshold, bandwidth)


def _jumprelu_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    z, threshold, bandwidth = res
    dz = jnp.where(z > threshold, g, 0.0)
    dtheta = -(threshold / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return dz, dtheta, jnp.zeros_like(bandwidth)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step(z: Array, threshold: Array, bandwidth: Array) -> Array:
    """Heaviside H(z − θ) with straight-through gradients: ∂/∂z = 0, ∂/∂θ = −(1/ε) K((z − θ)/ε)."""
    return (z > threshold).astype(z.dtype)


def _step_fwd(z: Array, threshold: Array, bandwidth: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return step(z, threshold, bandwidth), (z, threshold, bandwidth)


def _step_bwd(res: tuple[Array, Array, Array], g: Array) -> tuple[Array, Array, Array]:
    z, threshold, bandwidth = res
    dtheta = -(1.0 / bandwidth) * _rectangle((z - threshold) / bandwidth) * g
    return jnp.zeros_like(z), dtheta, jnp.zeros_like(bandwidth)


step.defvjp(_step_fwd, _step_bwd)


def jumprelu_encode(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> Float[Array, "batch sae"]:
    """f = z · H(z − θ), θ = exp(log_threshold)."""
    z = pre_activations(params, x)
    theta = jnp.broadcast_to(jnp.exp(params.log_threshold), z.shape)
    return jumprelu(z, theta, jnp.broadcast_to(_hp(hp, "bandwidth", z), z.shape))


def _gated_paths(params: SAEParams, x: Array) -> tuple[Array, Array]:
    xw = (x - params.b_dec[None, :]) @ params.W_enc.T
    gate = xw + params.b_enc[None, :]
    magnitude = jax.nn.relu(jnp.exp(params.r_mag)[None, :] * xw + params.b_mag[None, :])
    return gate, magnitude


def gated_encode(params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]) -> Float[Array, "batch sae"]:
    """f = H(π) ⊙ ReLU(exp(r_mag) ⊙ x̄W_encᵀ + b_mag), π = x̄W_encᵀ + b_enc."""
    gate, magnitude = _gated_paths(params, x)
    return jnp.where(gate > 0, magnitude, 0.0)


ENCODERS = {
    "relu": relu_encode,
    "topk": topk_encode,
    "batchtopk": batchtopk_encode,
    "jumprelu": jumprelu_encode,
    "gated": gated_encode,
}


def encode(
    kind: str, params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> Float[Array, "batch sae"]:
    """Latents f of an SAE of kind `kind` (see the module table)."""
    _check_kind(kind)
    return ENCODERS[kind](params, x, hp)


def _recon(x: Array, x_hat: Array) -> Array:
    return jnp.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))


def _l1(params: SAEParams, f: Array, hp: dict[str, Any]) -> Array:
    flag = _hp(hp, "decoder_norm_l1", f)
    weight = jnp.where(flag > 0, jnp.linalg.norm(params.W_dec, axis=0), 1.0)
    return jnp.mean(jnp.sum(jnp.abs(f) * weight[None, :], axis=-1))


def auxk_loss(
    params: SAEParams, z: Float[Array, "batch sae"], residual: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> Scalar:
    """AuxK (Gao et al., 2024): ‖e − ê‖², ê = W_dec ReLU(TopK_{k_aux}(z over dead latents)),
    with e the (gradient-stopped) residual x − x̂. Only dead latents' encoder rows, b_enc entries
    and decoder columns (and b_dec through z) receive gradient; zero when no latent is dead."""
    if "dead" not in hp:
        return jnp.zeros((), z.dtype)
    dead = jnp.broadcast_to(jnp.asarray(hp["dead"]).astype(bool)[None, :], z.shape)
    k_aux = hp.get("k_aux", residual.shape[-1] // 2)
    masked = jnp.where(dead, z, -jnp.inf)
    f_aux = jnp.where(_rank_mask(masked, k_aux) & dead, jax.nn.relu(z), 0.0)
    e = jax.lax.stop_gradient(residual)
    aux = jnp.mean(jnp.sum(jnp.square(e - f_aux @ params.W_dec.T), axis=-1))
    return jnp.where(jnp.any(dead), aux, 0.0)


def _topk_family_loss(
    params: SAEParams, x: Array, hp: dict[str, Any], f: Array
) -> tuple[Scalar, dict[str, Array]]:
    z = pre_activations(params, x)
    x_hat = decode(params, f)
    recon = _recon(x, x_hat)
    aux = auxk_loss(params, z, x - x_hat, hp)
    total = recon + _hp(hp, "auxk_coefficient", x) * aux
    return total, _terms(x, x_hat, f, recon=recon, auxk=aux)


def _l0(f: Array) -> Array:
    return jnp.mean(jnp.sum((f != 0).astype(f.dtype), axis=-1))


def _terms(x: Array, x_hat: Array, f: Array, **scalars: Array) -> dict[str, Array]:
    """The loss's aux dict: its scalar terms, `l0`, and for the training loop the latents `f`
    (batch, d_sae) and each example's squared error `sq_err` (batch,) (gradient-stopped)."""
    sq_err = jax.lax.stop_gradient(jnp.sum(jnp.square(x - x_hat), axis=-1))
    return {**scalars, "l0": _l0(f), "f": jax.lax.stop_gradient(f), "sq_err": sq_err}


def relu_loss(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """recon + λ Σ_i f_i w_i (w_i = ‖W_dec,i‖ when `decoder_norm_l1`, else 1)."""
    f = relu_encode(params, x, hp)
    x_hat = decode(params, f)
    recon = _recon(x, x_hat)
    sparsity = _l1(params, f, hp)
    total = recon + _hp(hp, "l1_coefficient", x) * sparsity
    return total, _terms(x, x_hat, f, recon=recon, sparsity=sparsity)


def topk_loss(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """recon + α·AuxK."""
    return _topk_family_loss(params, x, hp, topk_encode(params, x, hp))


def batchtopk_loss(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """recon + α·AuxK, with BatchTopK latents."""
    return _topk_family_loss(params, x, hp, batchtopk_encode(params, x, hp))


def jumprelu_loss(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """recon + λ Σ_i H(z_i − θ_i) (mean over batch), straight-through gradients to θ."""
    z = pre_activations(params, x)
    theta = jnp.broadcast_to(jnp.exp(params.log_threshold), z.shape)
    eps = jnp.broadcast_to(_hp(hp, "bandwidth", z), z.shape)
    f = jumprelu(z, theta, eps)
    x_hat = decode(params, f)
    recon = _recon(x, x_hat)
    sparsity = jnp.mean(jnp.sum(step(z, theta, eps), axis=-1))
    total = recon + _hp(hp, "l1_coefficient", x) * sparsity
    return total, _terms(x, x_hat, f, recon=recon, sparsity=sparsity)


def gated_loss(
    params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """recon + λ Σ_i ReLU(π_i) w_i + ‖x − (ReLU(π) sg(W_dec)ᵀ + sg(b_dec))‖² (mean over batch)."""
    gate, magnitude = _gated_paths(params, x)
    f = jnp.where(gate > 0, magnitude, 0.0)
    x_hat = decode(params, f)
    recon = _recon(x, x_hat)
    gate_act = jax.nn.relu(gate)
    sparsity = _l1(params, gate_act, hp)
    frozen = jax.lax.stop_gradient(params)
    aux = _recon(x, decode(frozen, gate_act))
    total = recon + _hp(hp, "l1_coefficient", x) * sparsity + aux
    return total, _terms(x, x_hat, f, recon=recon, sparsity=sparsity, aux=aux)


LOSSES = {
    "relu": relu_loss,
    "topk": topk_loss,
    "batchtopk": batchtopk_loss,
    "jumprelu": jumprelu_loss,
    "gated": gated_loss,
}


def loss(
    kind: str, params: SAEParams, x: Float[Array, "batch d_in"], hp: dict[str, Any]
) -> tuple[Scalar, dict[str, Array]]:
    """Training loss of an SAE of kind `kind` and a dict of its terms (`recon`, `l0`, ...,
    plus the latents `f` and per-example squared errors `sq_err` for the training loop)."""
    _check_kind(kind)
    return LOSSES[kind](params, x, hp)


def unit_norm_decoder() -> optax.GradientTransformation:
    """Removes from the W_dec gradient the component parallel to each decoder column,
    g_i ← g_i − (g_i·w_i / ‖w_i‖²) w_i. Chain it before the optimizer; `params` (an `SAEParams`,
    possibly filtered to arrays) must be passed to `update`."""

    def init(params: PyTree) -> optax.EmptyState:
        return optax.EmptyState()

    def update(
        updates: SAEParams, state: optax.EmptyState, params: SAEParams | None = None
    ) -> tuple[SAEParams, optax.EmptyState]:
        if params is None:
            raise ValueError("unit_norm_decoder needs the current params in update()")
        W, g = params.W_dec, updates.W_dec
        coef = jnp.sum(W * g, axis=0) / jnp.sum(jnp.square(W), axis=0)
        return eqx.tree_at(lambda u: u.W_dec, updates, g - coef[None, :] * W), state

    return optax.GradientTransformation(init, update)


def project_decoder(params: SAEParams) -> SAEParams:
    """Renormalises every decoder column to unit norm."""
    W = params.W_dec
    return eqx.tree_at(lambda p: p.W_dec, params, W / jnp.linalg.norm(W, axis=0, keepdims=True))
