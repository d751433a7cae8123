"""Activation sources for sparse-autoencoder training; every batch has shape (batch, d_in).

Unlike the toy-model samplers in `superpos_jax.toy.samplers` (examples are columns), SAE batches put
examples on rows, as activations are stored: x of shape (batch, d_in).

Two sources:

* **Synthetic ground truth** (Sharkey et al., 2022): n_gt unit-norm random directions in d
  dimensions; each feature fires with its own probability (`firing_probability`, the same
  1 − S convention as `superpos_jax.toy.samplers`) and, when it fires, has magnitude U[0, 1]; an
  example is the sum of its active features' directions scaled by their magnitudes.
  `sample_ground_truth` is a pure function of `(key, dictionary, firing_probability)`, so it
  jits and vmaps over instances with traced probabilities and correlation.
* **User arrays**: `ArraySource` streams shuffled batches from an in-memory array or a
  memory-mapped `.npy` file on the host (NumPy), epoch by epoch.

Inside the compiled training loop an SAE reads an *activation source*: a small equinox
module whose arrays are passed to the compiled call (never baked in) and whose
`sample(key, batch_size)` draws one (batch, d_in) batch. `GroundTruthSource` (the synthetic
data above), `ToyHiddenSource` (the hidden layer h = W x of a trained toy model on its own
sparse features) and `ArrayRows` (rows of a device-resident array of stored activations,
i.i.d. uniform; load a memory-mapped `.npy` with `ArrayRows.load`).

*Fed sources* (`FedSource`) give data computed once per step for every instance of a sweep:
activations streamed from disk (a host `engine.stream.Stream` read per compiled call) or a
frozen language model run on corpus windows inside the scan. `sae_task` wires them into the
engine's `Task.feed` / `Task.stream`.

Correlation model (`correlation` = ρ ∈ [0, 1]): per example one shared latent uniform v.
Each feature i independently "follows the latent" with probability ρ, in which case its
firing uniform is v, and otherwise draws its own uniform; it fires iff that uniform is
< p_i. Every uniform is U[0, 1), so the marginal firing rate is exactly p_i for any ρ, while
features that follow the latent fire together (comonotone). For i ≠ j,
P(i and j fire) = ρ² · min(p_i, p_j) + (1 − ρ²) · p_i p_j. Magnitudes stay independent U[0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from superpos_jax.toy.samplers import sample_features
from superpos_jax.engine.prng import Generator, uniform


def ground_truth_dictionary(n_gt: int, d: int, *, key: PRNGKeyArray) -> Float[Array, "n_gt d"]:
    """n_gt random unit-norm directions in R^d (isotropic: normalised Gaussian rows).

    Args:
        n_gt: number of ground-truth features.
        d: ambient dimension d_in.
        key: PRNG key.

    Returns:
        float32 array of shape (n_gt, d); row i is feature i's direction, ‖row‖ = 1.
    """
    _check_positive_int("n_gt", n_gt)
    _check_positive_int("d", d)
    g = jax.random.normal(key, (n_gt, d), jnp.float32)
    return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def decaying_probabilities(
    n_gt: int, base: float | int = 0.99, mean_active: float | int = 5.0
) -> Float[np.ndarray, " n_gt"]:
    """Firing probabilities p_i ∝ base**i, scaled so that Σ_i p_i = mean_active.

    Σ_i p_i is the expected number of active features per example. Raises if the scaling
    would push the most frequent feature above probability 1.

    Returns:
        float32 array of shape (n_gt,).
    """
    _check_positive_int("n_gt", n_gt)
    if not 0 < base <= 1:
        raise ValueError(f"base must lie in (0, 1], got {base}")
    if not mean_active > 0:
        raise ValueError(f"mean_active must be > 0, got {mean_active}")
    raw = np.power(float(base), np.arange(n_gt, dtype=np.float64))
    p = raw * (float(mean_active) / raw.sum())
    if p[0] > 1:
        raise ValueError(
            f"mean_active={mean_active} with base={base} and n_gt={n_gt} needs p_0 = {p[0]:.3g} > 1; "
            "lower mean_active or raise base"
        )
    return p.astype(np.float32)


def sample_ground_truth(
    key: PRNGKeyArray,
    dictionary: Float[ArrayLike, "n_gt d"],
    firing_probability: Float[ArrayLike, " n_gt"],
    batch_size: int,
    *,
    correlation: Float[ArrayLike, ""] | float | int = 0.0,
    generator: Generator = "threefry",
) -> tuple[Float[Array, "batch d"], Float[Array, "batch n_gt"]]:
    """Draw a batch of synthetic activations and their ground-truth codes (one instance).

    Args:
        key: PRNG key for this instance and step.
        dictionary: (n_gt, d) ground-truth directions (rows), e.g. `ground_truth_dictionary`.
        firing_probability: (n_gt,) probability that each feature is active in an example.
        batch_size: number of examples.
        correlation: ρ ∈ [0, 1] of the shared-latent model in the module docstring
            (0 = independent features); may be traced.
        generator: "threefry" (`jax.random`) or "hash" (`superpos_jax.engine.prng`, several times
            faster on CPU).

    Returns:
        (activations, codes): activations (batch, d) = codes @ dictionary; codes (batch, n_gt)
        hold each feature's magnitude, U[0, 1] when active and 0 otherwise.
    """
    _check_positive_int("batch_size", batch_size)
    dictionary = jnp.asarray(dictionary, jnp.float32)
    n_gt = dictionary.shape[0]
    p = jnp.asarray(firing_probability, jnp.float32)
    rho = jnp.asarray(correlation, jnp.float32)
    k_own, k_latent, k_follow, k_mag = jax.random.split(key, 4)
    own = uniform(k_own, (batch_size, n_gt), generator)
    latent = uniform(k_latent, (batch_size, 1), generator)
    follow = uniform(k_follow, (batch_size, n_gt), generator) < rho
    u = jnp.where(follow, jnp.broadcast_to(latent, (batch_size, n_gt)), own)
    magnitude = uniform(k_mag, (batch_size, n_gt), generator)
    codes = jnp.where(u < p[None, :], magnitude, 0.0)
    return codes @ dictionary, codes


def _as_f32(a: npt.ArrayLike) -> Array:
    return jnp.asarray(a, jnp.float32)


class GroundTruthSource(eqx.Module):
    """Synthetic ground-truth activations (`sample_ground_truth`) as an in-loop source.

    Attributes: dictionary (n_gt, d_in) rows of unit norm; firing_probability (n_gt,);
    correlation () ρ of the shared-latent model; generator of the uniforms ("hash" default).
    """

    dictionary: Float[Array, "n_gt d_in"]
    firing_probability: Float[Array, " n_gt"]
    correlation: Float[Array, ""]
    generator: Generator = eqx.field(static=True)

    def __init__(
        self,
        dictionary: npt.ArrayLike,
        firing_probability: npt.ArrayLike,
        correlation: npt.ArrayLike | float = 0.0,
        generator: Generator = "hash",
    ):
        self.generator = generator
        self.dictionary = jnp.asarray(dictionary, jnp.float32)
        self.firing_probability = jnp.asarray(firing_probability, jnp.float32)
        self.correlation = jnp.asarray(correlation, jnp.float32)
        if self.dictionary.ndim != 2 or self.firing_probability.shape != self.dictionary.shape[:1]:
            raise ValueError(
                f"dictionary must be (n_gt, d_in) and firing_probability (n_gt,); got "
                f"{self.dictionary.shape} and {self.firing_probability.shape}"
            )

    @property
    def d_in(self) -> int:
        return int(self.dictionary.shape[1])

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, "batch d_in"]:
        """A (batch, d_in) batch of activations."""
        x, _ = sample_ground_truth(
            key, self.dictionary, self.firing_probability, batch_size, correlation=self.correlation,
            generator=self.generator,
        )
        return x


class ToyHiddenSource(eqx.Module):
    """The hidden layer h = W x of a trained toy model, x its sparse features (data.py's
    sampler, magnitudes U[0, 1]). The model's feature directions are W's columns.

    Attributes: W (d_hidden, n_features); feature_probability (n_features,); generator.
    """

    W: Float[Array, "d_hidden feature"] = eqx.field(converter=_as_f32)
    feature_probability: Float[Array, " feature"] = eqx.field(converter=_as_f32)
    generator: Generator = eqx.field(static=True, default="hash")

    def __post_init__(self) -> None:
        if self.W.ndim != 2 or self.feature_probability.shape != self.W.shape[1:]:
            raise ValueError(
                f"W must be (d_hidden, n_features) and feature_probability (n_features,); got "
                f"{self.W.shape} and {self.feature_probability.shape}"
            )

    @property
    def d_in(self) -> int:
        return int(self.W.shape[0])

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, "batch d_in"]:
        """A (batch, d_hidden) batch of hidden activations."""
        x = sample_features(key, self.feature_probability, self.W.shape[1], batch_size, generator=self.generator)
        return (self.W @ x).T


class ArrayRows(eqx.Module):
    """Rows of a device-resident array of activations, drawn i.i.d. uniformly per batch.

    Attributes: x (n_rows, d_in) float32.
    """

    x: Float[Array, "rows d_in"] = eqx.field(converter=_as_f32)

    @classmethod
    def load(
        cls, array_or_path: npt.ArrayLike | str | os.PathLike, *, max_rows: int | None = None, seed: int = 0
    ) -> ArrayRows:
        """From an array or a (memory-mapped) `.npy` file; with `max_rows`, a uniformly chosen
        subset of that many rows (read in sorted order from the map)."""
        data = ArraySource(array_or_path, 1, seed=seed).data
        if max_rows is not None and data.shape[0] > max_rows:
            _check_positive_int("max_rows", max_rows)
            rows = np.sort(np.random.default_rng(seed).choice(data.shape[0], max_rows, replace=False))
            data = data[rows]
        return cls(np.asarray(data, np.float32))

    @property
    def d_in(self) -> int:
        return int(self.x.shape[1])

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, "batch d_in"]:
        """A (batch, d_in) batch of rows drawn uniformly with replacement."""
        return self.x[jax.random.randint(key, (batch_size,), 0, self.x.shape[0])]


class FedSource:
    """Base of activation sources whose data arrive once per step for all instances.

    A subclass sets `d_in`, `shared` (a pytree of arrays every compiled call receives as an
    argument) and `stream` (a host `engine.stream.Stream`, or None), and overrides the pure
    functions below where the defaults do not fit. They read arrays only through their `shared`
    argument (never through `self`), or the arrays become constants of the program.

    * `feed(step, streamed, shared) -> data`: once per step, outside the instance vmap
      (default: the step's streamed rows).
    * `take(data, key, batch_size, hparams, shared) -> (batch, d_in)`: one instance's batch from
      the step's data (default: `data` itself, every instance the same rows).
    * `stats(key, n, hparams, shared) -> (n, d_in)`: rows for data statistics at init (input
      scale, geometric median); the same for every instance that shares the hparams.

    `feed_every` R > 1: `feed` is called once per R steps (at multiples of R) and returns the
    data of R steps, each leaf with a leading axis R; `take` gets one step's row
    (`engine.task.Task.feed_every`).
    """

    d_in: int
    shared: Any = None
    stream: Any = None
    feed_every: int = 1

    def feed(self, step: Array, streamed: Any, shared: Any) -> Any:
        return streamed

    def take(self, data: Any, key: PRNGKeyArray, batch_size: int, hparams: Any, shared: Any) -> Float[Array, "batch d_in"]:
        if data.shape[0] != batch_size:
            raise ValueError(f"the source gives batches of {data.shape[0]} rows, the SAE trains on {batch_size}")
        return data

    def stats(self, key: PRNGKeyArray, n: int, hparams: Any, shared: Any) -> Float[Array, "n d_in"]:
        raise NotImplementedError


class ArraySource:
    """Shuffled (batch, d_in) batches from a 2-D array of stored activations (host, NumPy).

    Rows are visited epoch by epoch; epoch e uses the permutation drawn by
    `np.random.default_rng([seed, e])`, so the order differs between epochs, is the same
    for the same seed, and `batch(step)` depends only on (seed, step) — a resumed run asks
    for the same steps and gets the same batches. Each epoch has `n_rows // batch_size`
    steps; when `batch_size` does not divide `n_rows`, the last `n_rows % batch_size` rows
    of each epoch's permutation are skipped (different rows each epoch), so every row is
    seen at most once per epoch, and exactly once when the batch size divides the rows.

    Args:
        array_or_path: a 2-D floating array (rows = examples), or the path of a `.npy` file,
            which is memory-mapped (`np.load(mmap_mode="r")`) and read batch by batch.
        batch_size: rows per batch.
        seed: integer seed of the shuffle.

    Attributes:
        n_rows, d_in: the array's shape. steps_per_epoch: batches per epoch.
    """

    def __init__(self, array_or_path: npt.ArrayLike | str | os.PathLike, batch_size: int, *, seed: int):
        if isinstance(array_or_path, (str, os.PathLike)):
            path = os.fspath(array_or_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"activation file not found: {path!r}")
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            data = np.asarray(array_or_path)
        if data.ndim != 2:
            raise ValueError(f"activations must be 2-D (rows, d_in), got shape {data.shape}")
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"activations must have a floating dtype, got {data.dtype}")
        _check_positive_int("batch_size", batch_size)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if data.shape[0] < batch_size:
            raise ValueError(
                f"need at least one batch: {data.shape[0]} rows < batch_size {batch_size}"
            )
        self.data = data
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.n_rows, self.d_in = int(data.shape[0]), int(data.shape[1])
        self.steps_per_epoch = self.n_rows // self.batch_size
        self._cached_epoch = -1
        self._cached_perm = np.empty(0, np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of `epoch`: a permutation of range(n_rows), int64."""
        if not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if epoch != self._cached_epoch:
            self._cached_perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.n_rows)
            self._cached_epoch = int(epoch)
        return self._cached_perm

    def indices(self, step: int) -> np.ndarray:
        """Row indices of the batch at global `step` (shape (batch_size,))."""
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def batch(self, step: int) -> Float[np.ndarray, "batch d_in"]:
        """The batch at global `step`, shape (batch_size, d_in), float32."""
        idx = self.indices(step)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((self.batch_size, self.d_in), np.float32)
        rows[order] = self.data[idx[order]]  # sorted reads are sequential on a memory map
        return rows

    def epoch(self, epoch: int) -> Iterator[np.ndarray]:
        """Iterate over the batches of one epoch, in order."""
        first = int(epoch) * self.steps_per_epoch
        for step in range(first, first + self.steps_per_epoch):
            yield self.batch(step)


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class LinearViews(eqx.Module):
    """Several linear views of one latent source, concatenated on each row: rows
    [u R_1ᵀ | u R_2ᵀ | ... ] for u a (batch, n) draw of `source`. The training rows of a
    transcoder ([x | y] with x = B s, y = A s for sparse s: `LinearViews(s_source, (B, A))`) and
    of a crosscoder ([h¹ | h²], two layers or models reading the same features).

    Attributes: source (any activation source, rows of width n); maps, a tuple of (d_v, n)
    float32 matrices (each view's width d_v; d_in = Σ_v d_v).
    """

    source: Any
    maps: tuple[Float[Array, "d_view n"], ...]

    def __init__(self, source: Any, maps: Any):
        self.source = source
        self.maps = tuple(jnp.asarray(m, jnp.float32) for m in maps)
        n = int(source.d_in)
        if not self.maps or any(m.ndim != 2 or m.shape[1] != n for m in self.maps):
            raise ValueError(f"maps must be a non-empty sequence of (d_view, {n}) matrices (the source's rows have "
                             f"width {n}); got shapes {[tuple(m.shape) for m in self.maps]}")

    @property
    def d_in(self) -> int:
        return sum(int(m.shape[0]) for m in self.maps)

    @property
    def widths(self) -> tuple[int, ...]:
        """Each view's width d_v."""
        return tuple(int(m.shape[0]) for m in self.maps)

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, "batch d_in"]:
        """A (batch, Σ_v d_v) batch: one draw of the source seen through every map."""
        u = self.source.sample(key, batch_size)
        return jnp.concatenate([u @ m.T for m in self.maps], axis=-1)
