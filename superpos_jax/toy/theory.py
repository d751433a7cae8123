"""Expected loss of the ReLU-output toy model, and the candidate solutions of the phase diagrams.

*Toy Models of Superposition* explains its phase diagrams by comparing the expected loss of a
few candidate solutions, each with its best bias. This module computes that loss from the data
distribution instead of from samples, and finds each candidate's best norms and biases.

**Expected loss.** For x' = ReLU(Wᵀ W x + b) and features that are present with probability
p_i and then U[0, 1], the loss of `toy_loss` (importance-weighted squared error, averaged over
features) is

    L(W, b) = (1/n) Σ_i I_i E[(x_i − ReLU(G_ii x_i + u_i + b_i))²],   G = WᵀW,  u_i = Σ_{j≠i} G_ij x_j.

Given the interference u_i, the expectation over the feature's own value is exact:
(1 − p_i) ReLU(u_i + b_i)² + p_i F(G_ii, u_i + b_i), with F from `relu_output_error`. The
expectation over the other features is a tensor-product rule on their law: an atom at 0 of
weight 1 − p_j plus `n_nodes` midpoints of [0, 1] of weight p_j / n_nodes each, so every
presence pattern is enumerated exactly and only the magnitudes are discretised. The integrand
is C¹ and piecewise polynomial, so the rule's error falls as n_nodes⁻²; at the default 64 it is
far below the loss differences between candidates (`tests/test_atlas_phase.py` checks it against
a float64 Monte-Carlo estimate). The cost is (n_nodes + 1)^(n − 1) points per feature: meant
for the few-feature models of the phase diagrams.

**Candidates.** A `Candidate` fixes the feature *directions* (unit columns of a (m, n) matrix,
zero for a dropped feature), or only starts from them (`free_directions`, e.g. a triangle
whose angles adapt to unequal importances); its norms and biases are free and optimised with
damped Newton on the expected loss (`optimise_candidates`). Which one wins at a given relative
importance and density is the theoretical phase diagram (`theoretical_phases`).

**Phases.** The phase of a feature in any W (trained or candidate) is read off its geometry by
`feature_phase`: not represented (‖W_i‖ ≤ norm threshold), dedicated (represented, with
superposition Σ_{j≠i} (Ŵ_i·W_j)² ≤ threshold), or in superposition. A candidate whose
optimum degenerates (e.g. an antipodal pair whose weaker member shrinks to zero) is classified
by what it became, exactly as a trained model would be.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Scalar

from superpos_jax.toy import metrics

NOT_REPRESENTED, DEDICATED, SUPERPOSITION = 0, 1, 2
PHASES: tuple[str, ...] = ("not represented", "dedicated dimension", "superposition")


def relu_output_error(gain: Float[ArrayLike, "..."], offset: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
    """F(g, c) = ∫₀¹ (t − ReLU(g t + c))² dt, elementwise (broadcasting), for gains g ≥ 0.

    The squared error of one output whose own feature is present with magnitude t ~ U[0, 1],
    read with gain g = ‖W_i‖² and offset c = bias + interference. Closed form: the output is
    active on [t₀, 1] with t₀ = clip(−c/g, 0, 1), so with α = 1 − g,
    F = t₀³/3 + α²(1 − t₀³)/3 − αc(1 − t₀²) + c²(1 − t₀), written without cancellation so that
    it stays accurate in float32 near a perfect reconstruction (F ≈ 0).
    """
    g = jnp.asarray(gain)
    c = jnp.asarray(offset)
    inside = (c < 0) & (g > -c)
    g_safe = jnp.where(inside, g, 1.0)
    t0 = jnp.where(c >= 0, 0.0, jnp.where(inside, -c / g_safe, 1.0))
    a = 1.0 - g
    t0_sq = t0 * t0
    t0_cube = t0_sq * t0
    return t0_cube / 3.0 + a * a * (1.0 - t0_cube) / 3.0 - a * c * (1.0 - t0_sq) + c * c * (1.0 - t0)


def _feature_law(p: Array, n_nodes: int) -> tuple[Array, Array]:
    """Nodes (n_nodes + 1,) and weights (feature, n_nodes + 1) of each feature's law."""
    mids = (jnp.arange(n_nodes, dtype=jnp.float32) + 0.5) / n_nodes
    nodes = jnp.concatenate([jnp.zeros((1,), jnp.float32), mids])
    weights = jnp.concatenate([(1.0 - p)[:, None], jnp.broadcast_to(p[:, None] / n_nodes, (p.shape[0], n_nodes))], axis=1)
    return nodes, weights


