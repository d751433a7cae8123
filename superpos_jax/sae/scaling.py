"""Power-law fits for SAE scaling: loss against dictionary size or compute, and the compute frontier.

Host-side NumPy analysis (float64). Conventions:

* A power law with an irreducible term is L(x) = a·x^(−b) + c with a > 0 and c ≥ 0; for a
  decreasing loss b > 0. `fit_power_law` returns a `PowerLaw`.
* Training compute of an SAE is counted as C = 12·d_in·d_sae·n_tokens FLOPs
  (`sae_training_flops`, derivation there).
* The compute-optimal dictionary size (`compute_optimal`) is the argmin of the loss over the runs
  that share a compute budget (an IsoFLOP profile), optionally refined by a parabola in log N;
  across budgets it follows N_opt(C) = k·C^e, fitted as a line in log-log space.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.optimize

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(x) = a·x^(−b) + c, fitted to `n_points` points.

    Attributes:
        a: scale (> 0).
        b: exponent; L falls as x^(−b) for b > 0 (a negative b is a growing law).
        c: irreducible term (0 for a pure power law).
        r2: coefficient of determination of log L against log of the fitted law,
            1 − Σ(log yᵢ − log L(xᵢ))² / Σ(log yᵢ − mean log y)².
        n_points: number of points in the fit.
    """

    a: float
    b: float
    c: float = 0.0
    r2: float = float("nan")
    n_points: int = 0

    def __call__(self, x: npt.ArrayLike) -> np.ndarray:
        """Evaluate a·x^(−b) + c elementwise (float64, same shape as x)."""
        x = np.asarray(x, np.float64)
        return self.a * x ** (-self.b) + self.c

    def label(self, variable: str = "N") -> str:
        """A short legend string, e.g. 'L = 3.1·N^−0.52 + 0.012'."""
        exponent = f"{-self.b:.3g}".replace("-", "−")
        text = f"{self.a:.3g}·{variable}^{exponent}"
        return f"L = {text} + {self.c:.3g}" if self.c > 0 else f"L = {text}"


