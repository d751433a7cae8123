"""Norm-bounded adversarial attacks: the L2 perturbation of one input that maximises a loss.

An attack solves  max_δ  f(δ)  subject to  ‖δ‖₂ ≤ ε,  where f is a scalar objective of the
perturbation — for a toy model, its loss on the perturbed input x + δ (`toy_attack_loss`).
`pgd_l2` runs projected gradient ascent with normalised steps from several starting points
at once (vmapped) and keeps the best point any of them visited, so a run can never return
something worse than its starts. Everything here is written for one input of one model and
is pure: vmap over inputs and instances at the call site.

For toy models the starts that matter are the paper's analytic per-feature attacks
(`interference_starts`): ±ε (WᵀW)_i / ‖(WᵀW)_i‖ pushes the pre-activation of output i as
far as an ε-step can. The paper found plain gradient ascent fails on very sparse models
(ReLU outputs sit in the zero regime, the gradient vanishes: gradient masking); starting
from those candidates and refining them by PGD avoids that, and random starts on the sphere
(`sphere_starts`) cover the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from superpos_jax.toy.models import ToyParams, toy_forward, weighted_mse

_TINY = 1e-12

Objective = Callable[[Float[Array, " feature"]], Scalar]


class Attack(eqx.Module):
    """The result of an attack on one input: the perturbation and the objective there."""

    delta: Float[Array, " feature"]
    value: Scalar


def project_l2_ball(delta: Float[ArrayLike, "*shape"], epsilon: Float[ArrayLike, ""] | float) -> Float[Array, "*shape"]:
    """The closest point to `delta` in the ball ‖δ‖₂ ≤ ε (δ itself when already inside)."""
    delta = jnp.asarray(delta)
    norm = jnp.sqrt(jnp.sum(jnp.square(delta)))
    return delta * jnp.minimum(1.0, epsilon / jnp.maximum(norm, _TINY))


def sphere_starts(
    n_starts: int, n_features: int, epsilon: Float[ArrayLike, ""] | float, *, key: PRNGKeyArray
) -> Float[Array, "start feature"]:
    """`n_starts` points drawn uniformly on the sphere ‖δ‖₂ = ε."""
    z = jax.random.normal(key, (n_starts, n_features), jnp.float32)
    return epsilon * z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), _TINY)


def interference_starts(W: Float[ArrayLike, "hidden feature"], epsilon: Float[ArrayLike, ""] | float) -> Float[Array, "start feature"]:
    """The paper's analytic attacks on a tied toy model: ±ε (WᵀW)_i / ‖(WᵀW)_i‖ for every
    feature i, shape (2 · n_features, n_features) (rows of an unlearned feature are zero)."""
    W = jnp.asarray(W)
    G = W.T @ W
    rows = G / jnp.maximum(jnp.linalg.norm(G, axis=1, keepdims=True), _TINY)
    return epsilon * jnp.concatenate([rows, -rows], axis=0)


def pgd_l2(
    objective: Objective,
    starts: Float[ArrayLike, "start feature"],
    epsilon: Float[ArrayLike, ""] | float,
    *,
    n_steps: int,
    step_size: float = 0.5,
    final_step_size: float = 0.01,
) -> Attack:
    """Maximise `objective(δ)` over ‖δ‖₂ ≤ ε by projected gradient ascent from every start.

    Each step moves δ by α_t · ε along the normalised gradient and projects back onto the
    ball; α_t decays linearly from `step_size` to `final_step_size` over `n_steps`. The
    best point seen on every trajectory (starts included) is kept, and the best over all
    starts is returned, so the result is at least as good as the best start.

    Args:
        objective: δ (feature,) -> scalar to maximise; must be differentiable (a.e.).
        starts: initial perturbations, shape (start, feature); projected onto the ball first.
        epsilon: the attack radius ε ≥ 0.
        n_steps: ascent steps per start (0: just evaluate the starts).

    Returns:
        `Attack(delta (feature,), value ())` with ‖delta‖₂ ≤ ε.
    """
    starts = jnp.asarray(starts)
    fractions = jnp.linspace(0.0, 1.0, max(n_steps, 1), dtype=jnp.float32)[:n_steps]
    alphas = step_size + (final_step_size - step_size) * fractions
    value_and_grad = jax.value_and_grad(objective)

    def climb(start: Array) -> tuple[Array, Array]:
        delta = project_l2_ball(start, epsilon)

        def step(carry, alpha):
            delta, best_delta, best_value = carry
            value, grad = value_and_grad(delta)
            better = value > best_value
            best_delta = jnp.where(better, delta, best_delta)
            best_value = jnp.where(better, value, best_value)
            g_norm = jnp.sqrt(jnp.sum(jnp.square(grad)))
            direction = jnp.where(g_norm > _TINY, grad / jnp.maximum(g_norm, _TINY), 0.0)
            delta = project_l2_ball(delta + alpha * epsilon * direction, epsilon)
            return (delta, best_delta, best_value), None

        init = (delta, delta, jnp.asarray(-jnp.inf, jnp.float32))
        (delta, best_delta, best_value), _ = jax.lax.scan(step, init, alphas)
        last = objective(delta)
        better = last > best_value
        return jnp.where(better, delta, best_delta), jnp.where(better, last, best_value)

    deltas, values = jax.vmap(climb)(starts)
    best = jnp.argmax(values)
    return Attack(delta=deltas[best], value=values[best])


def toy_attack_loss(
    params: ToyParams,
    x: Float[ArrayLike, " feature"],
    delta: Float[ArrayLike, " feature"],
    importance: Float[ArrayLike, " feature"],
    flags: Float[ArrayLike, "2"],
    *,
    target: Literal["clean", "perturbed"] = "clean",
) -> Scalar:
    """A tied toy model's loss when input x is replaced by x + δ.

    With `target="clean"` the model should still output x (an adversarial example: the
    input changed, the right answer did not); with `"perturbed"` it should output x + δ
    (its ordinary reconstruction loss on the perturbed input).
    """
    x = jnp.asarray(x)
    attacked = x + jnp.asarray(delta)
    out = toy_forward(params, attacked[:, None], flags)
    goal = x if target == "clean" else attacked
    return weighted_mse(out, goal[:, None], importance)


def attack_toy(
    params: ToyParams,
    x: Float[ArrayLike, " feature"],
    importance: Float[ArrayLike, " feature"],
    flags: Float[ArrayLike, "2"],
    epsilon: Float[ArrayLike, ""] | float,
    *,
    key: PRNGKeyArray,
    n_steps: int = 100,
    n_refine: int = 4,
    n_random: int = 4,
    target: Literal["clean", "perturbed"] = "clean",
) -> Attack:
    """The (near-)optimal L2 attack of radius ε on one input of one tied toy model.

    Every analytic per-feature attack (`interference_starts`) is evaluated; the `n_refine`
    best of them and `n_random` random points on the sphere are refined by `pgd_l2`.
    Returns the attack with the highest loss (`Attack.value` = the attacked loss).
    """
    objective = lambda d: toy_attack_loss(params, x, d, importance, flags, target=target)  # noqa: E731
    candidates = interference_starts(params.W, epsilon)
    scores = jax.vmap(objective)(candidates)
    _, top = jax.lax.top_k(scores, min(n_refine, candidates.shape[0]))
    starts = jnp.concatenate([candidates[top], sphere_starts(n_random, candidates.shape[1], epsilon, key=key)], axis=0)
    return pgd_l2(objective, starts, epsilon, n_steps=n_steps)
