"""Structured synthetic ground truth for SAE benchmarks: Zipfian firing, a feature hierarchy,
correlated groups and per-feature magnitude distributions (after SAELens's SynthSAEBench and
the hierarchical toy data of Chanin et al., 2024, "A is for Absorption").

An example is x = Σ_i s_i d_i: the true feature activations s (n_features,) — zero for inactive
features, a positive magnitude for active ones — times unit directions d_i ∈ R^d_in (rows of
`directions`). Examples are rows: x (batch, d_in), s (batch, n_features).

**Layout of the features** (`SyntheticConfig` builds it). Indices start with the hierarchy, level
by level: the `n_parents` top-level parents [0, P), then their children (child k of parent j at
P + j·b₁ + k), then the grandchildren, and so on for `branching = (b₁, b₂, ...)`; after the
hierarchy come the free features. *Roots* are the top-level parents and the free features.

**Firing.** Root r (the r-th root in index order, counting from 0) fires with marginal
probability p_r = min(λ·(r + 1)^(−α), max_probability), α = `zipf_exponent`, with λ set so that
the expected number of active features per example — children included — is `mean_active`.
A child fires only when its parent fires, with conditional probability q = `child_probability`:

* independent children: P(child | parent) = q, independently for each sibling;
* `mutually_exclusive`: given the parent fires, at most one of its b children fires, child k with
  probability q (one shared uniform u per parent, child k fires iff u ∈ [kq, (k+1)q)), and none
  with probability 1 − b·q (so b·q ≤ 1).

Either way a node at depth ℓ under root r has marginal p_r·q^ℓ and P(parent | child) = 1.

**Correlated groups** (`n_groups` groups of `group_size` consecutive free features): a Gaussian
copula. Feature i fires iff z_i < Φ⁻¹(p_i), with z ~ N(0, Σ), Σ = (1 − ρ)·I + ρ·U Uᵀ and U the
(n_features, n_groups) group-membership matrix (a rank-n_groups correction; ρ = `correlation`):
z_i = √ρ·g_group + √(1 − ρ)·e_i. Marginals stay exactly p_i; two features of one group fire
together with probability Φ₂(Φ⁻¹(p_i), Φ⁻¹(p_j); ρ) (bivariate normal CDF with correlation ρ);
features of different groups, and all other roots, fire independently.

**Magnitudes** (independent of firing and of each other): per-feature mean m_i and std σ_i.
With `magnitude_spread` = τ > 0 the means vary across features, m_i = m·exp(τ·N_i − τ²/2)
(N_i standard normal, so E[m_i] = m), keeping σ_i / m_i = σ / m.

* "uniform": U[m − √3σ, m + √3σ] (mean m, std σ; needs σ ≤ m/√3 to stay ≥ 0);
* "exponential": m − σ + σ·Exp(1) (mean m, std σ; needs σ ≤ m);
* "lognormal": exp(μ + s·N), s² = log(1 + σ²/m²), μ = log m − s²/2 (mean m, std σ);
* "folded_normal": |N(m, σ²)| — here m and σ are the underlying normal's; its mean is
  σ·√(2/π)·exp(−m²/2σ²) + m·(1 − 2Φ(−m/σ)) (`SyntheticSource.expected_magnitude`).

**Directions**: isotropic random unit vectors, or with `orthogonal` (n_features ≤ d_in)
orthonormal rows (QR of a Gaussian matrix).

`SyntheticSource` is an equinox module (all arrays traced, so it jits, vmaps over stacked
sources and feeds the compiled training loop as any other in-loop source: `d_in`,
`sample(key, batch_size)`); `sample_with_features(key, n)` also returns s for evaluation
(`superpos_jax.sae.metrics`: absorption, splitting, precision/recall); `parent` and
`directions` are the truth those metrics take.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superpos_jax.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Rule,
    each,
    fail,
    in_range,
    one_of,
    validate,
)
from superpos_jax.engine.prng import GENERATORS, Generator, uniform

__all__ = ["MAGNITUDE_KINDS", "SyntheticConfig", "SyntheticSource", "root_probabilities"]

MAGNITUDE_KINDS: tuple[str, ...] = ("uniform", "exponential", "lognormal", "folded_normal")

Branching = Annotated[tuple[int, ...], Rule("a non-empty list", lambda v: len(v) > 0),
                      each(Rule("a positive integer", lambda v: isinstance(v, int) and v > 0))]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """The whole structured ground truth (module docstring for the model).

    Attributes:
        n_features: number of true features.
        d_in: ambient dimension.
        zipf_exponent: α of the root firing probabilities ∝ (r + 1)^(−α) (0: all equal).
        mean_active: expected number of active features per example, children included.
        max_probability: cap on any root's firing probability, in (0, 1).
        n_parents: number of top-level parents (0: no hierarchy).
        branching: children per node at each level below the parents, e.g. (4,) or (3, 2).
        child_probability: q = P(child fires | parent fires).
        mutually_exclusive: siblings never fire together (needs q·b ≤ 1 at every level).
        n_groups, group_size: correlated groups of consecutive free features.
        correlation: ρ of the Gaussian copula within a group, in [0, 1).
        magnitude: one of `MAGNITUDE_KINDS`.
        magnitude_mean, magnitude_std: m and σ (for "folded_normal", the underlying normal's).
        magnitude_spread: τ, the log-normal spread of the per-feature means (0: all m).
        orthogonal: orthonormal directions (needs n_features ≤ d_in).
        generator: uniform generator of the sampler ("hash" or "threefry").
    """

    n_features: PositiveInt = 256
    d_in: PositiveInt = 64
    zipf_exponent: NonNegativeFloat = 1.0
    mean_active: PositiveFloat = 5.0
    max_probability: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.9
    n_parents: NonNegativeInt = 0
    branching: Branching = (4,)
    child_probability: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.25
    mutually_exclusive: bool = False
    n_groups: NonNegativeInt = 0
    group_size: Annotated[int, Rule(">= 2", lambda v: v >= 2)] = 4
    correlation: Annotated[float, in_range(0.0, 1.0, closed="[)")] = 0.0
    magnitude: Annotated[str, one_of(*MAGNITUDE_KINDS)] = "folded_normal"
    magnitude_mean: PositiveFloat = 1.0
    magnitude_std: NonNegativeFloat = 0.25
    magnitude_spread: NonNegativeFloat = 0.0
    orthogonal: bool = False
    generator: Annotated[str, one_of(*GENERATORS)] = "hash"

    @property
    def n_hierarchy(self) -> int:
        """Number of features in the hierarchy (parents and all their descendants)."""
        total, level = self.n_parents, self.n_parents
        for b in self.branching:
            level *= b
            total += level
        return total if self.n_parents else 0

    def check(self) -> None:
        n_free = self.n_features - self.n_hierarchy
        if n_free < 0:
            fail("n_parents", self.n_parents,
                 f"small enough that the hierarchy ({self.n_hierarchy} features with branching "
                 f"{self.branching}) fits in n_features={self.n_features}")
        if self.n_parents and self.mutually_exclusive and self.child_probability * max(self.branching) > 1 + 1e-12:
            fail("child_probability", self.child_probability,
                 f"<= 1/{max(self.branching)} for mutually exclusive children (branching {self.branching})")
        if self.n_groups * self.group_size > n_free:
            fail("n_groups", self.n_groups,
                 f"at most {n_free // self.group_size}: groups of group_size={self.group_size} are drawn "
                 f"from the {n_free} free features")
        if self.orthogonal and self.n_features > self.d_in:
            fail("orthogonal", self.orthogonal, f"False when n_features={self.n_features} > d_in={self.d_in}")
        m, s = self.magnitude_mean, self.magnitude_std
        if self.magnitude == "uniform" and s > m / math.sqrt(3.0) + 1e-12:
            fail("magnitude_std", s, f"<= magnitude_mean/√3 = {m / math.sqrt(3.0):.6g} for uniform magnitudes (≥ 0)")
        if self.magnitude == "exponential" and s > m + 1e-12:
            fail("magnitude_std", s, f"<= magnitude_mean = {m:g} for exponential magnitudes (≥ 0)")
        weights = self._root_weights()
        most = self.max_probability * float(weights.sum())
        if self.mean_active > most:
            fail("mean_active", self.mean_active,
                 f"<= {most:.6g} (every root at max_probability={self.max_probability:g})")

    def _root_weights(self) -> np.ndarray:
        """(n_roots,) expected active features per firing of each root (1 + its descendants')."""
        n_roots = self.n_features - self.n_hierarchy + (self.n_parents if self.n_parents else 0)
        w = np.ones(max(n_roots, 0))
        if self.n_parents:
            extra, level = 0.0, 1.0
            for b in self.branching:
                level *= b * self.child_probability
                extra += level
            w[: self.n_parents] += extra
        return w


def root_probabilities(config: SyntheticConfig) -> np.ndarray:
    """(n_roots,) float64 marginal firing probabilities of the roots (parents, then free
    features): min(λ·(r + 1)^(−α), max_probability), λ found by bisection so that the
    expected number of active features (children included) is `mean_active`."""
    validate(config)
    w = config._root_weights()
    z = np.arange(1, w.size + 1, dtype=np.float64) ** -float(config.zipf_exponent)
    cap = float(config.max_probability)

    def expected(lam: float) -> float:
        return float(np.dot(w, np.minimum(lam * z, cap)))

    lo, hi = 0.0, cap / z[-1]
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if expected(mid) < config.mean_active else (lo, mid)
    return np.minimum(0.5 * (lo + hi) * z, cap)


class SyntheticSource(eqx.Module):
    """Structured ground truth as an in-loop activation source (module docstring).

    Build with `SyntheticSource.from_config(config, key=key)`.

    Attributes:
        directions: (n_features, d_in) unit rows d_i.
        root_probability: (n_features,) marginal firing probability of each root (0 for children).
        parent: (n_features,) int32 parent index, −1 for roots.
        level: (n_features,) int32 depth in the hierarchy (0 for roots).
        lower, upper: (n_features,) a child fires iff its parent fires and its uniform lies in
            [lower, upper) (independent children: [0, q); mutually exclusive: [kq, (k+1)q)).
        group: (n_features,) int32 correlated group, −1 for none.
        correlation: () ρ of the group copula.
        magnitude_mean, magnitude_std: (n_features,) per-feature m_i, σ_i.
        n_levels, n_groups, mutually_exclusive, magnitude, generator: static structure.
    """

    directions: Float[Array, "feature d_in"]
    root_probability: Float[Array, " feature"]
    parent: Int[Array, " feature"]
    level: Int[Array, " feature"]
    lower: Float[Array, " feature"]
    upper: Float[Array, " feature"]
    group: Int[Array, " feature"]
    correlation: Float[Array, ""]
    magnitude_mean: Float[Array, " feature"]
    magnitude_std: Float[Array, " feature"]
    n_levels: int = eqx.field(static=True)
    n_groups: int = eqx.field(static=True)
    mutually_exclusive: bool = eqx.field(static=True)
    magnitude: str = eqx.field(static=True)
    generator: Generator = eqx.field(static=True)

    @classmethod
    def from_config(cls, config: SyntheticConfig, *, key: PRNGKeyArray) -> SyntheticSource:
        """The ground truth described by `config` (validated first: a `ConfigError` names the
        field); `key` draws the directions and the per-feature magnitude means."""
        validate(config)
        n, d = config.n_features, config.d_in
        k_dir, k_mag = jax.random.split(key)
        if config.orthogonal:
            q, _ = jnp.linalg.qr(jax.random.normal(k_dir, (d, n), jnp.float32))
            directions = q.T
        else:
            g = jax.random.normal(k_dir, (n, d), jnp.float32)
            directions = g / jnp.linalg.norm(g, axis=1, keepdims=True)

        p_roots = root_probabilities(config)
        parent = np.full(n, -1, np.int32)
        level = np.zeros(n, np.int32)
        lower = np.zeros(n, np.float64)
        upper = np.ones(n, np.float64)
        is_root = np.ones(n, bool)
        q = float(config.child_probability)
        n_levels = len(config.branching) if config.n_parents else 0
        start, width = 0, config.n_parents
        for depth in range(1, n_levels + 1):
            b = config.branching[depth - 1]
            child = start + width + np.arange(width * b)
            parent[child] = start + np.arange(width * b) // b
            level[child] = depth
            sibling = np.arange(width * b) % b
            lower[child] = sibling * q if config.mutually_exclusive else 0.0
            upper[child] = lower[child] + q
            is_root[child] = False
            start, width = start + width, width * b
        root_probability = np.zeros(n, np.float64)
        root_probability[is_root] = p_roots
        group = np.full(n, -1, np.int32)
        first_free = config.n_hierarchy
        for gi in range(config.n_groups):
            group[first_free + gi * config.group_size : first_free + (gi + 1) * config.group_size] = gi

        tau = float(config.magnitude_spread)
        scale = np.exp(tau * np.asarray(jax.random.normal(k_mag, (n,), jnp.float32), np.float64) - 0.5 * tau**2)
        return cls(
            directions=jnp.asarray(directions, jnp.float32),
            root_probability=jnp.asarray(root_probability, jnp.float32),
            parent=jnp.asarray(parent),
            level=jnp.asarray(level),
            lower=jnp.asarray(lower, jnp.float32),
            upper=jnp.asarray(upper, jnp.float32),
            group=jnp.asarray(group),
            correlation=jnp.asarray(config.correlation, jnp.float32),
            magnitude_mean=jnp.asarray(config.magnitude_mean * scale, jnp.float32),
            magnitude_std=jnp.asarray(config.magnitude_std * scale, jnp.float32),
            n_levels=n_levels,
            n_groups=int(config.n_groups),
            mutually_exclusive=bool(config.mutually_exclusive),
            magnitude=config.magnitude,
            generator=config.generator,  # type: ignore[arg-type]
        )

    @property
    def d_in(self) -> int:
        return int(self.directions.shape[-1])

    @property
    def n_features(self) -> int:
        return int(self.directions.shape[-2])

    @property
    def firing_probability(self) -> Float[Array, " feature"]:
        """(n_features,) marginal firing probability of every feature (root: p_r; a node at
        depth ℓ: its parent's marginal times upper − lower)."""
        p = self.root_probability
        conditional = self.upper - self.lower
        safe_parent = jnp.maximum(self.parent, 0)
        for depth in range(1, self.n_levels + 1):
            p = jnp.where(self.level == depth, p[..., safe_parent] * conditional, p)
        return p

    def expected_magnitude(self) -> Float[Array, " feature"]:
        """(n_features,) E[s_i | feature i active] (closed form per `magnitude` kind)."""
        m, s = self.magnitude_mean, self.magnitude_std
        if self.magnitude != "folded_normal":
            return m
        ratio = m / jnp.maximum(s, 1e-30)
        folded = s * math.sqrt(2.0 / math.pi) * jnp.exp(-0.5 * ratio**2) + m * (1.0 - 2.0 * jax.scipy.stats.norm.cdf(-ratio))
        return jnp.where(s > 0, folded, jnp.abs(m))

    def _magnitudes(self, u: Float[Array, "batch feature"]) -> Float[Array, "batch feature"]:
        m, s = self.magnitude_mean[None, :], self.magnitude_std[None, :]
        if self.magnitude == "uniform":
            return m + s * math.sqrt(3.0) * (2.0 * u - 1.0)
        if self.magnitude == "exponential":
            return (m - s) + s * -jnp.log1p(-u)
        normal = ndtri(jnp.clip(u, 1e-7, 1.0 - 1e-7))
        if self.magnitude == "lognormal":
            log_var = jnp.log1p(jnp.square(s / m))
            return jnp.exp(jnp.log(m) - 0.5 * log_var + jnp.sqrt(log_var) * normal)
        return jnp.abs(m + s * normal)

    def sample_with_features(
        self, key: PRNGKeyArray, batch_size: int
    ) -> tuple[Float[Array, "batch d_in"], Float[Array, "batch feature"]]:
        """A batch and its true feature activations.

        Args:
            key: PRNG key (per instance and step).
            batch_size: number of examples (static).

        Returns:
            (x, s): x (batch, d_in) float32 = s @ directions; s (batch, n_features) the
            magnitudes of the active features, 0 elsewhere.
        """
        n = self.n_features
        k_own, k_group, k_child, k_sibling, k_mag = jax.random.split(key, 5)
        own = ndtri(jnp.clip(uniform(k_own, (batch_size, n), self.generator), 1e-7, 1.0 - 1e-7))
        z = own
        if self.n_groups:
            shared = ndtri(jnp.clip(uniform(k_group, (batch_size, self.n_groups), self.generator), 1e-7, 1.0 - 1e-7))
            rho = self.correlation
            grouped = jnp.sqrt(rho) * shared[:, jnp.maximum(self.group, 0)] + jnp.sqrt(1.0 - rho) * own
            z = jnp.where((self.group >= 0)[None, :], grouped, own)
        threshold = ndtri(jnp.clip(self.root_probability, 1e-30, 1.0 - 1e-7))
        active = ((self.level == 0) & (self.root_probability > 0))[None, :] & (z < threshold[None, :])
        if self.n_levels:
            safe_parent = jnp.maximum(self.parent, 0)
            u = uniform(k_child, (batch_size, n), self.generator)
            if self.mutually_exclusive:
                u = uniform(k_sibling, (batch_size, n), self.generator)[:, safe_parent]
            allowed = (u >= self.lower[None, :]) & (u < self.upper[None, :])
            for depth in range(1, self.n_levels + 1):
                active = active | ((self.level == depth)[None, :] & allowed & active[:, safe_parent])
        magnitude = self._magnitudes(uniform(k_mag, (batch_size, n), self.generator))
        s = jnp.where(active, magnitude, 0.0)
        return s @ self.directions, s

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Float[Array, "batch d_in"]:
        """A (batch, d_in) batch of activations."""
        return self.sample_with_features(key, batch_size)[0]

    def children(self) -> dict[int, np.ndarray]:
        """Host-side map parent index -> (n_children,) int64 indices of its direct children."""
        parent = np.asarray(self.parent)
        return {int(p): np.nonzero(parent == p)[0] for p in np.unique(parent[parent >= 0])}
