"""Magnitude pruning of toy models: masks as traced 0/1 arrays, masked updates, a masked task.

Lottery-ticket experiments (Frankle & Carbin, 2019; rewinding: Frankle et al., 2020) train a
network, remove its smallest-magnitude weights and train the survivors again from an early
iterate θ_k. Here a mask is *data*: a float32 0/1 array of W's shape that every instance of a
sweep carries in its hparams, so all prune fractions, sparsities and seeds (and the rewound
ticket beside its randomly re-initialised control) train as one compiled program.

* `keep_count(n_weights, rate, rounds)`: how many weights survive `rounds` rounds of pruning
  `rate` of the surviving ones (at least one).
* `magnitude_mask(W, n_keep, mask)`: the `n_keep` largest |W| among the unmasked entries
  (global over the whole matrix of one instance; ties go to the lower flat index).
* `masked_updates(masks)`: an optax transformation zeroing the updates of pruned entries.
* `masked_toy_task(...)`: the tied-weight toy model (`toy.models.toy_task`) with W replaced by
  W ⊙ mask in the loss, masked gradients, W ⊙ mask re-imposed after every update (so pruned
  weights stay exactly 0 through AdamW's decoupled weight decay as well), training from a given
  initial (W, b) in its hparams and recording the rewind point θ_k in `TrainState.extra`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from superpos_jax.engine.prng import Generator
from superpos_jax.engine.task import Task
from superpos_jax.toy.models import ToyParams, toy_loss
from superpos_jax.toy.samplers import sample_features

__all__ = ["keep_count", "magnitude_mask", "masked_toy_task", "masked_updates"]


def keep_count(n_weights: int, rate: float | npt.ArrayLike, rounds: int | npt.ArrayLike) -> np.ndarray:
    """Weights left after `rounds` rounds that each prune `rate` of the surviving weights:
    round(n_weights · (1 − rate)^rounds), at least 1 (host integers, broadcast shape).

    Raises:
        ValueError: `rate` outside [0, 1) or negative `rounds`.
    """
    rate = np.asarray(rate, np.float64)
    rounds = np.asarray(rounds)
    if np.any((rate < 0) | (rate >= 1)):
        raise ValueError(f"prune rate must be in [0, 1), got {rate}")
    if np.any(rounds < 0):
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    return np.asarray(np.maximum(1, np.rint(n_weights * (1.0 - rate) ** rounds)), np.int64)


def magnitude_mask(
    W: Float[ArrayLike, "hidden feature"], n_keep: Int[ArrayLike, ""], mask: Float[ArrayLike, "hidden feature"] | None = None
) -> Float[Array, "hidden feature"]:
    """The 0/1 mask (float32, W's shape) of the `n_keep` largest |W| among entries where
    `mask` is 1 (all entries without `mask`). Pruned entries never come back: `n_keep` is
    clipped to the number that survive. Ties go to the lower flat index. `n_keep` may be
    traced (one value per instance under vmap)."""
    W = jnp.asarray(W)
    alive = jnp.ones(W.shape, bool) if mask is None else jnp.asarray(mask) > 0
    score = jnp.where(alive, jnp.abs(W), -1.0).reshape(-1)
    order = jnp.argsort(-score, stable=True)
    rank = jnp.zeros(score.shape, jnp.int32).at[order].set(jnp.arange(score.size, dtype=jnp.int32))
    n_keep = jnp.minimum(jnp.asarray(n_keep, jnp.int32), jnp.sum(alive, dtype=jnp.int32))
    return (rank < n_keep).reshape(W.shape).astype(jnp.float32)


def masked_updates(masks: PyTree) -> optax.GradientTransformation:
    """An optax transformation multiplying every update leaf by its mask (a pytree of the
    updates' structure, 0/1 arrays). Chained before an optimizer it zeroes the gradients of
    pruned entries; stateless."""

    def init(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: PyTree, state: optax.EmptyState, params: PyTree = None) -> tuple[PyTree, optax.EmptyState]:
        del params
        return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, masks), state

    return optax.GradientTransformation(init, update)


def _masked(params: ToyParams, mask: Array) -> ToyParams:
    return ToyParams(W=params.W * mask, b=params.b)


def masked_toy_task(n_features: int, d_hidden: int, batch_size: int, *, generator: Generator = "hash") -> Task:
    """The tied-weight toy model's `Task` with a per-instance weight mask and initial weights.

    Per-instance hparams (a dict): those of `toy.models.toy_task` (`feature_probability`
    (n_features,), `importance` (n_features,), `flags` (2,), optionally `learning_rate` ())
    plus `mask` (d_hidden, n_features) 0/1 float32, `init_W` (d_hidden, n_features) and
    `init_b` (n_features,) — the instance starts from (init_W ⊙ mask, init_b), the key of
    `init` is unused — and `rewind_step` () int32: `TrainState.extra` ends as the params after
    that many updates (θ_k; the initial params for 0).

    The mask enters three times, each for its own reason: the loss sees W ⊙ mask (pruned
    weights have no effect), the gradients are masked (`masked_updates`, so Adam's moments of
    pruned entries stay 0), and W ← W ⊙ mask after each update (weight decay cannot move them).
    """

    def init(hparams, *, key):
        del key
        return ToyParams(W=hparams["init_W"] * hparams["mask"], b=hparams["init_b"])

    def sample(hparams, *, key):
        return sample_features(key, hparams["feature_probability"], n_features, batch_size, generator=generator)

    def loss(params, x, hparams):
        return toy_loss(_masked(params, hparams["mask"]), x, hparams["importance"], hparams["flags"])

    def transform(hparams):
        return masked_updates(ToyParams(W=hparams["mask"], b=jnp.ones(n_features, jnp.float32)))

    def init_extra(params, hparams):
        del hparams
        return params

    def after_update(state, batch, aux, hparams):
        del batch, aux
        params = _masked(state.params, hparams["mask"])
        at_rewind = state.step == hparams["rewind_step"]
        extra = jax.tree.map(lambda new, old: jnp.where(at_rewind, new, old), params, state.extra)
        return type(state)(params, state.opt_state, state.step, state.key, extra)

    return Task(init=init, sample=sample, loss=loss, transform=transform, init_extra=init_extra,
                after_update=after_update)
