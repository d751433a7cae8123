"""The ReLU-output toy model trained on a finite data set (*Superposition, Memorization, and
Double Descent*, Henighan et al., 2023), and the data-point dimensionality.

Model: x' = ReLU(Wᵀ W x + b) with W (d_hidden, n_features), trained on the first T rows of a
fixed pool (`superpos_jax.toy.datasets`). Small T: the model memorises data points, whose
hidden vectors h_t = W x_t form clean geometry while the feature directions W_i are messy;
large T: the features form the geometry. The measure of the second is the data-point
dimensionality, the feature dimensionality of `superpos_jax.toy.metrics` applied to the
training hidden vectors:

    D_t = ‖h_t‖⁴ / Σ_s (h_t · h_s)²        (s over the training points, t included)

Per-instance T and m are *data*: T (`n_train`) selects the pool's prefix, m (`d_hidden`)
masks the hidden units ≥ m of a model built at the sweep's largest width. Masked rows of W
start at zero and the forward pass multiplies W by the mask, so their gradient (and hence
their AdamW update) is exactly zero and they stay zero: a padded instance computes what a
model of width m computes. Each row of W is drawn from its own key (`fold_in(key, row)`),
Xavier-normal at the instance's true width (std = sqrt(2 / (n_features + m))), so the first
m rows do not depend on the padded width either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Scalar

from superpos_jax.engine.task import Task
from superpos_jax.toy.datasets import batch_indices, gather_batch, train_mask
from superpos_jax.toy.models import ToyParams

__all__ = [
    "datapoint_dimensionality", "hidden_mask", "init_masked", "masked_forward", "memorization_hparams",
    "memorization_task", "pool_loss",
]

_TINY = 1e-12


def datapoint_dimensionality(
    H: Float[ArrayLike, "hidden point"], mask: Float[ArrayLike, " point"] | None = None
) -> Float[Array, " point"]:
    """D_t = ‖h_t‖⁴ / Σ_s m_s (h_t · h_s)² for every column h_t of H.

    Args:
        H: hidden vectors as columns, shape (d_hidden, n_points).
        mask: optional 0/1 weights of the points that belong to the set (the training set of
            a padded pool); points outside it are excluded from every sum and get D_t = 0.

    Returns:
        D_t per point; 0 where h_t = 0. Orthogonal vectors give 1, antipodal pairs 1/2,
        k-gons in a plane 2/k (k ≥ 3).
    """
    H = jnp.asarray(H)
    m = jnp.ones(H.shape[1], H.dtype) if mask is None else jnp.asarray(mask, H.dtype)
    gram = H.T @ H
    norms_sq = jnp.diagonal(gram)
    denom = jnp.sum(jnp.square(gram) * m[None, :], axis=1)
    value = jnp.where(denom > _TINY, jnp.square(norms_sq) / jnp.maximum(denom, _TINY), 0.0)
    return value * m


def hidden_mask(d_hidden: Int[ArrayLike, ""], max_hidden: int) -> Float[Array, " hidden"]:
    """1.0 for the first `d_hidden` of `max_hidden` hidden units, 0.0 for the padding."""
    return (jnp.arange(max_hidden) < jnp.asarray(d_hidden)).astype(jnp.float32)


def init_masked(n_features: int, max_hidden: int, d_hidden: Int[ArrayLike, ""], *, key: PRNGKeyArray) -> ToyParams:
    """Xavier-normal W at width `d_hidden` (rows ≥ d_hidden zero), zero b; row r from `fold_in(key, r)`."""
    std = jnp.sqrt(2.0 / (n_features + jnp.asarray(d_hidden, jnp.float32)))
    rows = jax.vmap(lambda r: jax.random.normal(jax.random.fold_in(key, r), (n_features,), jnp.float32))(
        jnp.arange(max_hidden, dtype=jnp.uint32))
    W = rows * (std * hidden_mask(d_hidden, max_hidden))[:, None]
    return ToyParams(W=W, b=jnp.zeros(n_features, jnp.float32))


def masked_forward(
    params: ToyParams, x: Float[ArrayLike, "feature batch"], mask: Float[ArrayLike, " hidden"]
) -> tuple[Float[Array, "hidden batch"], Float[Array, "feature batch"]]:
    """(h, x') = (W̃ x, ReLU(W̃ᵀ h + b)) with W̃ = W masked to the live hidden units."""
    W = params.W * jnp.asarray(mask)[:, None]
    h = W @ jnp.asarray(x)
    return h, jax.nn.relu(W.T @ h + params.b[:, None])


def _weighted_loss(params: ToyParams, x: Array, weights: Array, importance: Array, mask: Array) -> Scalar:
    _, out = masked_forward(params, x, mask)
    per_point = jnp.mean(importance[:, None] * jnp.square(x - out), axis=0)
    return jnp.sum(weights * per_point)


def pool_loss(
    params: ToyParams,
    pool: Float[ArrayLike, "point feature"],
    importance: Float[ArrayLike, " feature"],
    d_hidden: Int[ArrayLike, ""],
    n_points: Int[ArrayLike, ""] | None = None,
) -> Scalar:
    """The model's loss (importance-weighted squared error, averaged over features and
    points, as `toy.models.weighted_mse`) on the first `n_points` rows of `pool` (all rows
    when None): the training loss on a training set, the test loss on a fresh sample."""
    pool = jnp.asarray(pool)
    n = pool.shape[0] if n_points is None else n_points
    weights = train_mask(n, pool.shape[0]) / jnp.asarray(n, jnp.float32)
    mask = hidden_mask(d_hidden, params.W.shape[0])
    return _weighted_loss(params, pool.T, weights, jnp.asarray(importance), mask)


def memorization_hparams(
    n_train: npt.ArrayLike,
    d_hidden: npt.ArrayLike,
    dataset: npt.ArrayLike,
    importance: npt.ArrayLike,
    learning_rate: npt.ArrayLike | float | None = None,
    *,
    pool_shape: tuple[int, int] | None = None,
    max_hidden: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-instance hparams of `memorization_task` for I instances, on the host.

    Args:
        n_train: training-set sizes T, shape (I,), integers ≥ 1.
        d_hidden: hidden widths m, shape (I,), integers ≥ 1.
        dataset: which pool each instance trains on (index into the task's pools), shape (I,).
        importance: (n_features,) shared or (I, n_features).
        learning_rate: optional scalar or (I,).
        pool_shape: (n_pools, n_points) of the task's pools, to check `dataset` and `n_train`.
        max_hidden: the task's padded width, to check `d_hidden`.

    Raises:
        ValueError: on a size or index outside its range.
    """
    T = np.asarray(n_train)
    m = np.asarray(d_hidden)
    d = np.asarray(dataset)
    n_instances = T.shape[0] if T.ndim == 1 else -1
    for name, value in (("n_train", T), ("d_hidden", m), ("dataset", d)):
        if value.ndim != 1 or value.shape[0] != n_instances or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"{name} must be a 1-D integer array of length {n_instances}, got {value!r}")
    if np.any(T < 1) or np.any(m < 1) or np.any(d < 0):
        raise ValueError(f"n_train and d_hidden must be >= 1 and dataset >= 0; got {T.tolist()}, {m.tolist()}, {d.tolist()}")
    if pool_shape is not None and (np.any(d >= pool_shape[0]) or np.any(T > pool_shape[1])):
        raise ValueError(f"dataset must be < {pool_shape[0]} and n_train <= {pool_shape[1]} (the pools' shape); "
                         f"got dataset {d.tolist()}, n_train {T.tolist()}")
    if max_hidden is not None and np.any(m > max_hidden):
        raise ValueError(f"d_hidden must be <= max_hidden={max_hidden}, got {m.tolist()}")
    importance = np.asarray(importance, np.float32)
    hparams = {
        "n_train": T.astype(np.int32), "d_hidden": m.astype(np.int32), "dataset": d.astype(np.int32),
        "importance": np.broadcast_to(importance, (n_instances, importance.shape[-1])).copy(),
    }
    if learning_rate is not None:
        hparams["learning_rate"] = np.broadcast_to(np.asarray(learning_rate, np.float32), (n_instances,)).copy()
    return hparams


def memorization_task(pools: Float[ArrayLike, "pool point feature"], max_hidden: int, batch_size: int) -> Task:
    """The `Task` of the ReLU-output toy model on a finite training set.

    Args:
        pools: the fixed examples, shape (n_pools, n_points, n_features) (see
            `datasets.sample_pool`); the task's `shared` arrays, read by every instance.
        max_hidden: the padded hidden width (the sweep's largest m).
        batch_size: rows per step (full batch when T ≤ batch_size, see `datasets.batch_indices`).

    Per-instance hparams (`memorization_hparams`): `n_train` () int32, `d_hidden` () int32,
    `dataset` () int32, `importance` (n_features,), optionally `learning_rate` ().
    A batch is `(x (feature, batch), weights (batch,))`.
    """
    pools = jnp.asarray(pools, jnp.float32)
    n_features = pools.shape[2]

    def init(hparams, *, key, shared):
        return init_masked(n_features, max_hidden, hparams["d_hidden"], key=key)

    def sample(hparams, *, key, shared):
        indices, weights = batch_indices(key, hparams["n_train"], batch_size)
        return gather_batch(shared["pools"][hparams["dataset"]], indices), weights

    def loss(params, batch, hparams, *, shared):
        x, weights = batch
        mask = hidden_mask(hparams["d_hidden"], max_hidden)
        return _weighted_loss(params, x, weights, hparams["importance"], mask)

    return Task(init=init, sample=sample, loss=loss, shared={"pools": pools})