def expected_loss(
    W: Float[ArrayLike, "hidden feature"],
    b: Float[ArrayLike, " feature"],
    importance: Float[ArrayLike, " feature"],
    feature_probability: Float[ArrayLike, "*feature"] | float,
    *,
    n_nodes: int = 64,
) -> Scalar:
    """Expected `toy_loss` of the ReLU-output model (W, b) over the data distribution.

    Args:
        W: embedding, shape (d_hidden, n_features).
        b: output bias, shape (n_features,).
        importance: I_i, shape (n_features,).
        feature_probability: p_i = 1 − S_i, a scalar or shape (n_features,).
        n_nodes: midpoints per other feature's magnitude (see module docstring).

    Returns:
        (1/n) Σ_i I_i E[(x_i − x'_i)²], a float32 scalar.
    """
    W = jnp.asarray(W, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    importance = jnp.asarray(importance, jnp.float32)
    n = W.shape[1]
    p = jnp.broadcast_to(jnp.asarray(feature_probability, jnp.float32), (n,))
    G = W.T @ W
    nodes, weights = _feature_law(p, n_nodes)
    k = n - 1
    total = jnp.float32(0.0)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        interference = jnp.zeros((1,) * k, jnp.float32)
        mass = jnp.ones((1,) * k, jnp.float32)
        for axis, j in enumerate(others):
            shape = tuple(n_nodes + 1 if a == axis else 1 for a in range(k))
            interference = interference + G[i, j] * nodes.reshape(shape)
            mass = mass * weights[j].reshape(shape)
        c = b[i] + interference
        per_value = (1.0 - p[i]) * jnp.square(jax.nn.relu(c)) + p[i] * relu_output_error(G[i, i], c)
        total = total + importance[i] * jnp.sum(mass * per_value)
    return total / n


class Candidate(NamedTuple):
    """A candidate solution: fixed feature directions, free norms and biases.

    Attributes:
        name: short description, e.g. "antipodal [1, −1]".
        directions: shape (d_hidden, n_features); unit columns, or zero for a dropped feature.
            The candidate's W is `directions * norms`.
        phase: the extra (last) feature's phase the candidate stands for (index into `PHASES`);
            informative only, `feature_phase` of the optimised W is what is reported.
        free_directions: the directions are only the starting point: every entry of W is
            optimised (a family of arrangements, e.g. triangles with any angles).
    """

    name: str
    directions: np.ndarray
    phase: int
    free_directions: bool = False


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def candidates_2x1() -> tuple[Candidate, ...]:
    """The paper's three candidates for n = 2, m = 1 (feature 1, then the extra feature)."""
    return (
        Candidate("W=[1,0]: extra not represented", np.array([[1.0, 0.0]], np.float32), NOT_REPRESENTED),
        Candidate("W=[0,1]: extra only", np.array([[0.0, 1.0]], np.float32), DEDICATED),
        Candidate("W=[1,-1]: antipodal pair", np.array([[1.0, -1.0]], np.float32), SUPERPOSITION),
    )


def candidates_3x2() -> tuple[Candidate, ...]:
    """Candidates for n = 3, m = 2 (features 1 and 2 of importance 1, then the extra feature).

    In two dimensions three features can be: two orthogonal and one dropped (which one is
    dropped: the extra, or one of the importance-1 pair), one antipodal pair orthogonal to a
    dedicated feature (the pair holds the extra and a partner, or the two importance-1
    features, leaving the extra a dedicated dimension), or all three in a triangle. With
    unequal importances the best triangle is not equilateral, so the triangle starts at 120°
    with its angles free (it may also relax into one of the other arrangements, which
    `feature_phase` then reports as such).
    """
    e1, e2, z = [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]
    m1 = [-1.0, 0.0]

    def cols(*c: list[float]) -> np.ndarray:
        return np.array(c, np.float32).T

    return (
        Candidate("1, 2 dedicated; extra not represented", cols(e1, e2, z), NOT_REPRESENTED),
        Candidate("1, extra dedicated; 2 dropped", cols(e1, z, e2), DEDICATED),
        Candidate("1, 2 antipodal; extra dedicated", cols(e1, m1, e2), DEDICATED),
        Candidate("1, extra antipodal; 2 dedicated", cols(e1, e2, m1), SUPERPOSITION),
        Candidate("triangle (from 120°, angles free)", cols(_unit(210.0), _unit(330.0), _unit(90.0)), SUPERPOSITION, True),
    )


def _damped_newton(fun, x0: Array, n_iterations: int) -> Array:
    """Minimise `fun` from `x0` by Newton steps with Levenberg–Marquardt damping.

    A fixed number of iterations and no line search, so that it vmaps without waiting on the
    slowest instance: each iteration tries x − (H + λ(diag|H| + δ))⁻¹ ∇f, keeps it only if the
    loss fell (then λ shrinks, else it grows). Meant for a handful of parameters.
    """
    grad = jax.grad(fun)
    hessian = jax.jacfwd(grad)

    def step(carry, _):
        x, lam, fx = carry
        g = grad(x)
        H = hessian(x)
        H = 0.5 * (H + H.T)
        scale = jnp.abs(jnp.diagonal(H))
        delta = 1e-6 * jnp.mean(scale) + 1e-12
        d = jnp.linalg.solve(H + jnp.diag(lam * (scale + delta)), g)
        trial = x - d
        f_trial = fun(trial)
        accept = jnp.isfinite(f_trial) & (f_trial <= fx) & jnp.all(jnp.isfinite(trial))
        x = jnp.where(accept, trial, x)
        fx = jnp.where(accept, f_trial, fx)
        lam = jnp.clip(jnp.where(accept, lam * 0.3, lam * 10.0), 1e-7, 1e9)
        return (x, lam, fx), None

    (x, _, _), _ = jax.lax.scan(step, (x0, jnp.float32(1e-3), fun(x0)), None, length=n_iterations)
    return x


def optimise_candidates(
    directions: Float[ArrayLike, "candidate hidden feature"],
    free_directions: Bool[ArrayLike, " candidate"],
    importance: Float[ArrayLike, "cell feature"],
    feature_probability: Float[ArrayLike, "cell feature"],
    *,
    n_nodes: int = 64,
    n_iterations: int = 50,
    cells_per_call: int = 64,
) -> tuple[
    Float[np.ndarray, "cell candidate"],
    Float[np.ndarray, "cell candidate hidden feature"],
    Float[np.ndarray, "cell candidate feature"],
]:
    """Best norms and biases of every candidate in every cell, by damped Newton on `expected_loss`.

    Starts from norms 1 and biases 0. All candidates of `cells_per_call` cells are solved in
    one vmapped, compiled call (the Hessians of a whole grid at once would not fit in memory).
    The parameters are (V, norms, b) with W = V for candidates with free directions (V starts
    at the directions) and W = directions · norms otherwise.

    Args:
        directions: the candidates' directions, shape (candidate, d_hidden, n_features).
        free_directions: per candidate, whether every entry of W is free, shape (candidate,).
        importance: per cell, shape (cell, n_features).
        feature_probability: per cell and feature, shape (cell, n_features).
        n_nodes: quadrature nodes per feature (see `expected_loss`).
        n_iterations: damped Newton iterations.
        cells_per_call: cells per compiled call (the last call is padded).

    Returns:
        loss (cell, candidate), W (cell, candidate, d_hidden, n_features) and
        b (cell, candidate, n_features) at the optimum, as host arrays.
    """
    D = jnp.asarray(directions, jnp.float32)
    free = jnp.asarray(free_directions, jnp.bool_)
    importance = np.asarray(importance, np.float32)
    p = np.asarray(feature_probability, np.float32)
    n_cells = importance.shape[0]
    block = max(1, min(cells_per_call, n_cells))
    pad = -n_cells % block
    importance = np.concatenate([importance, np.repeat(importance[-1:], pad, axis=0)])
    p = np.concatenate([p, np.repeat(p[-1:], pad, axis=0)])
    parts = [
        jax.tree.map(np.asarray, _optimise(
            D, free, jnp.asarray(importance[s:s + block]), jnp.asarray(p[s:s + block]),
            n_nodes=n_nodes, n_iterations=n_iterations,
        ))
        for s in range(0, n_cells + pad, block)
    ]
    loss, W, b = (np.concatenate(a)[:n_cells] for a in zip(*parts))
    return loss, W, b


@functools.partial(jax.jit, static_argnames=("n_nodes", "n_iterations"))
def _optimise(D: Array, free: Array, importance: Array, p: Array, *, n_nodes: int, n_iterations: int):
    m, n = D.shape[1], D.shape[2]
    k = m * n

    def solve(d, is_free, imp, prob):
        def unpack(theta):
            W = jnp.where(is_free, theta[:k].reshape(m, n), d * theta[None, k:k + n])
            return W, theta[k + n:]

        def fun(theta):
            W, b = unpack(theta)
            return expected_loss(W, b, imp, prob, n_nodes=n_nodes)

        x0 = jnp.concatenate([d.reshape(-1), jnp.ones((n,), jnp.float32), jnp.zeros((n,), jnp.float32)])
        theta = _damped_newton(fun, x0, n_iterations)
        W, b = unpack(theta)
        return fun(theta), W, b

    per_cell = jax.vmap(solve, in_axes=(0, 0, None, None))
    return jax.vmap(per_cell, in_axes=(None, None, 0, 0))(D, free, importance, p)


def feature_phase(
    W: Float[ArrayLike, "hidden feature"],
    feature: int,
    *,
    norm_threshold: float = metrics.REPRESENTED_NORM,
    superposition_threshold: float = 0.1,
) -> Int[Array, ""]:
    """Phase of one feature of W: 0 not represented (‖W_i‖ ≤ norm_threshold), 1 dedicated
    (superposition Σ_{j≠i} (Ŵ_i·W_j)² ≤ superposition_threshold), 2 in superposition."""
    W = jnp.asarray(W, jnp.float32)
    norm = metrics.feature_norms(W)[feature]
    sup = metrics.superposition(W)[feature]
    return jnp.where(norm <= norm_threshold, NOT_REPRESENTED, jnp.where(sup <= superposition_threshold, DEDICATED, SUPERPOSITION))


class TheoryDiagram(NamedTuple):
    """The theoretical phase diagram over cells (host arrays).

    Attributes:
        losses: expected loss of every optimised candidate, (cell, candidate).
        best: index of the lowest-loss candidate, (cell,).
        W: the winner's embedding, (cell, d_hidden, n_features); b: its bias, (cell, n_features).
        phase: the extra (last) feature's phase in the winner, (cell,), by `feature_phase`.
    """

    losses: np.ndarray
    best: np.ndarray
    W: np.ndarray
    b: np.ndarray
    phase: np.ndarray


def theoretical_phases(
    candidates: tuple[Candidate, ...],
    importance: npt.ArrayLike,
    feature_probability: npt.ArrayLike,
    *,
    n_nodes: int = 64,
    n_iterations: int = 50,
    norm_threshold: float = metrics.REPRESENTED_NORM,
    superposition_threshold: float = 0.1,
    tie_tolerance: float = 1e-5,
) -> TheoryDiagram:
    """The lowest-expected-loss candidate per cell and the extra feature's phase in it.

    Args:
        candidates: e.g. `candidates_2x1()`; the extra feature is the last one.
        importance: (cell, n_features).
        feature_probability: (cell,) (all features alike) or (cell, n_features).
        tie_tolerance: losses within this relative distance of the lowest count as equal; the
            first such candidate wins.
    """
    directions = np.stack([c.directions for c in candidates])
    free = np.array([c.free_directions for c in candidates])
    importance = np.asarray(importance, np.float32)
    feature_probability = np.asarray(feature_probability, np.float32)
    if feature_probability.ndim == 1:
        feature_probability = np.repeat(feature_probability[:, None], importance.shape[1], axis=1)
    losses, W, b = optimise_candidates(
        directions, free, importance, feature_probability, n_nodes=n_nodes, n_iterations=n_iterations
    )
    finite = np.where(np.isfinite(losses), losses, np.inf)
    # Candidates that relax into the same solution tie up to quadrature rounding: report the
    # first of them (fixed arrangements come before free ones), so its name describes it.
    best = np.argmax(finite <= finite.min(axis=1, keepdims=True) * (1.0 + tie_tolerance), axis=1)
    cells = np.arange(losses.shape[0])
    W_best, b_best = W[cells, best], b[cells, best]
    extra = W_best.shape[2] - 1
    phase = np.asarray(jax.vmap(lambda w: feature_phase(
        w, extra, norm_threshold=norm_threshold, superposition_threshold=superposition_threshold
    ))(jnp.asarray(W_best)))
    return TheoryDiagram(losses, best, W_best, b_best, phase)
