"""Training an SAE on the engine: `sae_task` turns an architecture, a recipe and an activation
source into a `Task`, so a λ (or k) × seed × learning-rate sweep of one dictionary size trains
as one compiled, vmapped call (`make_trainer`, `run_sweep`).

The source is part of the task's `shared` argument (`{"source": ..., "statistics": ...}`, or a
`FedSource`'s own `shared`): every task function reads the activations through it (the engine
passes `shared=` to each), so no activation array is ever a constant of a compiled program,
whatever its size. The data statistics (input scale, b_dec's geometric median) are computed
once per task by one small program shared by every architecture on the same source, not inside
each sweep's vmapped init (a fed source's, which may differ per instance, are computed there).

The recipes (PAPERS.md §2), all inside the compiled loop:

* decoder constraint: with `unit_norm` the gradient component parallel to each decoder column
  is removed (`architectures.unit_norm_decoder`, chained before the optimizer) and the columns
  are renormalised after every update (2023 recipe, TopK, BatchTopK, JumpReLU, Gated 2023);
* April-2024 recipe (`recipe="2024"`, for the architectures whose `recipes` include it: relu
  and gated): no constraint, sparsity weighted by decoder norms, inputs scaled so that
  E‖x‖² = d_in, W_enc = W_decᵀ at norm 0.1, λ warm-up (`l1_warmup_steps`); its lr decay and
  gradient clipping are `OptimConfig(schedule="linear", decay_steps=..., clip_norm=1.0)` (see
  `recipe_optim`);
* dead latents: `TrainState.extra["since_fired"]` counts the steps since each latent last
  fired; a latent is dead after `dead_steps` steps without firing. Architectures with AuxK
  (TopK, BatchTopK) get the dead mask as `hp["dead"]`; with `resample_every` the others
  resample dead latents every that many steps (Anthropic, 2023): inputs drawn from the current
  batch with probability ∝ their squared reconstruction error², the dead decoder column set to
  the normalised input, the encoder row to it × 0.2 × the mean alive encoder norm, its biases
  zeroed and its optimizer moments reset;
* the architecture's running state (BatchTopK's inference threshold) is `extra["arch"]`;
* b_dec starts at the geometric median of a data sample (2023) or at zero (2024).

Dictionary-size sweeps in one program (pad and mask): train at `d_sae` = the largest size and
give each instance its size as the hyperparameter `n_latents` (`sae_hparams(..., n_latents=...)`);
only latents i < n_latents exist (see `architectures.base`). Masked latents never fire, never
count as dead (their `since_fired` stays 0), are never resampled, are left out of AuxK and of
the mean alive encoder norm, and receive no gradient, so their optimizer moments stay 0; the
first n_latents latents train exactly as a size-n_latents SAE does (to float32 rounding: the
padded reductions run over more, zero, terms). `SAE.from_sweep` drops the masked latents.

`TrainState.extra` holds `since_fired` (d_sae,), `resampled` (), `input_scale` () and `arch`
(the architecture's `init_state`). Per-instance hyperparameters (`sae_hparams`): the
architecture's swept coefficient (`l1_coefficient` or `k`), optionally `learning_rate`,
`k_aux`, `auxk_coefficient`, `bandwidth`, `n_latents`, ... Data statistics (input scale,
geometric median) use a fixed key, so every instance of a sweep sees the same ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from superpos_jax.config import (NonNegativeInt, PositiveFloat, PositiveInt, fail, in_range, non_negative, positive,
                                 validate)
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.task import Task
from superpos_jax.engine.trainer import TrainState, step_key
from superpos_jax.sae.architectures import Architecture, get, names, unit_norm_decoder
from superpos_jax.sae.architectures.base import latent_keys, latent_mask, reset_latents
from superpos_jax.sae.metrics import evaluate
from superpos_jax.sae.model import SAE
from superpos_jax.sae.sources import FedSource

_STATS_KEY = 20240401  # fixed: data statistics are the same for every instance
_RESAMPLE_SALT = 7


@dataclass(frozen=True)
class SAETraining:
    """Static description of what is trained (shapes and recipe; nothing here is swept).

    Attributes:
        architecture: a registered architecture name (`architectures.names()`).
        d_in, d_sae: input and dictionary sizes.
        batch_size: activations per step.
        recipe: "2023" or "2024" (the April-2024 update; only for architectures that list it
            in their `recipes`: relu, gated).
        dead_steps: steps without firing after which a latent counts as dead.
        resample_every: resample dead latents every this many steps (0: never; not for the
            AuxK architectures).
        resample_until: no resampling after this step (None: until the end); a latent
            resampled while the learning rate decays to 0 would never train.
        l1_warmup_steps: λ rises linearly from 0 over these steps (0: no warm-up).
        threshold_momentum: BatchTopK's running-threshold momentum.
        jumprelu_threshold: JumpReLU's initial threshold θ (Adam moves log θ by about the
            learning rate per step, so θ must start near the scale of the activations).
        stats_samples: activations used for the input scale and the geometric median.
        k_max: for topk/batchtopk, a static bound on every instance's k that switches on the sparse
            kernels (decode only the kept latents, sparse backward, AuxK only when a latent is
            dead; `architectures.ksparse`); None: the dense reference path.
    """

    architecture: str
    d_in: PositiveInt
    d_sae: PositiveInt
    batch_size: PositiveInt
    recipe: Literal["2023", "2024"] = "2023"
    dead_steps: PositiveInt = 1000
    resample_every: NonNegativeInt = 0
    resample_until: Annotated[int | None, non_negative] = None
    l1_warmup_steps: NonNegativeInt = 0
    threshold_momentum: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.01
    jumprelu_threshold: PositiveFloat = 0.001
    stats_samples: PositiveInt = 4096
    k_max: Annotated[int | None, positive] = None

    def __post_init__(self) -> None:
        validate(self)

    def check(self) -> None:
        """Constraints between fields (`config.validate` calls it)."""
        if self.architecture not in names():
            fail("architecture", self.architecture, f"a registered SAE architecture, one of {names()}")
        arch = get(self.architecture)
        if self.recipe not in arch.recipes:
            fail("recipe", self.recipe, f"one of {arch.recipes} for {self.architecture}")
        if self.k_max is not None and not arch.auxk:
            fail("k_max", self.k_max, "None: only the k-sparse architectures (topk, batchtopk) have sparse kernels")
        if self.resample_every and arch.auxk:
            fail("resample_every", self.resample_every, f"0: {self.architecture} handles dead latents with AuxK")

    @property
    def arch(self) -> Architecture:
        """The registered `Architecture`."""
        arch = get(self.architecture)
        return dataclasses.replace(arch, k_max=self.k_max) if self.k_max is not None else arch

    @property
    def april_2024(self) -> bool:
        """Whether the April-2024 recipe applies."""
        return self.recipe == "2024"

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
    learning_rate: npt.ArrayLike | float | None = None,
    **values: npt.ArrayLike | float,
) -> dict[str, np.ndarray]:
    """Per-instance hyperparameters (each a 1-D float32 array, broadcast to a common length).

    The architecture's swept coefficient (`training.arch.swept`: `l1_coefficient` for relu,
    jumprelu, gated; `k` for topk, batchtopk) is required and checked here (k in [1, d_sae],
    λ finite and ≥ 0), before anything compiles. `n_latents` (a dictionary-size sweep in one
    program: each instance's size, an integer in [1, d_sae]; k must not exceed it) is checked
    too; other keyword arguments (`k_aux`, `bandwidth`, ...) are passed through."""
    arch = training.arch
    if values.get(arch.swept) is None:
        raise ValueError(f"{arch.name} needs {arch.swept} (the coefficient its sweeps vary)")
    given: dict[str, Any] = {name: v for name, v in values.items() if v is not None}
    arch.check_swept(np.atleast_1d(np.asarray(given[arch.swept], np.float32)), training.d_sae)
    if "n_latents" in given:
        sizes = np.atleast_1d(np.asarray(given["n_latents"], np.float64))
        if np.any(~np.isfinite(sizes)) or np.any(sizes != np.round(sizes)) or np.any(sizes < 1) \
                or np.any(sizes > training.d_sae):
            raise ValueError(f"n_latents must be integers in [1, d_sae={training.d_sae}], got {sizes.tolist()}")
    if learning_rate is not None:
        lr = np.atleast_1d(np.asarray(learning_rate, np.float32))
        if np.any(~(lr > 0)):
            raise ValueError(f"learning_rate must be > 0, got {lr.tolist()}")
        given["learning_rate"] = lr
    arrays = {name: np.atleast_1d(np.asarray(v, np.float32)) for name, v in given.items()}
    n = max(a.shape[0] for a in arrays.values())
    try:
        out = {name: np.broadcast_to(a, (n,)).copy() for name, a in arrays.items()}
    except ValueError as err:
        shapes = {name: a.shape for name, a in arrays.items()}
        raise ValueError(f"hyperparameters must broadcast to one instance axis, got {shapes}") from err
    if "n_latents" in out and "k" in out and np.any(out["k"] > out["n_latents"]):
        bad = np.flatnonzero(out["k"] > out["n_latents"])
        raise ValueError(f"k must not exceed n_latents; instances {bad.tolist()} have k="
                         f"{out['k'][bad].tolist()} > n_latents={out['n_latents'][bad].tolist()}")
    return out


def _scale(d_in: int, x: Float[Array, "n d_in"]) -> Float[Array, ""]:
    return jnp.sqrt(d_in / jnp.maximum(jnp.mean(jnp.sum(jnp.square(x), axis=-1)), 1e-12))


def input_scale(training: SAETraining, x: Float[Array, "n d_in"]) -> Float[Array, ""]:
    """The factor s with E‖s x‖² = d_in over the statistics rows x (1 outside April 2024)."""
    return _scale(training.d_in, x) if training.april_2024 else jnp.float32(1.0)


def _statistics_of(april_2024: bool, d_in: int, x: Float[Array, "n d_in"]) -> dict[str, Array]:
    """What an SAE starts from, given the statistics rows x: the input scale (April 2024) or
    b_dec's geometric median (2023)."""
    return {"input_scale": _scale(d_in, x)} if april_2024 else {"b_dec": geometric_median(x)}


@partial(jax.jit, static_argnums=(0, 1, 2))
def _data_statistics(april_2024: bool, d_in: int, n: int, source: Any) -> dict[str, Array]:
    """`_statistics_of` n rows of `source` drawn with the fixed key: one program per source
    type, shapes and recipe, shared by every architecture and instance that trains on it."""
    return _statistics_of(april_2024, d_in, source.sample(jax.random.key(_STATS_KEY), n))


def sae_task(training: SAETraining, source: Any) -> Task:
    """The `Task` that trains SAEs of `training` on activations from `source` (an activation
    source of `superpos_jax.sae.sources` with `d_in == training.d_in`, or a `FedSource`). The
    source (with the data statistics, computed here once) is the task's `shared`, or a
    `FedSource`'s own `shared`: every function below reads it from its `shared` argument. A
    `FedSource`'s `feed` runs once per step for all instances (`Task.feed`) and its host
    `stream`, if any, is read per compiled call (`Task.stream`)."""
    arch = training.arch
    width = arch.row_width(training.d_in)  # a transcoder's rows are [x | y]
    if int(source.d_in) != width:
        raise ValueError(f"the source gives d_in={source.d_in} but the SAE expects d_in={width}"
                         + (f" (rows [x | y] of a d_in={training.d_in} {arch.name})" if width != training.d_in else ""))
    fed = isinstance(source, FedSource)
    given = getattr(source, "batch_size", training.batch_size) if fed else training.batch_size
    if given != training.batch_size:
        raise ValueError(f"the source gives batches of {given} rows but the SAE trains on batch_size={training.batch_size}")

    def statistics(hparams: dict, shared: Any) -> dict[str, Array]:
        if not fed:  # computed once, before the sweep (`_data_statistics`)
            return shared["statistics"]
        # a fed source's rows may depend on the instance (e.g. its layer): per instance, here
        x = source.stats(jax.random.key(_STATS_KEY), training.stats_samples, hparams, shared)
        return _statistics_of(training.april_2024, training.d_in, x)

    def init(hparams: dict, *, key: PRNGKeyArray, shared: Any) -> Any:
        b_dec = None if training.april_2024 else statistics(hparams, shared)["b_dec"]
        return arch.init(training.d_in, training.d_sae, key=key, recipe=training.recipe, b_dec=b_dec,
                         threshold=training.jumprelu_threshold)

    def init_extra(params: Any, hparams: dict, *, shared: Any) -> dict[str, Any]:
        scale = statistics(hparams, shared)["input_scale"] if training.april_2024 else jnp.float32(1.0)
        return {
            "since_fired": jnp.zeros(training.d_sae, jnp.int32),
            "resampled": jnp.int32(0),
            "input_scale": scale,
            "arch": arch.init_state(params),
        }

    def prepare(hparams: dict, state: TrainState, *, shared: Any) -> dict:
        hp = dict(hparams)
        hp["input_scale"] = state.extra["input_scale"]
        hp["decoder_norm_l1"] = jnp.float32(1.0 if training.april_2024 else 0.0)
        hp["threshold_momentum"] = jnp.float32(training.threshold_momentum)
        if training.l1_warmup_steps and "l1_coefficient" in hp:
            ramp = jnp.minimum((state.step + 1).astype(jnp.float32) / training.l1_warmup_steps, 1.0)
            hp["l1_coefficient"] = hp["l1_coefficient"] * ramp
        if arch.auxk:
            hp["dead"] = (state.extra["since_fired"] >= training.dead_steps) & latent_mask(hp, training.d_sae)
        return hp

    def sample(hparams: dict, *, key: PRNGKeyArray, shared: Any, data: Any = None) -> Array:
        if fed:
            return source.take(data, key, training.batch_size, hparams, shared) * hparams["input_scale"]
        return shared["source"].sample(key, training.batch_size) * hparams["input_scale"]

    def loss(params: Any, x: Array, hparams: dict, *, shared: Any) -> tuple[Array, dict[str, Array]]:
        return arch.loss(params, x, hparams)

    def after_update(state: TrainState, x: Array, aux: dict, hparams: dict, *, shared: Any) -> TrainState:
        extra = dict(state.extra)
        params, extra["arch"] = arch.after_update(state.params, extra["arch"], aux, hparams, unit_norm=training.unit_norm)
        exists = latent_mask(hparams, training.d_sae)
        fired = aux["fired"] if "fired" in aux else jnp.any(aux["f"] > 0, axis=0)
        fired = fired | ~exists  # a masked latent is never dead
        extra["since_fired"] = jnp.where(fired, 0, extra["since_fired"] + 1)
        opt_state = state.opt_state
        if training.resample_every:
            due = state.step % training.resample_every == 0
            if training.resample_until is not None:
                due = due & (state.step <= training.resample_until)
            dead = due & (extra["since_fired"] >= training.dead_steps) & exists
            key = step_key(state, _RESAMPLE_SALT)
            params, opt_state = resample(arch, params, opt_state, dead, x, aux["sq_err"], key=key, exists=exists)
            extra["since_fired"] = jnp.where(dead, 0, extra["since_fired"])
            extra["resampled"] = extra["resampled"] + jnp.sum(dead).astype(jnp.int32)
        return TrainState(params, opt_state, state.step, state.key, extra)

    def transform(hparams: dict, *, shared: Any) -> Any:
        return unit_norm_decoder()

    def feed(step: Array, streamed: Any, *, shared: Any) -> Any:
        return source.feed(step, streamed, shared)

    if fed:
        shared_arrays = source.shared
        if shared_arrays is None:
            raise ValueError("a FedSource needs `shared` arrays (at least the rows its `stats` reads)")
    else:
        stats = _data_statistics(training.april_2024, training.d_in, training.stats_samples, source)
        shared_arrays = {"source": source, "statistics": stats}
    return Task(
        init=init, sample=sample, loss=loss, has_aux=True, shared=shared_arrays,
        transform=transform if training.unit_norm else None,
        init_extra=init_extra, prepare=prepare, after_update=after_update,
        feed=feed if fed else None, stream=source.stream if fed else None,
        feed_every=source.feed_every if fed else 1,
    )


def resample(
    arch: Architecture,
    params: Any,
    opt_state: PyTree,
    dead: Bool[Array, " sae"],
    x: Float[Array, "batch d_in"],
    sq_err: Float[Array, " batch"],
    *,
    key: PRNGKeyArray,
    exists: Bool[Array, " sae"] | None = None,
) -> tuple[Any, PyTree]:
    """Anthropic's (2023) resampling of the latents in `dead` (one instance; a no-op where
    `dead` is all False).

    Each dead latent i draws an input x_j with probability ∝ sq_err_j² (uniformly if every
    error is 0), from its own key `fold_in(key, i)`; W_dec[:, i] = x_j/‖x_j‖, W_enc[i] = 0.2 ·
    mean alive ‖W_enc row‖ · x_j/‖x_j‖, its biases zeroed (`arch.resample`); every optimizer
    moment of latent i (in any node of `opt_state` shaped like the params) is reset to 0.
    `exists` (default: every latent) marks the latents of a padded dictionary that exist; the
    others are neither alive nor dead (`dead` must not include them).
    """
    d_sae = params.W_dec.shape[1]
    weight = jnp.square(sq_err)
    total = jnp.sum(weight)
    p = jnp.where(total > 0, weight / jnp.where(total > 0, total, 1.0), 1.0 / weight.shape[0])
    rows = jax.vmap(lambda k: jax.random.choice(k, x.shape[0], p=p))(latent_keys(key, d_sae))
    chosen = x[rows]
    direction = chosen / jnp.maximum(jnp.linalg.norm(chosen, axis=-1, keepdims=True), 1e-12)
    enc_norm = jnp.linalg.norm(params.W_enc, axis=-1)
    alive = ~dead if exists is None else exists & ~dead
    n_alive = jnp.sum(alive.astype(jnp.float32))
    mean_alive = jnp.where(n_alive > 0, jnp.sum(jnp.where(alive, enc_norm, 0.0)) / jnp.maximum(n_alive, 1.0), 1.0)
    new = arch.resample(params, dead, direction, 0.2 * mean_alive)
    like = type(params)

    def reset(node: Any) -> Any:
        return reset_latents(node, dead) if type(node) is like else node

    return new, jax.tree.map(reset, opt_state, is_leaf=lambda n: type(n) is like)


def batched_evaluate(
    training: SAETraining, state: TrainState, x: Float[npt.ArrayLike, "batch d_in"], hparams: dict
) -> dict[str, np.ndarray]:
    """`metrics.evaluate` of every instance of a batched (host or device) sweep state, on the
    same raw activations x (host or device)."""
    x = jnp.asarray(x, jnp.float32)
    hp = {k: jnp.asarray(v) for k, v in hparams.items()}
    out = _evaluate_all(training, jax.tree.map(jnp.asarray, state.params), jax.tree.map(jnp.asarray, state.extra), x, hp)
    return jax.tree.map(np.asarray, out)


@partial(jax.jit, static_argnums=0)
def _evaluate_all(training: SAETraining, params: Any, extra: dict, x: Array, hparams: dict) -> dict[str, Array]:
    return jax.vmap(lambda p, e, h: evaluate(SAE.from_training(training, p, h, e), x))(params, extra, hparams)


def firing_observer(
    training: SAETraining, source: Any, x_eval: Float[npt.ArrayLike, "*set batch d_in"], *, dense_above: float = 0.1,
    by: str | None = None,
) -> Any:
    """An `observe` for `make_trainer(sae_task(training, source), ..., observe=...)`: at the end of
    every log window, the dead and dense fractions of the existing latents on the fixed rows
    `x_eval` (raw activations, e.g. a few thousand held-out rows; they become a constant of the
    compiled program, so keep them small). The window is those rows: dead = fires on none of them,
    dense = fires on more than `dense_above` of them, latents encoded as in training (`arch.encode`
    on the rows times the task's input scale). The trainer's `observe` sees params and hparams,
    not `TrainState.extra`, so the training-batch `since_fired` count is not what is logged.

    Args:
        x_eval: (batch, d_in), or (n_sets, batch, d_in) with `by`: an instance reads the set
            `hparams[by]` (e.g. its layer's rows, `by="hook"` for `lm.feed.LMActivations`).
        by: see `x_eval`.

    Returns `(params, hparams) -> {"dead_fraction": (), "dense_fraction": ()}` for one instance.
    With the April-2024 recipe the input scale is the source's data statistic, so the source must
    not be a `FedSource` (whose statistics may differ per instance) there."""
    if training.april_2024 and isinstance(source, FedSource):
        raise ValueError("firing_observer needs a source with fixed data statistics for the April-2024 recipe, "
                         "not a FedSource")
    arch, d_sae = training.arch, training.d_sae
    scale = _data_statistics(training.april_2024, training.d_in, training.stats_samples, source)["input_scale"] \
        if training.april_2024 else jnp.float32(1.0)
    x_all = jnp.asarray(x_eval, jnp.float32) * scale
    if x_all.ndim != (2 if by is None else 3):
        raise ValueError(f"x_eval must be (batch, d_in){' or, with by, (n_sets, batch, d_in)' if by else ''}, "
                         f"got shape {x_all.shape}")

    def observe(params: Any, hparams: dict) -> dict[str, Array]:
        x = x_all if by is None else x_all[jnp.asarray(hparams[by]).astype(jnp.int32)]
        exists = latent_mask(hparams, d_sae)
        rate = jnp.mean((arch.encode(params, x, hparams) > 0).astype(jnp.float32), axis=0)
        n = jnp.maximum(jnp.sum(exists), 1).astype(jnp.float32)
        return {"dead_fraction": jnp.sum(exists & (rate == 0)).astype(jnp.float32) / n,
                "dense_fraction": jnp.sum(exists & (rate > dense_above)).astype(jnp.float32) / n}

    return observe
