"""Toy autoencoders of *Toy Models of Superposition* (Elhage et al., 2022), one instance each.

Tied-weight models share `ToyParams` (W: (d_hidden, n_features), b: (n_features,)) and
differ only by where a ReLU is applied, so their kind is *data*: a traced pair of flags
`(hidden_relu, output_relu)`. A grid over model kinds therefore trains in the same
compiled program as a grid over sparsities.

=============  ==================  =======================
kind           hidden h            output x'
=============  ==================  =======================
linear         W x                 Wᵀ h + b
relu           W x                 ReLU(Wᵀ h + b)
relu-hidden    ReLU(W x)           ReLU(Wᵀ h + b)
=============  ==================  =======================

The absolute-value computation model has untied weights (`AbsParams`):
h = ReLU(W₁ x), y = ReLU(W₂ h + b), trained to output |x| from x ∈ [−1, 1].

Batches are columns: x has shape (n_features, batch). Initialisation is Xavier-normal per
instance (std = sqrt(2 / (n_features + d_hidden))), zero bias — unlike the reference
notebook, whose init scale depends on how many instances it trains at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from superpos_jax.toy.samplers import check_feature_probability, sample_features
from superpos_jax.engine.prng import Generator
from superpos_jax.engine.task import Task

MODEL_KINDS: dict[str, tuple[float, float]] = {
    "linear": (0.0, 0.0),
    "relu": (0.0, 1.0),
    "relu-hidden": (1.0, 1.0),
}


class ToyParams(eqx.Module):
    """Tied-weight toy model parameters. Column i of W is feature i's embedding W_i."""

    W: Float[Array, "hidden feature"]
    b: Float[Array, " feature"]


class AbsParams(eqx.Module):
    """Absolute-value computation model parameters (untied)."""

    W1: Float[Array, "hidden feature"]
    W2: Float[Array, "feature hidden"]
    b: Float[Array, " feature"]


