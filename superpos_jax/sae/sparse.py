"""Sparse kernels of the k-sparse SAEs: decode only the active latents, and differentiate
through gathers and scatter-adds instead of dense (batch, d_sae) matmuls.

Each row b of a batch selects at most K latents, given as `idx` (batch, K) int32 with their
values (batch, K). Two primitives, each the transpose of the other in its dense argument, with
hand-written backward passes (`jax.custom_vjp`):

    gather_decode(R, v, idx, n)   y_b    = Σ_{j<n} v_bj R[idx_bj]              (batch, d)
    gather_dot(R, y, idx, n)      out_bj = y_b · R[idx_bj]  (0 for j ≥ n)      (batch, K)

R (d_sae, d) is a row table: W_enc itself, or W_decᵀ. Their gradients touch only the rows of R
that are selected (a scatter-add of batch·K rows), never a dense (batch, d_sae) product. `n` is
a traced count (≤ K) of the columns that count; the loops over j have the static length K (so
under `vmap` their carries are not re-selected at every iteration) and are skipped entirely when
n = 0 in every instance (AuxK with no dead latent).

`run_if(pred, fn, default)` is a conditional that stays a conditional under `vmap`: it runs `fn`
when any instance's `pred` holds (a `lax.cond` with a batched predicate becomes a select that
always runs both branches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_batching import custom_vmap
from jaxtyping import Array, ArrayLike, Float, Int

__all__ = ["gather_decode", "gather_dot", "run_if", "select_top"]

T = TypeVar("T")


def _trip(n: ArrayLike, size: int) -> Array:
    return jnp.clip(jnp.asarray(n).astype(jnp.int32), 0, size)


def _loop(n: Array, size: int, body: Callable[..., Any], init: Any, *operands: Array) -> Any:
    """for j in range(size): carry = body(j, carry, *operands), run only if n > 0 (else
    `init`). The trip count is static, so under vmap the loop's carry is not re-selected at
    every iteration; only the skip (`run_if`) depends on the instance. Callers zero the entries
    j ≥ n."""

    def run(*ops: Array) -> Any:
        return jax.lax.fori_loop(0, size, lambda j, c: body(j, c, *ops), init)

    return run_if(n > 0, run, init, *operands)


def _below(n: Array, v: Array) -> Array:
    return jnp.where(jnp.arange(v.shape[1])[None, :] < n, v, 0.0)


def _column(a: Array, j: Array, keepdims: bool) -> Array:
    return jax.lax.dynamic_index_in_dim(a, j, axis=1, keepdims=keepdims)


def _decode_body(j: Array, acc: Array, R: Array, v: Array, idx: Array) -> Array:
    return acc + _column(v, j, True) * jnp.take(R, _column(idx, j, False), axis=0)


def _dot_body(j: Array, out: Array, R: Array, y: Array, idx: Array) -> Array:
    col = jnp.sum(y * jnp.take(R, _column(idx, j, False), axis=0), axis=-1, keepdims=True)
    return jax.lax.dynamic_update_index_in_dim(out, col, j, axis=1)


def _scatter_body(j: Array, acc: Array, v: Array, y: Array, idx: Array) -> Array:
    return acc.at[_column(idx, j, False)].add(_column(v, j, True) * y)


def _decode(R: Array, v: Array, idx: Array, n: Array) -> Array:
    init = jnp.zeros((idx.shape[0], R.shape[1]), R.dtype)
    return _loop(n, idx.shape[1], _decode_body, init, R, _below(n, v), idx)


@custom_vmap
def _dot(R: Array, y: Array, idx: Array, n: Array) -> Array:
    return _below(n, _loop(n, idx.shape[1], _dot_body, jnp.zeros(idx.shape, R.dtype), R, y, idx))


@_dot.def_vmap
def _dot_vmap(size: int, batched: Any, R: Array, y: Array, idx: Array, n: Array) -> tuple[Array, bool]:
    """Instances folded into rows: one unbatched gather-dot on the stacked tables (row i·d_sae
    + idx of instance i), each instance's entries j ≥ n zeroed after. XLA's CPU backend runs the
    batched gather inside the dot's reduction ~30× slower than this."""
    R, y, idx, n = (a if b else jnp.broadcast_to(a, (size, *jnp.shape(a))) for a, b in zip((R, y, idx, n), batched))
    offset = (jnp.arange(size, dtype=idx.dtype) * R.shape[1])[:, None, None]
    flat = _dot(R.reshape(-1, R.shape[-1]), y.reshape(-1, y.shape[-1]), (idx + offset).reshape(-1, idx.shape[-1]), jnp.max(n))
    out = flat.reshape(idx.shape)
    return jnp.where(jnp.arange(idx.shape[-1])[None, None, :] < n[:, None, None], out, 0.0), True


def _scatter(shape: tuple[int, ...], v: Array, y: Array, idx: Array, n: Array) -> Array:
    """G[i] = Σ_{b, j<n: idx_bj = i} v_bj y_b  (the gradient of either primitive w.r.t. R)."""
    return _loop(n, idx.shape[1], _scatter_body, jnp.zeros(shape, y.dtype), _below(n, v), y, idx)


