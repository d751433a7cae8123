"""Training an SAE on the engine: `sae_task` turns an architecture, a recipe and an activation
source into a `train.Task`, so a λ (or k) × seed × learning-rate sweep of one dictionary size
trains as one compiled, vmapped call (`make_trainer`, `run_sweep`).

The recipes (PAPERS.md §2), all inside the compiled loop:

* decoder constraint: with `unit_norm` the gradient component parallel to each decoder column
  is removed (`models.sae.unit_norm_decoder`, chained before the optimizer) and the columns
  are renormalised after every update (2023 recipe, TopK, BatchTopK, JumpReLU, Gated 2023);
* April-2024 recipe (`recipe="2024"`, relu and gated): no constraint, sparsity weighted by
  decoder norms, inputs scaled so that E‖x‖² = d_in, W_enc = W_decᵀ at norm 0.1, λ warm-up
  (`l1_warmup_steps`); its lr decay and gradient clipping are `OptimConfig(schedule="linear",
  decay_steps=..., clip_norm=1.0)` (see `recipe_optim`);
* dead latents: `TrainState.extra["since_fired"]` counts the steps since each latent last
  fired; a latent is dead after `dead_steps` steps without firing. TopK and BatchTopK get the
  dead mask for AuxK; with `resample_every` the other kinds resample dead latents every that
  many steps (Anthropic, 2023): inputs drawn from the current batch with probability ∝ their
  squared reconstruction error², the dead decoder column set to the normalised input, the
  encoder row to it × 0.2 × the mean alive encoder norm, its biases zeroed and its Adam
  moments reset;
* BatchTopK's inference threshold is a running average kept in `extra["threshold"]`;
* b_dec starts at the geometric median of a data sample (2023) or at zero (2024).

Per-instance hyperparameters (`sae_hparams`): `l1_coefficient` (relu, jumprelu, gated), `k`
(topk, batchtopk), optionally `learning_rate`, `k_aux`, `auxk_coefficient`, `bandwidth`.
Data statistics (input scale, geometric median) use a fixed key, so every instance of a sweep
sees the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from superpos_jax.sae import architectures as sae
from superpos_jax.sae.architectures import SAEParams
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.task import Task
from superpos_jax.engine.trainer import TrainState, step_key

TOPK_FAMILY: tuple[str, ...] = ("topk", "batchtopk")
_STATS_KEY = 20240401  # fixed: data statistics are the same for every instance
_RESAMPLE_SALT = 7


@dataclass(frozen=True)
class SAETraining:
    """Static description of what is trained (shapes and recipe; nothing here is swept).

    Attributes:
        kind: one of `models.sae.SAE_KINDS`.
        d_in, d_sae: input and dictionary sizes.
        batch_size: activations per step.
        recipe: "2023" or "2024" (the latter only changes relu and gated).
        dead_steps: steps without firing after which a latent counts as dead.
        resample_every: resample dead latents every this many steps (0: never; not for the
            TopK family, which uses AuxK).
        resample_until: no resampling after this step (None: until the end); a latent
            resampled while the learning rate decays to 0 would never train.
        l1_warmup_steps: λ rises linearly from 0 over these steps (0: no warm-up).
        threshold_momentum: BatchTopK's running-threshold momentum.
        jumprelu_threshold: JumpReLU's initial threshold θ (Adam moves log θ by about the
            learning rate per step, so θ must start near the scale of the activations).
        stats_samples: activations used for the input scale and the geometric median.
    """

    kind: str
    d_in: int
    d_sae: int
    batch_size: int
    recipe: Literal["2023", "2024"] = "2023"
    dead_steps: int = 1000
    resample_every: int = 0
    resample_until: int | None = None
    l1_warmup_steps: int = 0
    threshold_momentum: float = 0.01
    jumprelu_threshold: float = 0.001
    stats_samples: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in sae.SAE_KINDS:
            raise ValueError(f"unknown SAE kind {self.kind!r}; choose from {sae.SAE_KINDS}")
        if self.recipe not in sae.RECIPES:
            raise ValueError(f"recipe must be one of {sae.RECIPES}, got {self.recipe!r}")
        for name in ("d_in", "d_sae", "batch_size", "dead_steps", "stats_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("resample_every", "l1_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.resample_every and self.kind in TOPK_FAMILY:
            raise ValueError(f"{self.kind} handles dead latents with AuxK; set resample_every=0")
        if self.resample_until is not None and self.resample_until < 0:
            raise ValueError(f"resample_until must be >= 0, got {self.resample_until}")
        if not self.jumprelu_threshold > 0:
            raise ValueError(f"jumprelu_threshold must be > 0, got {self.jumprelu_threshold}")
        if not 0.0 < self.threshold_momentum <= 1.0:
            raise ValueError(f"threshold_momentum must be in (0, 1], got {self.threshold_momentum}")

    @property
    def april_2024(self) -> bool:
        """Whether the April-2024 recipe applies (relu or gated with recipe "2024")."""
        return self.recipe == "2024" and self.kind in ("relu", "gated")

    @property
    def unit_norm(self) -> bool:
        """Whether decoder columns are held at unit norm."""
        return not self.april_2024


def recipe_optim(
    training: SAETraining, n_steps: int, learning_rate: float, *, decay_fraction: float = 0.2
) -> OptimConfig:
    """The optimizer of a recipe: plain Adam (2023, TopK, JumpReLU); for April 2024, Adam with
    the learning rate decayed linearly to 0 over the last `decay_fraction` of the steps and
    gradients clipped at global norm 1."""
    if not training.april_2024:
        return OptimConfig(name="adam", learning_rate=learning_rate)
    decay = max(1, int(round(decay_fraction * n_steps)))
    return OptimConfig(
        name="adam", learning_rate=learning_rate, schedule="linear", total_steps=n_steps,
        decay_steps=decay, clip_norm=1.0,
    )


def geometric_median(
    x: Float[Array, "n d"], *, n_iter: int = 64, eps: float = 1e-6
) -> Float[Array, " d"]:
    """The point minimising Σ_n ‖x_n − m‖ (Weiszfeld's iterations from the mean; a fixed
    number of iterations, so it jits)."""

    def update(m: Array, _: None) -> tuple[Array, None]:
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - m[None, :], axis=-1), eps)
        return jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w), None

    m, _ = jax.lax.scan(update, jnp.mean(x, axis=0), None, length=n_iter)
    return m


def sae_hparams(
    training: SAETraining,
    *,
    l1_coefficient: npt.ArrayLike | float | None = None,
    k: npt.ArrayLike | float | None = None,
    learning_rate: npt.ArrayLike | float | None = None,
    **extra: npt.ArrayLike | float,
) -> dict[str, np.ndarray]:
    """Per-instance hyperparameters (each a 1-D array, broadcast to a common length).

    The kind's own coefficient is required (`l1_coefficient` for relu/jumprelu/gated, `k` for
    topk/batchtopk; k ≥ 1 and λ ≥ 0 are checked here, before anything compiles)."""
    given: dict[str, Any] = dict(extra)
    if training.kind in TOPK_FAMILY:
        if k is None:
            raise ValueError(f"{training.kind} needs k (active latents per example)")
        k_arr = np.atleast_1d(np.asarray(k, np.float32))
        if np.any(k_arr < 1) or np.any(k_arr > training.d_sae):
            raise ValueError(f"k must be in [1, d_sae={training.d_sae}], got {k_arr.tolist()}")
        given["k"] = k_arr
    else:
        if l1_coefficient is None:
            raise ValueError(f"{training.kind} needs l1_coefficient (λ)")
        lam = np.atleast_1d(np.asarray(l1_coefficient, np.float32))
        if np.any(~np.isfinite(lam)) or np.any(lam < 0):
            raise ValueError(f"l1_coefficient must be finite and >= 0, got {lam.tolist()}")
        given["l1_coefficient"] = lam
    if learning_rate is not None:
        lr = np.atleast_1d(np.asarray(learning_rate, np.float32))
        if np.any(~(lr > 0)):
            raise ValueError(f"learning_rate must be > 0, got {lr.tolist()}")
        given["learning_rate"] = lr
    arrays = {name: np.atleast_1d(np.asarray(v, np.float32)) for name, v in given.items()}
    n = max(a.shape[0] for a in arrays.values())
    try:
        return {name: np.broadcast_to(a, (n,)).copy() for name, a in arrays.items()}
    except ValueError as err:
        shapes = {name: a.shape for name, a in arrays.items()}
        raise ValueError(f"hyperparameters must broadcast to one instance axis, got {shapes}") from err


def input_scale(training: SAETraining, source: Any) -> Float[Array, ""]:
    """The factor s with E‖s x‖² = d_in on a sample of the source (1 outside April 2024)."""
    if not training.april_2024:
        return jnp.float32(1.0)
    x = source.sample(jax.random.key(_STATS_KEY), training.stats_samples)
    return jnp.sqrt(training.d_in / jnp.maximum(jnp.mean(jnp.sum(jnp.square(x), axis=-1)), 1e-12))


def sae_task(training: SAETraining, source: Any) -> Task:
    """The `Task` that trains SAEs of `training` on activations from `source` (an activation
    source of `superpos_jax.sae.sources` with `d_in == training.d_in`)."""
    if int(source.d_in) != training.d_in:
        raise ValueError(f"the source gives d_in={source.d_in} but the SAE expects d_in={training.d_in}")
    kind = training.kind

    def init(hparams: dict, *, key: PRNGKeyArray, shared: Any) -> SAEParams:
        b_dec = None
        if training.recipe == "2023" or kind not in ("relu", "gated"):
            x = shared.sample(jax.random.key(_STATS_KEY), training.stats_samples)
            b_dec = geometric_median(x)
        return sae.init_sae(kind, training.d_in, training.d_sae, key=key, recipe=_init_recipe(training), b_dec=b_dec,
                            threshold=training.jumprelu_threshold)

    def init_extra(params: SAEParams, hparams: dict) -> dict[str, Array]:
        return {
            "since_fired": jnp.zeros(training.d_sae, jnp.int32),
            "threshold": jnp.float32(0.0),
            "resampled": jnp.int32(0),
            "input_scale": input_scale(training, source),
        }

    def prepare(hparams: dict, state: TrainState) -> dict:
        hp = dict(hparams)
        hp["input_scale"] = state.extra["input_scale"]
        hp["decoder_norm_l1"] = jnp.float32(1.0 if training.april_2024 else 0.0)
        if training.l1_warmup_steps and "l1_coefficient" in hp:
            ramp = jnp.minimum((state.step + 1).astype(jnp.float32) / training.l1_warmup_steps, 1.0)
            hp["l1_coefficient"] = hp["l1_coefficient"] * ramp
        if kind in TOPK_FAMILY:
            hp["dead"] = state.extra["since_fired"] >= training.dead_steps
        return hp

    def sample(hparams: dict, *, key: PRNGKeyArray, shared: Any) -> Array:
        return shared.sample(key, training.batch_size) * hparams["input_scale"]

    def loss(params: SAEParams, x: Array, hparams: dict) -> tuple[Array, dict[str, Array]]:
        return sae.loss(kind, params, x, hparams)

    def after_update(state: TrainState, x: Array, aux: dict, hparams: dict) -> TrainState:
        params = sae.project_decoder(state.params) if training.unit_norm else state.params
        extra = dict(state.extra)
        fired = jnp.any(aux["f"] > 0, axis=0)
        extra["since_fired"] = jnp.where(fired, 0, extra["since_fired"] + 1)
        if kind == "batchtopk":
            extra["threshold"] = sae.batchtopk_threshold_update(extra["threshold"], aux["f"], training.threshold_momentum)
        opt_state = state.opt_state
        if training.resample_every:
            due = state.step % training.resample_every == 0
            if training.resample_until is not None:
                due = due & (state.step <= training.resample_until)
            dead = due & (extra["since_fired"] >= training.dead_steps)
            key = step_key(state, _RESAMPLE_SALT)
            params, opt_state = resample(params, opt_state, dead, x, aux["sq_err"], key=key)
            extra["since_fired"] = jnp.where(dead, 0, extra["since_fired"])
            extra["resampled"] = extra["resampled"] + jnp.sum(dead).astype(jnp.int32)
        return TrainState(params, opt_state, state.step, state.key, extra)

    transform = (lambda hparams: sae.unit_norm_decoder()) if training.unit_norm else None
    return Task(
        init=init, sample=sample, loss=loss, has_aux=True, shared=source, transform=transform,
        init_extra=init_extra, prepare=prepare, after_update=after_update,
    )


def _init_recipe(training: SAETraining) -> str:
    return "2024" if training.april_2024 else "2023"


def resample(
    params: SAEParams,
    opt_state: PyTree,
    dead: Bool[Array, " sae"],
    x: Float[Array, "batch d_in"],
    sq_err: Float[Array, " batch"],
    *,
    key: PRNGKeyArray,
) -> tuple[SAEParams, PyTree]:
    """Anthropic's (2023) resampling of the latents in `dead` (one instance; a no-op where
    `dead` is all False).

    Each dead latent i draws an input x_j with probability ∝ sq_err_j² (uniformly if every
    error is 0); W_dec[:, i] = x_j/‖x_j‖, W_enc[i] = 0.2 · mean alive ‖W_enc row‖ · x_j/‖x_j‖,
    b_enc[i] = 0 (and the gated magnitude path's r_mag[i], b_mag[i] = 0); every optimizer
    moment of latent i (in any `SAEParams`-shaped node of `opt_state`) is reset to 0.
    """
    weight = jnp.square(sq_err)
    total = jnp.sum(weight)
    p = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 1.0 / weight.shape[0])
    rows = jax.random.choice(key, x.shape[0], (params.W_dec.shape[1],), p=p)
    chosen = x[rows]
    direction = chosen / jnp.maximum(jnp.linalg.norm(chosen, axis=-1, keepdims=True), 1e-12)
    enc_norm = jnp.linalg.norm(params.W_enc, axis=-1)
    alive = ~dead
    n_alive = jnp.sum(alive.astype(jnp.float32))
    mean_alive = jnp.where(n_alive > 0, jnp.sum(jnp.where(alive, enc_norm, 0.0)) / jnp.maximum(n_alive, 1.0), 1.0)
    col = dead[None, :]
    row = dead[:, None]
    new = SAEParams(
        W_enc=jnp.where(row, 0.2 * mean_alive * direction, params.W_enc),
        b_enc=jnp.where(dead, 0.0, params.b_enc),
        W_dec=jnp.where(col, direction.T, params.W_dec),
        b_dec=params.b_dec,
        log_threshold=params.log_threshold,
        r_mag=jnp.where(dead, 0.0, params.r_mag),
        b_mag=jnp.where(dead, 0.0, params.b_mag),
    )

    def reset(node: Any) -> Any:
        if not isinstance(node, SAEParams):
            return node
        return SAEParams(
            W_enc=jnp.where(row, 0.0, node.W_enc),
            b_enc=jnp.where(dead, 0.0, node.b_enc),
            W_dec=jnp.where(col, 0.0, node.W_dec),
            b_dec=node.b_dec,
            log_threshold=jnp.where(dead, 0.0, node.log_threshold),
            r_mag=jnp.where(dead, 0.0, node.r_mag),
            b_mag=jnp.where(dead, 0.0, node.b_mag),
        )

    opt_state = jax.tree.map(reset, opt_state, is_leaf=lambda n: isinstance(n, SAEParams))
    return new, opt_state


def inference_encode(
    training: SAETraining, params: SAEParams, extra: dict, x: Float[Array, "batch d_in"], hparams: dict
) -> Float[Array, "batch sae"]:
    """Latents of one trained SAE on (already scaled) inputs, as used at inference:
    BatchTopK becomes a JumpReLU at its running threshold, every other kind encodes as in
    training."""
    if training.kind == "batchtopk":
        return sae.batchtopk_inference_encode(params, x, extra["threshold"])
    return sae.encode(training.kind, params, x, hparams)


def evaluate(
    training: SAETraining, params: SAEParams, extra: dict, x: Float[Array, "batch d_in"], hparams: dict
) -> dict[str, Array]:
    """Held-out metrics of one SAE on raw activations x (scaled here as in training):
    `l0`, `mse` (per example, summed over d_in, in the raw units), `fvu`, and per-latent
    `fired` counts (d_sae,)."""
    scale = extra["input_scale"]
    xs = x * scale
    f = inference_encode(training, params, extra, xs, hparams)
    x_hat = sae.decode(params, f) / scale
    err = jnp.sum(jnp.square(x - x_hat), axis=-1)
    var = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return {
        "l0": jnp.mean(jnp.sum((f > 0).astype(jnp.float32), axis=-1)),
        "mse": jnp.mean(err),
        "fvu": jnp.sum(err) / jnp.maximum(var, 1e-12),
        "fired": jnp.sum((f > 0).astype(jnp.int32), axis=0),
    }


def batched_evaluate(
    training: SAETraining, state: TrainState, x: Float[npt.ArrayLike, "batch d_in"], hparams: dict
) -> dict[str, np.ndarray]:
    """`evaluate` for every instance of a batched (host or device) state, on the same x
    (host or device)."""
    x = jnp.asarray(x, jnp.float32)
    hp = {k: jnp.asarray(v) for k, v in hparams.items()}
    out = _evaluate_all(training, jax.tree.map(jnp.asarray, state.params), jax.tree.map(jnp.asarray, state.extra), x, hp)
    return jax.tree.map(np.asarray, out)


@partial(jax.jit, static_argnums=0)
def _evaluate_all(training: SAETraining, params: SAEParams, extra: dict, x: Array, hparams: dict) -> dict[str, Array]:
    return jax.vmap(lambda p, e, h: evaluate(training, p, e, x, h))(params, extra, hparams)


def decoder_directions(params: SAEParams) -> Float[Array, "d_in sae"]:
    """Unit-norm decoder columns (the learned dictionary), (d_in, d_sae) for one SAE."""
    W = params.W_dec
    return W / jnp.maximum(jnp.linalg.norm(W, axis=0, keepdims=True), 1e-12)