def kind_flags(kind: str) -> Float[np.ndarray, "2"]:
    """The traced encoding `(hidden_relu, output_relu)` of a model kind name."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown toy model kind {kind!r}; choose from {sorted(MODEL_KINDS)}")
    return np.asarray(MODEL_KINDS[kind], np.float32)


def _xavier(key: PRNGKeyArray, shape: tuple[int, int]) -> Array:
    std = np.sqrt(2.0 / (shape[0] + shape[1]))
    return std * jax.random.normal(key, shape, jnp.float32)


def init_toy(n_features: int, d_hidden: int, *, key: PRNGKeyArray) -> ToyParams:
    """Xavier-normal W of shape (d_hidden, n_features), zero b."""
    return ToyParams(W=_xavier(key, (d_hidden, n_features)), b=jnp.zeros(n_features))


def init_abs(n_features: int, d_hidden: int, *, key: PRNGKeyArray) -> AbsParams:
    """Xavier-normal W₁ (d_hidden, n_features) and W₂ (n_features, d_hidden), zero b."""
    k1, k2 = jax.random.split(key)
    return AbsParams(
        W1=_xavier(k1, (d_hidden, n_features)),
        W2=_xavier(k2, (n_features, d_hidden)),
        b=jnp.zeros(n_features),
    )


def _maybe_relu(z: Array, flag: Array) -> Array:
    return jnp.where(flag > 0, jax.nn.relu(z), z)


def toy_hidden(
    params: ToyParams, x: Float[Array, "feature batch"], flags: Float[ArrayLike, "2"]
) -> Float[Array, "hidden batch"]:
    """Hidden activations h = W x (ReLU'd when `flags[0]`)."""
    flags = jnp.asarray(flags)
    return _maybe_relu(params.W @ x, flags[0])


def toy_forward(
    params: ToyParams, x: Float[Array, "feature batch"], flags: Float[ArrayLike, "2"]
) -> Float[Array, "feature batch"]:
    """Reconstruction x' of a tied-weight toy model whose kind is encoded by `flags`."""
    flags = jnp.asarray(flags)
    h = toy_hidden(params, x, flags)
    return _maybe_relu(params.W.T @ h + params.b[:, None], flags[1])


def abs_forward(params: AbsParams, x: Float[Array, "feature batch"]) -> Float[Array, "feature batch"]:
    """y = ReLU(W₂ ReLU(W₁ x) + b), which should approximate |x|."""
    h = jax.nn.relu(params.W1 @ x)
    return jax.nn.relu(params.W2 @ h + params.b[:, None])


def weighted_mse(
    prediction: Float[Array, "feature batch"],
    target: Float[Array, "feature batch"],
    importance: Float[ArrayLike, " feature"],
) -> Scalar:
    """Importance-weighted squared error, Σ_i I_i (x_i − x'_i)², averaged over the batch and
    (as in the reference notebook) over features."""
    importance = jnp.asarray(importance)
    return jnp.mean(importance[:, None] * jnp.square(target - prediction))


def toy_loss(
    params: ToyParams,
    x: Float[Array, "feature batch"],
    importance: Float[ArrayLike, " feature"],
    flags: Float[ArrayLike, "2"],
) -> Scalar:
    """Reconstruction loss of a tied-weight toy model."""
    return weighted_mse(toy_forward(params, x, flags), x, importance)


def abs_loss(
    params: AbsParams, x: Float[Array, "feature batch"], importance: Float[ArrayLike, " feature"]
) -> Scalar:
    """Loss of the absolute-value model against the target |x|."""
    return weighted_mse(abs_forward(params, x), jnp.abs(x), importance)


def toy_hparams(
    feature_probability: npt.ArrayLike | float,
    importance: npt.ArrayLike,
    kinds: Sequence[str] | np.ndarray,
    learning_rate: npt.ArrayLike | float | None = None,
) -> dict[str, np.ndarray]:
    """Per-instance hparams of `toy_task` / `abs_task` for I instances, on the host.

    Args:
        feature_probability: shape (I,) (one value per instance, all features) or
            (I, n_features); values in [0, 1].
        importance: shape (n_features,) shared by all instances, or (I, n_features).
        kinds: I model kind names (see `MODEL_KINDS`).
        learning_rate: a scalar or shape (I,); omitted, the optimizer's default is used.

    Returns:
        dict with `feature_probability` (I, n), `importance` (I, n), `flags` (I, 2) and,
        when given, `learning_rate` (I,), all float32.
    """
    kinds = list(kinds)
    n_instances = len(kinds)
    importance = np.asarray(importance, np.float32)
    n_features = importance.shape[-1]
    p = check_feature_probability(feature_probability)
    if p.ndim == 1:
        p = np.repeat(p[:, None], n_features, axis=1)
    if p.shape != (n_instances, n_features):
        raise ValueError(
            f"feature_probability has shape {p.shape}; expected ({n_instances},) or ({n_instances}, {n_features})"
        )
    hparams = {
        "feature_probability": p,
        "importance": np.broadcast_to(importance, (n_instances, n_features)).copy(),
        "flags": np.stack([kind_flags(k) for k in kinds]),
    }
    if learning_rate is not None:
        hparams["learning_rate"] = np.broadcast_to(np.asarray(learning_rate, np.float32), (n_instances,)).copy()
    return hparams


def toy_task(
    n_features: int, d_hidden: int, batch_size: int, *, generator: Generator = "hash", init_scale: float = 1.0
) -> Task:
    """The `Task` of a tied-weight toy model on sparse uniform features.

    Per-instance hparams (a dict): `feature_probability` (n_features,), `importance`
    (n_features,), `flags` (2,) from `kind_flags`, optionally `learning_rate` ().
    `init_scale` multiplies the Xavier-normal initial W (small inits learn in stages).
    """

    def init(hparams, *, key):
        params = init_toy(n_features, d_hidden, key=key)
        return params if init_scale == 1.0 else ToyParams(W=params.W * init_scale, b=params.b)

    def sample(hparams, *, key):
        return sample_features(key, hparams["feature_probability"], n_features, batch_size, generator=generator)

    def loss(params, x, hparams):
        return toy_loss(params, x, hparams["importance"], hparams["flags"])

    return Task(init=init, sample=sample, loss=loss)


def abs_task(n_features: int, d_hidden: int, batch_size: int, *, generator: Generator = "hash") -> Task:
    """The `Task` of the absolute-value computation model (inputs U[−1, 1] when present).

    Per-instance hparams: `feature_probability`, `importance`, optionally `learning_rate`.
    """

    def init(hparams, *, key):
        return init_abs(n_features, d_hidden, key=key)

    def sample(hparams, *, key):
        return sample_features(
            key, hparams["feature_probability"], n_features, batch_size, signed=True, generator=generator
        )

    def loss(params, x, hparams):
        return abs_loss(params, x, hparams["importance"])

    return Task(init=init, sample=sample, loss=loss)