def _float0_like(a: Array) -> Any:
    return np.zeros(a.shape, jax.dtypes.float0)


@jax.custom_vjp
def _gather_decode(R: Array, v: Array, idx: Array, n: Array) -> Array:
    return _decode(R, v, idx, n)


def _gather_decode_fwd(R: Array, v: Array, idx: Array, n: Array) -> tuple[Array, tuple[Array, ...]]:
    return _decode(R, v, idx, n), (R, v, idx, n)


def _gather_decode_bwd(res: tuple[Array, ...], g: Array) -> tuple[Any, ...]:
    R, v, idx, n = res
    return _scatter(R.shape, v, g, idx, n), _dot(R, g, idx, n), _float0_like(idx), _float0_like(n)


_gather_decode.defvjp(_gather_decode_fwd, _gather_decode_bwd)


@jax.custom_vjp
def _gather_dot(R: Array, y: Array, idx: Array, n: Array) -> Array:
    return _dot(R, y, idx, n)


def _gather_dot_fwd(R: Array, y: Array, idx: Array, n: Array) -> tuple[Array, tuple[Array, ...]]:
    return _dot(R, y, idx, n), (R, y, idx, n)


def _gather_dot_bwd(res: tuple[Array, ...], g: Array) -> tuple[Any, ...]:
    R, y, idx, n = res
    return _scatter(R.shape, g, y, idx, n), _decode(R, g, idx, n), _float0_like(idx), _float0_like(n)


_gather_dot.defvjp(_gather_dot_fwd, _gather_dot_bwd)


@jax.custom_vjp
def _gather_dot_given(R: Array, y: Array, idx: Array, n: Array, value: Array) -> Array:
    return _below(n, value)


def _gather_dot_given_fwd(R: Array, y: Array, idx: Array, n: Array, value: Array) -> tuple[Array, tuple[Array, ...]]:
    return _below(n, value), (R, y, idx, n)


def _gather_dot_given_bwd(res: tuple[Array, ...], g: Array) -> tuple[Any, ...]:
    return (*_gather_dot_bwd(res, g), jnp.zeros_like(g))


_gather_dot_given.defvjp(_gather_dot_given_fwd, _gather_dot_given_bwd)


def gather_decode(
    R: Float[Array, "sae d"], v: Float[Array, "batch K"], idx: Int[Array, "batch K"], n: ArrayLike | int | None = None
) -> Float[Array, "batch d"]:
    """y_b = Σ_{j<n} v_bj R[idx_bj] (n defaults to K; traced). Gradients: to v by a gather-dot,
    to R by a scatter-add into the selected rows only; none to idx."""
    return _gather_decode(R, v, idx, _trip(idx.shape[1] if n is None else n, idx.shape[1]))


def gather_dot(
    R: Float[Array, "sae d"], y: Float[Array, "batch d"], idx: Int[Array, "batch K"], n: ArrayLike | int | None = None,
    *, value: Float[Array, "batch K"] | None = None,
) -> Float[Array, "batch K"]:
    """out_bj = y_b · R[idx_bj] for j < n, 0 for j ≥ n (n defaults to K; traced). Gradients: to
    y by a gather-decode, to R by a scatter-add into the selected rows only; none to idx.

    `value`: these dot products already computed (e.g. picked from a dense product y Rᵀ that
    selected idx), returned instead of recomputing them by gathers; no gradient reaches it, the
    gradients to R and y are as above."""
    n = _trip(idx.shape[1] if n is None else n, idx.shape[1])
    if value is None:
        return _gather_dot(R, y, idx, n)
    return _gather_dot_given(R, y, idx, n, jax.lax.stop_gradient(value))


def select_top(z: Float[Array, "batch sae"], K: int) -> tuple[Float[Array, "batch K"], Int[Array, "batch K"]]:
    """Each row's K largest entries (values descending) and their indices, gradient-stopped.
    Ties: among equal values the lower index comes first (`lax.top_k`), so exactly K are taken."""
    vals, idx = jax.lax.top_k(jax.lax.stop_gradient(z), K)
    return vals, idx.astype(jnp.int32)


def run_if(pred: ArrayLike, fn: Callable[..., T], default: T, *operands: Any) -> T:
    """`fn(*operands)` if `pred` else `default` (same structure), with `fn` not run at all when
    `pred` is False — also under `vmap`, where it runs only when some instance's `pred` holds
    (instances whose `pred` is False still get `default`). `fn` is not differentiated through
    (use it for gradient-stopped work, or inside a custom_vjp rule).

    It is a while loop of at most one iteration. The operands enter the body through an
    optimization barrier tied to the loop state, so XLA cannot hoist `fn`'s work out of the loop
    as loop-invariant code (it would then always run): pass every large array `fn` reads as an
    operand rather than closing over it."""
    pred = jnp.asarray(pred).astype(bool)

    def body(c: tuple[Array, T]) -> tuple[Array, T]:
        _, args = jax.lax.optimization_barrier((c[0], operands))
        return jnp.zeros((), bool), fn(*args)

    return jax.lax.while_loop(lambda c: c[0], body, (pred, default))[1]