def _validate(x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of the same length, got shapes {x.shape} and {y.shape}")
    if x.size < 3:
        raise ValueError(f"a power-law fit needs at least 3 points, got {x.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (drop diverged runs before fitting)")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError(f"x and y must be > 0 for a log-log fit; min x = {x.min():g}, min y = {y.min():g}")
    if np.ptp(x) == 0:
        raise ValueError("x needs at least two distinct values")
    return x, y


def _line(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Least-squares v ≈ intercept + slope·u."""
    u_mean, v_mean = u.mean(), v.mean()
    du = u - u_mean
    slope = float(np.dot(du, v - v_mean) / np.dot(du, du))
    return v_mean - slope * u_mean, slope


def _fit_given_c(log_x: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float, float]:
    """(a, b, sse): the log-log line through (log x, log(y − c)) and its residual in log y."""
    intercept, slope = _line(log_x, np.log(y - c))
    a, b = math.exp(intercept), -slope
    resid = np.log(y) - np.log(a * np.exp(-b * log_x) + c)
    return a, b, float(np.dot(resid, resid))


def _sse_given_cs(log_x: np.ndarray, y: np.ndarray, cs: np.ndarray) -> np.ndarray:
    """`_fit_given_c`'s sse for each c of cs (all < min y), vectorised: (n_c,)."""
    v = np.log(y[None, :] - cs[:, None])
    du = log_x - log_x.mean()
    slope = (v - v.mean(axis=1, keepdims=True)) @ du / np.dot(du, du)
    intercept = v.mean(axis=1) - slope * log_x.mean()
    law = np.exp(intercept[:, None] + slope[:, None] * log_x[None, :]) + cs[:, None]
    resid = np.log(y)[None, :] - np.log(law)
    return np.sum(resid * resid, axis=1)


def _golden_min(f: Callable[[float], float], lo: float, hi: float, *, tol: float) -> float:
    """Minimiser of a unimodal f on [lo, hi] by golden-section search."""
    x1, x2 = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    f1, f2 = f(x1), f(x2)
    while hi - lo > tol:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - _GOLDEN * (hi - lo)
            f1 = f(x1)
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + _GOLDEN * (hi - lo)
            f2 = f(x2)
    return 0.5 * (lo + hi)


def _log_grid_start(log_x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) of the profile search over c ∈ [0, min y): a grid over c / min(y) (uniform
    on [0, 1), plus points crowding 1), then golden-section refinement around the best point.
    A start for `_refine`; it cannot place c at or above min y (it takes log(y − c))."""
    y_min = float(y.min())

    def sse_at(t: float) -> float:
        return _fit_given_c(log_x, y, t * y_min)[2]

    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 401)[:-1], 1.0 - np.logspace(-9.0, -2.5, 60)]))
    values = _sse_given_cs(log_x, y, grid * y_min)
    i = int(np.argmin(values))
    lo = float(grid[max(i - 1, 0)])
    hi = float(grid[min(i + 1, grid.size - 1)])
    t_best = _golden_min(sse_at, lo, hi, tol=1e-13) if hi > lo else lo
    if sse_at(t_best) > values[i]:
        t_best = float(grid[i])
    a, b, _ = _fit_given_c(log_x, y, t_best * y_min)
    return a, b, t_best * y_min


def _log_residual(log_x: np.ndarray, log_y: np.ndarray, a: float, b: float, c: float) -> float:
    r = log_y - np.log(a * np.exp(-b * log_x) + c)
    return float(np.dot(r, r))


def _refine(log_x: np.ndarray, y: np.ndarray, start: tuple[float, float, float]) -> tuple[float, float, float]:
    """Bounded least squares of log y against log(a·x^(−b) + c) over (log a, b, c), c ≥ 0 and
    b keeping the sign of the start (b ≥ 0 for a falling law), from `start`; the start is kept
    when the solver does not improve on it."""
    log_y = np.log(y)
    a0, b0, c0 = start
    b_lo, b_hi = (0.0, np.inf) if b0 > 0 else (-np.inf, 0.0)

    def parts(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        term = np.exp(p[0] - p[1] * log_x)
        return term, term + p[2]

    def residual(p: np.ndarray) -> np.ndarray:
        return np.log(parts(p)[1]) - log_y

    def jacobian(p: np.ndarray) -> np.ndarray:
        term, law = parts(p)
        return np.stack([term / law, -log_x * term / law, 1.0 / law], axis=1)

    solution = scipy.optimize.least_squares(
        residual, np.array([math.log(a0), b0, c0]), jac=jacobian,
        bounds=([-np.inf, b_lo, 0.0], [np.inf, b_hi, np.inf]), method="trf", x_scale="jac",
        xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=2000,
    )
    a, b, c = math.exp(float(solution.x[0])), float(solution.x[1]), float(solution.x[2])
    if not (np.isfinite([a, b, c]).all() and _log_residual(log_x, log_y, a, b, c) <= _log_residual(log_x, log_y, a0, b0, c0)):
        return a0, b0, c0
    return a, b, c


def fit_power_law(x: npt.ArrayLike, y: npt.ArrayLike, *, irreducible: bool = True) -> PowerLaw:
    """Fit L(x) = a·x^(−b) + c to points (x, y) by least squares in log y.

    The residual is Σ(log yᵢ − log L(xᵢ))² (relative errors, so that losses spanning decades
    weigh alike). Without the irreducible term (c = 0) this is ordinary least squares of log y
    on log x, in closed form. With it, the fit is bounded nonlinear least squares
    (`scipy.optimize.least_squares`, trust-region reflective) over (log a, b, c) with a > 0,
    c ≥ 0 and b ≥ 0 (b ≤ 0 if the start below finds a growing law), started from a profile
    search: for each candidate c ∈ [0, min y) the line through (log x, log(y − c)) gives a and
    b, and c is chosen on a grid refined by golden-section search. The start cannot reach
    c ≥ min y, where noisy points near the floor put the best fit; the bounded solver can, and
    its residual is never above the start's.

    Args:
        x: (n,) positive abscissae (dictionary size, compute, ...), n ≥ 3, not all equal.
        y: (n,) positive losses.
        irreducible: fit the constant c (otherwise c = 0).

    Returns:
        The fitted `PowerLaw` (with r² in log space and n).

    Raises:
        ValueError: mismatched or non-1-D shapes, fewer than 3 points, non-finite or
            non-positive values, or all x equal.
    """
    x, y = _validate(x, y)
    log_x = np.log(x)
    if not irreducible:
        a, b, _ = _fit_given_c(log_x, y, 0.0)
        c = 0.0
    else:
        a, b, c = _refine(log_x, y, _log_grid_start(log_x, y))
    log_y = np.log(y)
    sse = _log_residual(log_x, log_y, a, b, c)
    sst = float(np.sum((log_y - log_y.mean()) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else (1.0 if sse <= 1e-24 else 0.0)
    return PowerLaw(a=float(a), b=float(b), c=float(c), r2=float(r2), n_points=int(x.size))


def sae_training_flops(d_in: int | float, d_sae: int | float, n_tokens: int | float) -> float:
    """Training FLOPs of an SAE: 12·d_in·d_sae·n_tokens.

    Per token the forward pass is two (d_in × d_sae) matrix–vector products, the encoder and the
    decoder, each d_in·d_sae multiply–adds = 2·d_in·d_sae FLOPs, so 4·d_in·d_sae. The backward
    pass costs about twice the forward (a gradient with respect to the activations and one with
    respect to the weights for each product), 8·d_in·d_sae, giving 12·d_in·d_sae per token.
    Biases, the nonlinearity, the sparsity penalty, TopK selection and decoder normalisation
    are O(d_in + d_sae) per token and are left out. (The same "6 × parameters × tokens" rule as
    for transformers, with 2·d_in·d_sae parameters.)
    """
    if d_in <= 0 or d_sae <= 0 or n_tokens < 0:
        raise ValueError(f"need d_in > 0, d_sae > 0, n_tokens ≥ 0; got {d_in}, {d_sae}, {n_tokens}")
    return 12.0 * float(d_in) * float(d_sae) * float(n_tokens)


@dataclasses.dataclass(frozen=True)
class ComputeOptimal:
    """The compute frontier of a set of runs and the fitted law N_opt(C) = k·C^e.

    Attributes:
        computes: (n_budget,) the distinct compute budgets, ascending.
        sizes: (n_budget,) the compute-optimal dictionary size per budget (the argmin run's
            size, or the parabola vertex with `refine=True`).
        losses: (n_budget,) the lowest loss per budget.
        indices: (n_budget,) int64 index into the input runs of the argmin run per budget.
        fit: N_opt(C) as a pure `PowerLaw` in the usual parametrisation a·C^(−b), i.e.
            k = fit.a and e = −fit.b; None with fewer than 3 budgets.
    """

    computes: np.ndarray
    sizes: np.ndarray
    losses: np.ndarray
    indices: np.ndarray
    fit: PowerLaw | None

    @property
    def exponent(self) -> float:
        """e in N_opt ∝ C^e (nan without a fit)."""
        return float("nan") if self.fit is None else -self.fit.b

    def optimal_size(self, compute: npt.ArrayLike) -> np.ndarray:
        """The fitted N_opt(C) = k·C^e."""
        if self.fit is None:
            raise ValueError("no fit: fewer than 3 compute budgets")
        return self.fit(compute)


def _group_budgets(computes: np.ndarray, rtol: float) -> list[np.ndarray]:
    order = np.argsort(computes, kind="stable")
    log_c = np.log(computes[order])
    breaks = np.nonzero(np.diff(log_c) > math.log1p(rtol))[0] + 1
    return np.split(order, breaks)


def compute_optimal(
    sizes: npt.ArrayLike,
    computes: npt.ArrayLike,
    losses: npt.ArrayLike,
    *,
    rtol: float = 1e-6,
    refine: bool = False,
) -> ComputeOptimal:
    """Compute-optimal dictionary size per compute budget, and its power law across budgets.

    Definition: runs whose compute agrees to relative tolerance `rtol` form one budget (an
    IsoFLOP profile; use `sae_training_flops` to set C). Within a budget the optimal run is the
    one with the lowest loss (ties to the smaller size). With `refine=True` and an optimum
    strictly inside its profile, the optimal size is instead the vertex of the parabola in
    log N through the optimum and its two neighbours in size (Chinchilla's approach 2 on a
    3-point stencil); the loss stays the argmin run's. N_opt(C) = k·C^e is then a least-squares
    line of log N_opt on log C over the budgets (needs ≥ 3 budgets, else `fit` is None).

    Args:
        sizes: (n_runs,) dictionary sizes N.
        computes: (n_runs,) training compute C in FLOPs.
        losses: (n_runs,) final losses L; non-finite runs are ignored.
        rtol: relative tolerance for two computes to count as one budget.
        refine: parabolic refinement of the optimum in log N.

    Returns:
        A `ComputeOptimal`.
    """
    sizes = np.asarray(sizes, np.float64)
    computes = np.asarray(computes, np.float64)
    losses = np.asarray(losses, np.float64)
    if not (sizes.ndim == computes.ndim == losses.ndim == 1 and sizes.shape == computes.shape == losses.shape):
        raise ValueError(
            f"sizes, computes, losses must be 1-D of one length; got {sizes.shape}, {computes.shape}, {losses.shape}"
        )
    if np.any(~np.isfinite(sizes)) or np.any(sizes <= 0) or np.any(~np.isfinite(computes)) or np.any(computes <= 0):
        raise ValueError("sizes and computes must be finite and > 0")
    keep = np.nonzero(np.isfinite(losses))[0]
    if keep.size == 0:
        raise ValueError("no run has a finite loss")
    budgets, best_sizes, best_losses, best_idx = [], [], [], []
    for group in _group_budgets(computes[keep], rtol):
        idx = keep[group]
        idx = idx[np.lexsort((sizes[idx], losses[idx]))]
        i_best = int(idx[0])
        n_best = sizes[i_best]
        if refine:
            profile = keep[group]
            profile = profile[np.argsort(sizes[profile], kind="stable")]
            pos = int(np.nonzero(profile == i_best)[0][0])
            if 0 < pos < profile.size - 1:
                u = np.log(sizes[profile[pos - 1 : pos + 2]])
                v = losses[profile[pos - 1 : pos + 2]]
                if np.all(np.diff(u) > 0):
                    curvature, slope, _ = np.polyfit(u, v, 2)
                    if curvature > 0:
                        n_best = float(np.exp(np.clip(-slope / (2.0 * curvature), u[0], u[2])))
        budgets.append(float(np.exp(np.mean(np.log(computes[keep[group]])))))
        best_sizes.append(float(n_best))
        best_losses.append(float(losses[i_best]))
        best_idx.append(i_best)
    budgets_arr = np.asarray(budgets)
    sizes_arr = np.asarray(best_sizes)
    fit = None
    if budgets_arr.size >= 3:
        fit = fit_power_law(budgets_arr, sizes_arr, irreducible=False)
    return ComputeOptimal(
        computes=budgets_arr,
        sizes=sizes_arr,
        losses=np.asarray(best_losses),
        indices=np.asarray(best_idx, np.int64),
        fit=fit,
    )


def loss_frontier(computes: npt.ArrayLike, losses: npt.ArrayLike) -> np.ndarray:
    """Indices of the runs on the loss–compute frontier, in ascending compute.

    A run is on the frontier when no run with compute ≤ its compute reaches a strictly lower
    loss (the running minimum of loss over compute; non-finite losses are skipped).

    Args:
        computes: (n_runs,) compute per run.
        losses: (n_runs,) loss per run.

    Returns:
        (n_frontier,) int64 indices.
    """
    computes = np.asarray(computes, np.float64)
    losses = np.asarray(losses, np.float64)
    if computes.ndim != 1 or computes.shape != losses.shape:
        raise ValueError(f"computes and losses must be 1-D of one length; got {computes.shape}, {losses.shape}")
    finite = np.nonzero(np.isfinite(losses) & np.isfinite(computes))[0]
    order = finite[np.lexsort((losses[finite], computes[finite]))]
    front, best = [], math.inf
    for i in order:
        if losses[i] < best:
            front.append(int(i))
            best = float(losses[i])
    return np.asarray(front, np.int64)
