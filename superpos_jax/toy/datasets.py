"""Finite training sets of sparse features: a fixed pool of examples and its minibatches.

A *pool* is a fixed set of examples drawn once from the sparse-feature distribution of
`superpos_jax.toy.samplers.sample_features` (feature probability p = 1 − S, magnitudes
U[0, 1]). A training set of T points is the pool's first T rows, so training sets of
different sizes drawn from one pool are nested (common random numbers along T), and T can
be a traced per-instance scalar: one padded pool serves every T of a sweep.

Pools are stored with points on the leading axis, shape (point, feature), so that a
minibatch is a gather of contiguous rows; `gather_batch` returns the batch as columns,
(feature, batch), the layout every toy model takes.

Minibatches (`batch_indices`): when T ≤ batch_size the batch is the whole training set
(full-batch gradient descent, rows ≥ T weighted 0); otherwise batch_size indices are drawn
uniformly with replacement from [0, T). Either way the weights sum to 1, so the weighted
loss is an unbiased estimate (exact, full-batch) of the training-set loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from superpos_jax.engine.prng import Generator
from superpos_jax.toy.samplers import sample_features

__all__ = ["batch_indices", "gather_batch", "sample_pool", "train_mask"]


def sample_pool(
    key: PRNGKeyArray,
    feature_probability: Float[ArrayLike, "*feature"],
    n_features: int,
    n_points: int,
    *,
    generator: Generator = "hash",
) -> Float[Array, "point feature"]:
    """A fixed pool of `n_points` sparse examples, one per row.

    Args:
        key: PRNG key of the pool.
        feature_probability: 1 − S, a scalar or one value per feature.
        n_features: number of features n.
        n_points: number of examples (the largest training set it serves).
        generator: "hash" (default) or "threefry", as in `sample_features`.

    Returns:
        x of shape (n_points, n_features); row t is example t.
    """
    return sample_features(key, feature_probability, n_features, n_points, generator=generator).T


def batch_indices(
    key: PRNGKeyArray, n_train: Int[ArrayLike, ""], batch_size: int
) -> tuple[Int[Array, " batch"], Float[Array, " batch"]]:
    """Row indices and weights of one minibatch of a training set of `n_train` points.

    `n_train` may be traced (it differs per instance of a sweep). With n_train ≤ batch_size
    the batch is the full training set: rows 0 … n_train − 1 with weight 1 / n_train and
    the remaining slots pointing at row n_train − 1 with weight 0. Otherwise batch_size
    rows are drawn uniformly with replacement from [0, n_train), each of weight 1 / batch_size.
    No index is ever ≥ n_train, so a pool padded beyond n_train is never read there.

    Returns:
        (indices int32 (batch,), weights float32 (batch,)); the weights sum to 1.
    """
    n_train = jnp.asarray(n_train, jnp.int32)
    slots = jnp.arange(batch_size, dtype=jnp.int32)
    full = n_train <= batch_size
    drawn = jax.random.randint(key, (batch_size,), 0, jnp.maximum(n_train, 1), dtype=jnp.int32)
    indices = jnp.where(full, jnp.minimum(slots, n_train - 1), drawn)
    in_set = (slots < n_train).astype(jnp.float32)
    weights = jnp.where(full, in_set / n_train.astype(jnp.float32), jnp.float32(1.0 / batch_size))
    return indices, weights


def gather_batch(pool: Float[ArrayLike, "point feature"], indices: Int[ArrayLike, " batch"]) -> Float[Array, "feature batch"]:
    """The pool's rows `indices`, as columns (feature, batch)."""
    return jnp.take(jnp.asarray(pool), jnp.asarray(indices), axis=0).T


def train_mask(n_train: Int[ArrayLike, ""], n_points: int) -> Float[Array, " point"]:
    """1.0 for the first `n_train` of `n_points` pool rows (the training set), 0.0 after."""
    return (jnp.arange(n_points) < jnp.asarray(n_train)).astype(jnp.float32)
