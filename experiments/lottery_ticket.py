"""Lottery tickets in toy models of superposition: iterative magnitude pruning with rewinding.

Frankle & Carbin (2019) find that the smallest-magnitude weights of a trained network can be
removed and the surviving sub-network ("winning ticket") trained again from its original
initialisation to the dense network's loss, while the same sub-network from a fresh random
initialisation does worse; Frankle et al. (2020) rewind the survivors to an early iterate θ_k
instead of θ_0. Here the network is the ReLU-output toy model x̂ = ReLU(WᵀW x + b) with
n features in m dimensions and importance `importance_base`^i, at several sparsities, and the
question is also whether the ticket keeps the dense model's superposition geometry: the same
features represented (‖W_i‖ > 0.5), the same WᵀW, the same dimensionalities D_i.

Procedure (iterative, `n_rounds` rounds per prune rate p):

1. Dense: train every (sparsity, seed) from θ_0 for `n_steps`; record θ_k (k = `rewind_step`).
2. Round r = 1 … R: prune, globally over W per instance, the p-fraction smallest |W| among the
   weights the round-(r−1) ticket kept (round 0: the dense model); keep_count =
   round(m·n·(1−p)^r), at least one. The ticket restarts from θ_k ⊙ mask (bias b_k); its
   control, the same mask, from a fresh Xavier-normal W (a new draw each round) and zero bias.
   Both train for `n_steps − rewind_step` steps (so a ticket has had as many updates as the
   dense model; the optimizer state restarts at the rewind), with the dense run's per-seed data
   keys, so ticket and control differ only in their initial weights. The bias b is never pruned.

Every round is ONE vmapped sweep over prune_rate × feature_probability × seed × init
{rewind, reinit}: the masks and initial weights are traced hparams (`toy.pruning.masked_toy_task`),
not constants. Pruned weights stay exactly 0 (masked loss, masked gradients, W ⊙ mask after
each AdamW update). Final losses are the mean training loss over the last 5 % of steps.

Geometry kept, per instance against the dense model of the same (sparsity, seed): the Jaccard
index of the represented sets, the relative Gram distance ‖WᵀW − W_dᵀW_d‖_F / ‖W_dᵀW_d‖_F restricted
to the features the dense model represents (rotation invariant, like the model), and mean |D_i − D_i^dense| over features (D_i among the
represented features, `toy.metrics.represented_dimensionality`).

What the default config shows (3 seeds, 261 models, ~3 min on a shared 2-core CPU): at 21 % of
W kept (rate 0.2, round 7) the rewound ticket's loss is 1.16 / 1.05 / 1.18 × the dense loss at
1 − S = 1 / 0.1 / 0.03 (mean over seeds), its random re-initialisation's 3.9 / 1.30 / 1.26 ×.
At 1 − S = 0.1 the ticket keeps the dense geometry exactly down to a third of W (same 9
features represented, Gram distance ≤ 0.03) while the control finds another arrangement
(distance ≈ 0.8, fewer features); at 1 − S = 0.03 the ticket nearly keeps the represented set
(Jaccard 0.91–0.97) but rearranges it more (distance 0.35–0.6, control ≈ 0.85). At 3–5 % kept
(3–5 weights) both arms lose most features, and at 1 − S = 0.1 and 0.03 their losses then
differ by at most 15 %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.config import NonNegativeInt, PositiveFloat, PositiveInt, Probabilities, each, fail, in_range, non_empty
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Grid, SweepResult
from superpos_jax.engine.trainer import Trainer, make_trainer
from superpos_jax.rundir import RunDir
from superpos_jax.toy import metrics
from superpos_jax.toy.models import init_toy, toy_hparams
from superpos_jax.toy.pruning import keep_count, magnitude_mask, masked_toy_task
from superpos_jax.toy.samplers import geometric_importance

NAME = "lottery-ticket"
DESCRIPTION = ("iterative magnitude pruning with rewinding on toy models: does the ticket reach the dense loss "
               "and keep its superposition geometry, vs the same mask randomly re-initialised")

ARMS = ("rewind", "reinit")
"""The init axis of a round: the ticket rewound to θ_k, and its random re-initialisation."""

PruneRates = Annotated[tuple[float, ...], non_empty, each(in_range(0.0, 1.0, closed="[)"))]


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    n_features: PositiveInt = 20
    d_hidden: PositiveInt = 5
    importance_base: PositiveFloat = 0.7
    feature_probabilities: Probabilities = (1.0, 0.1, 0.03)
    prune_rates: PruneRates = (0.2, 0.4)
    n_rounds: PositiveInt = 7
    rewind_step: NonNegativeInt = 100
    n_seeds: PositiveInt = 3
    n_steps: PositiveInt = 3_000
    chunk_steps: PositiveInt = 3_000
    log_every: PositiveInt = 50
    moderate_fraction: Annotated[float, in_range(0.0, 1.0, closed="()")] = 0.2
    represented_threshold: PositiveFloat = metrics.REPRESENTED_NORM

    def check(self) -> None:
        """rewind_step < n_steps and a multiple of log_every; d_hidden < n_features."""
        super().check()
        if self.rewind_step >= self.n_steps or self.rewind_step % self.log_every:
            fail("rewind_step", self.rewind_step, f"a multiple of log_every={self.log_every} below n_steps={self.n_steps}")
        if self.d_hidden >= self.n_features:
            fail("d_hidden", self.d_hidden, f"< n_features={self.n_features} (superposition needs more features than dimensions)")


QUICK = {"n_seeds": 2, "n_rounds": 4, "n_steps": 1_500, "chunk_steps": 1_500, "prune_rates": (0.3,)}


class Sweep(NamedTuple):
    """One trained sweep (dense or a round), host arrays with one row per instance.

    Attributes:
        grid, result: its grid and `SweepResult`.
        hparams: the per-instance hparams it trained with (mask, init_W, init_b, ...).
        W, b: final weights (instance, hidden, feature) and biases (instance, feature).
        final_loss, finite: `common.final_losses(result)`.
    """

    grid: Grid
    result: SweepResult
    hparams: dict[str, np.ndarray]
    W: np.ndarray
    b: np.ndarray
    final_loss: np.ndarray
    finite: np.ndarray


class Lottery(NamedTuple):
    """Everything `train_lottery` trained. `rewind_W`, `rewind_b`: θ_k of the dense sweep
    (instance of the dense grid, ...); `rounds[r - 1]` is round r."""

    dense: Sweep
    rewind_W: np.ndarray
    rewind_b: np.ndarray
    rounds: list[Sweep]


def round_steps(cfg: Config) -> int:
    """Steps a pruning round trains for: what the dense model had left after θ_k."""
    return cfg.n_steps - cfg.rewind_step


def trainer(cfg: Config) -> Trainer:
    """The masked toy-model trainer every sweep of this experiment uses."""
    task = masked_toy_task(cfg.n_features, cfg.d_hidden, cfg.batch_size, generator=cfg.generator)  # type: ignore[arg-type]
    return make_trainer(task, cfg.optim(), log_every=cfg.log_every)


def dense_grid(cfg: Config) -> Grid:
    return Grid({"feature_probability": cfg.feature_probabilities, "seed": range(cfg.n_seeds)})


def round_grid(cfg: Config) -> Grid:
    return Grid({"prune_rate": cfg.prune_rates, "feature_probability": cfg.feature_probabilities,
                 "seed": range(cfg.n_seeds), "init": ARMS})


def initial_weights(cfg: Config, grid: Grid, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Xavier-normal W and zero b per instance from its seed's key and `draw` (0: θ_0 of the
    dense model; r: the random re-initialisation of round r). Shapes (I, m, n), (I, n)."""
    keys = jax.vmap(lambda k: jax.random.fold_in(k, draw))(common.seed_keys(cfg.seed, grid))
    params = jax.vmap(lambda k: init_toy(cfg.n_features, cfg.d_hidden, key=k))(keys)
    return np.asarray(params.W), np.asarray(params.b)


def _hparams(cfg: Config, grid: Grid, mask: np.ndarray, init_W: np.ndarray, init_b: np.ndarray) -> dict[str, np.ndarray]:
    hp = toy_hparams(grid.column("feature_probability"), geometric_importance(cfg.n_features, cfg.importance_base),
                     ["relu"] * grid.size, cfg.learning_rate)
    return {**hp, "mask": mask.astype(np.float32), "init_W": init_W.astype(np.float32),
            "init_b": init_b.astype(np.float32), "rewind_step": np.full(grid.size, cfg.rewind_step, np.int32)}


def dense_hparams(cfg: Config) -> dict[str, np.ndarray]:
    """The dense sweep's hparams: all-ones masks, θ_0 from `initial_weights(..., 0)`."""
    grid = dense_grid(cfg)
    W0, b0 = initial_weights(cfg, grid, 0)
    return _hparams(cfg, grid, np.ones_like(W0), W0, b0)


def _dense_index(cfg: Config, grid: Grid) -> np.ndarray:
    """For every instance of `grid`, its dense instance (same feature probability and seed)."""
    return grid.index("feature_probability") * cfg.n_seeds + grid.index("seed")


def round_hparams(cfg: Config, r: int, lottery: Lottery) -> dict[str, np.ndarray]:
    """Round r's hparams (r ≥ 1), given the dense sweep and rounds 1 … r−1 of `lottery`.

    The mask of every (rate, probability, seed) prunes the previous ticket (the dense model for
    r = 1) to `keep_count(m·n, rate, r)` weights; both arms share it. The rewind arm starts
    from θ_k, the reinit arm from `initial_weights(cfg, grid, r)` and zero bias."""
    grid = round_grid(cfg)
    dense_i = _dense_index(cfg, grid)
    if r == 1:
        W_prev, mask_prev = lottery.dense.W[dense_i], np.ones_like(lottery.dense.W[dense_i])
    else:
        prev = lottery.rounds[r - 2]
        ticket = _ticket_index(grid)
        W_prev, mask_prev = prev.W[ticket], prev.hparams["mask"][ticket]
    n_keep = keep_count(cfg.n_features * cfg.d_hidden, grid.column("prune_rate"), r)
    mask = np.asarray(jax.vmap(magnitude_mask)(jnp.asarray(W_prev), jnp.asarray(n_keep, jnp.int32), jnp.asarray(mask_prev)))
    rewind = (grid.column("init") == "rewind")
    W_rand, b_rand = initial_weights(cfg, grid, r)
    init_W = np.where(rewind[:, None, None], lottery.rewind_W[dense_i], W_rand)
    init_b = np.where(rewind[:, None], lottery.rewind_b[dense_i], b_rand)
    return _hparams(cfg, grid, mask, init_W, init_b)


def _ticket_index(grid: Grid) -> np.ndarray:
    """For every instance of a round grid, the rewind-arm instance of its (rate, prob, seed)."""
    return np.arange(grid.size) - grid.index("init")


def _sweep(name: str, cfg: Config, grid: Grid, hparams: dict[str, np.ndarray], out_dir: RunDir, tag: str, *,
           n_steps: int, progress: bool, execution: Execution) -> tuple[Sweep, Any]:
    result = common.train(name, cfg, grid, hparams, common.seed_keys(cfg.seed, grid), trainer(cfg), out_dir,
                          progress=progress, execution=execution, tag=tag, n_steps=n_steps)
    final, ok = common.final_losses(result)
    params = result.state.params
    sweep = Sweep(grid, result, hparams, np.asarray(params.W), np.asarray(params.b), final, ok)
    return sweep, result.state.extra


def train_lottery(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> Lottery:
    """Train the dense sweep and the `n_rounds` pruning rounds (one sweep each, tags
    "dense", "round1", …), each round's masks computed from the previous round's tickets."""
    dense, extra = _sweep(NAME, cfg, dense_grid(cfg), dense_hparams(cfg), out_dir, "dense",
                          n_steps=cfg.n_steps, progress=progress, execution=execution)
    lottery = Lottery(dense, np.asarray(extra.W), np.asarray(extra.b), [])
    for r in range(1, cfg.n_rounds + 1):
        sweep, _ = _sweep(NAME, cfg, round_grid(cfg), round_hparams(cfg, r, lottery), out_dir, f"round{r}",
                          n_steps=round_steps(cfg), progress=progress, execution=execution)
        lottery.rounds.append(sweep)
    return lottery


def geometry_kept(W: np.ndarray, W_dense: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Per-instance geometry of W (I, m, n) against W_dense (I, m, n) (row-matched).

    Returns `n_represented` (I,), `jaccard` (I,) of the represented sets (1 when both are
    empty), `gram_distance` (I,) ‖WᵀW − W_dᵀW_d‖_F / ‖W_dᵀW_d‖_F over the block of the features
    the dense model represents (the residual weights of its unrepresented features are what
    pruning removes first; they are not its geometry) and `dimensionality_error` (I,)
    mean_i |D_i − D_i^dense| with D among represented features."""
    W = np.asarray(W, np.float64)
    W_dense = np.asarray(W_dense, np.float64)
    rep = np.linalg.norm(W, axis=1) > threshold
    rep_d = np.linalg.norm(W_dense, axis=1) > threshold
    union = np.sum(rep | rep_d, axis=1)
    jaccard = np.where(union > 0, np.sum(rep & rep_d, axis=1) / np.maximum(union, 1), 1.0)
    both = (rep_d[:, :, None] & rep_d[:, None, :]).astype(np.float64)  # the dense model's represented block
    gram = np.einsum("imf,img->ifg", W, W) * both
    gram_d = np.einsum("imf,img->ifg", W_dense, W_dense) * both
    distance = np.linalg.norm(gram - gram_d, axis=(1, 2)) / np.maximum(np.linalg.norm(gram_d, axis=(1, 2)), 1e-12)
    dims = jax.vmap(lambda w: metrics.represented_dimensionality(w, threshold))
    D = np.asarray(dims(jnp.asarray(W, jnp.float32)))
    D_d = np.asarray(dims(jnp.asarray(W_dense, jnp.float32)))
    return {"n_represented": rep.sum(axis=1), "jaccard": jaccard, "gram_distance": distance,
            "dimensionality_error": np.mean(np.abs(D - D_d), axis=1)}


class Table(NamedTuple):
    """The analysis on the grid, round 0 being the dense model (same value in both arms).

    Every array has shape (round, prune_rate, feature_probability, seed, init); `remaining`
    (round, prune_rate) is the fraction of W's weights kept."""

    remaining: np.ndarray
    loss: np.ndarray
    finite: np.ndarray
    n_represented: np.ndarray
    jaccard: np.ndarray
    gram_distance: np.ndarray
    dimensionality_error: np.ndarray


def tabulate(cfg: Config, lottery: Lottery) -> Table:
    """Fold every round (and the dense model as round 0) onto one array per quantity."""
    grid = round_grid(cfg)
    dense_i = _dense_index(cfg, grid)
    dense = lottery.dense
    shape = (cfg.n_rounds + 1, *grid.shape)
    out: dict[str, np.ndarray] = {k: np.zeros(shape) for k in Table._fields[1:]}
    per_round = [(dense.W[dense_i], dense.final_loss[dense_i], dense.finite[dense_i])]
    per_round += [(s.W, s.final_loss, s.finite) for s in lottery.rounds]
    for r, (W, loss, ok) in enumerate(per_round):
        geo = geometry_kept(W, dense.W[dense_i], cfg.represented_threshold)
        out["loss"][r] = grid.fold(loss)
        out["finite"][r] = grid.fold(ok)
        for k, v in geo.items():
            out[k][r] = grid.fold(v)
    n_weights = cfg.n_features * cfg.d_hidden
    remaining = np.stack([keep_count(n_weights, np.asarray(cfg.prune_rates), r) / n_weights for r in range(cfg.n_rounds + 1)])
    out["finite"] = out["finite"].astype(bool)
    return Table(remaining=remaining, **out)


def _moderate(cfg: Config, table: Table) -> tuple[int, int]:
    """(round, rate index) whose remaining fraction is nearest `moderate_fraction` (log scale)."""
    distance = np.abs(np.log(table.remaining[1:]) - np.log(cfg.moderate_fraction))
    r, a = np.unravel_index(np.argmin(distance), distance.shape)
    return int(r) + 1, int(a)


def _mean(values: np.ndarray, ok: np.ndarray) -> float:
    return float(np.mean(values[ok])) if ok.any() else float("nan")


def analyse(cfg: Config, out_dir: RunDir, lottery: Lottery) -> dict[str, Any]:
    """Figures (process 0) and the summary of a trained `Lottery`."""
    from superpos_jax import plots
    from superpos_jax.plots import pruning as pruning_plots

    table = tabulate(cfg, lottery)
    r_mod, a_mod = _moderate(cfg, table)
    grid = round_grid(cfg)
    if is_primary():
        figures = out_dir.figures
        title = (f"n={cfg.n_features}, m={cfg.d_hidden}, importance {cfg.importance_base}^i, ReLU output; "
                 f"rewind to step {cfg.rewind_step} of {cfg.n_steps}, {cfg.n_seeds} seeds")
        plots.save(pruning_plots.ticket_loss_figure(
            table.remaining, np.where(table.finite, table.loss, np.nan), cfg.prune_rates, cfg.feature_probabilities,
            arms=ARMS, title=title), figures / "loss.png")
        plots.save(pruning_plots.ticket_geometry_figure(
            table.remaining, {"represented set kept (Jaccard vs dense)": table.jaccard,
                              "Gram distance ‖WᵀW − W_dᵀW_d‖ / ‖W_dᵀW_d‖": table.gram_distance},
            cfg.prune_rates, cfg.feature_probabilities, arms=ARMS, title=title), figures / "geometry.png")
        seed = 0
        dense_i = np.arange(len(cfg.feature_probabilities)) * cfg.n_seeds + seed
        folded_W = grid.fold(lottery.rounds[r_mod - 1].W)  # (rate, prob, seed, init, m, n)
        folded_mask = grid.fold(lottery.rounds[r_mod - 1].hparams["mask"])
        plots.save(pruning_plots.ticket_gram_figure(
            lottery.dense.W[dense_i], folded_W[a_mod, :, seed, 0], folded_W[a_mod, :, seed, 1],
            folded_mask[a_mod, :, seed, 0], cfg.feature_probabilities,
            title=f"WᵀW at {table.remaining[r_mod, a_mod]:.3g} of W kept (rate {cfg.prune_rates[a_mod]:g}, round {r_mod}), "
                  f"seed {seed}; {title}"), figures / "gram.png")
        plots.save(common.seed_loss_curves(
            grid, lottery.rounds[r_mod - 1].result,
            lambda c: f"p={c['prune_rate']:g} 1−S={c['feature_probability']:g} {c['init']}", log_every=cfg.log_every),
            figures / "loss_curves.png")

    curves = []
    for b, prob in enumerate(cfg.feature_probabilities):
        for a, rate in enumerate(cfg.prune_rates):
            rounds = []
            for r in range(cfg.n_rounds + 1):
                entry: dict[str, Any] = {"round": r, "remaining_fraction": float(table.remaining[r, a]),
                                         "n_weights_kept": int(round(table.remaining[r, a] * cfg.n_features * cfg.d_hidden))}
                for k, arm in enumerate(ARMS):
                    ok = table.finite[r, a, b, :, k]
                    entry[arm] = {
                        "final_loss": table.loss[r, a, b, :, k].tolist(),
                        "final_loss_mean": _mean(table.loss[r, a, b, :, k], ok),
                        "n_represented": table.n_represented[r, a, b, :, k].astype(int).tolist(),
                        **{f"{q}_mean": _mean(getattr(table, q)[r, a, b, :, k], ok)
                           for q in ("n_represented", "jaccard", "gram_distance", "dimensionality_error")},
                    }
                rounds.append(entry)
            curves.append({"feature_probability": prob, "prune_rate": rate, "rounds": rounds})

    dense_loss = table.loss[0, a_mod, :, :, 0]  # (prob, seed)
    moderate = []
    for b, prob in enumerate(cfg.feature_probabilities):
        ticket, control = table.loss[r_mod, a_mod, b, :, 0], table.loss[r_mod, a_mod, b, :, 1]
        moderate.append({
            "feature_probability": prob,
            "dense_loss": dense_loss[b].tolist(),
            "ticket_loss": ticket.tolist(),
            "control_loss": control.tolist(),
            "ticket_excess": float(np.mean(ticket / dense_loss[b] - 1.0)),
            "control_excess": float(np.mean(control / dense_loss[b] - 1.0)),
            "seeds_ticket_below_control": int(np.sum(ticket < control)),
            "ticket_jaccard_mean": float(np.mean(table.jaccard[r_mod, a_mod, b, :, 0])),
            "control_jaccard_mean": float(np.mean(table.jaccard[r_mod, a_mod, b, :, 1])),
            "ticket_gram_distance_mean": float(np.mean(table.gram_distance[r_mod, a_mod, b, :, 0])),
            "control_gram_distance_mean": float(np.mean(table.gram_distance[r_mod, a_mod, b, :, 1])),
        })
    sweeps = [lottery.dense, *lottery.rounds]
    ok_all = np.concatenate([s.finite for s in sweeps])
    instances = []
    for r, s in enumerate(sweeps):
        per = common.toy_metrics(s.W)
        for rec in common.instance_records(s.grid, s.final_loss, s.finite, per):
            instances.append({"round": r, **rec})
    return {
        "n_instances": int(sum(s.grid.size for s in sweeps)),
        "train_seconds": float(sum(s.result.seconds for s in sweeps)),
        "model_steps_per_second": float((lottery.dense.grid.size * cfg.n_steps
                                         + sum(s.grid.size for s in lottery.rounds) * round_steps(cfg))
                                        / max(sum(s.result.seconds for s in sweeps), 1e-9)),
        "round_steps": round_steps(cfg),
        "dense": common.run_record(lottery.dense.grid, lottery.dense.result, lottery.dense.finite),
        "round_grid": {k: list(v) for k, v in grid.axes.items()},
        "non_finite_instances": int(np.sum(~ok_all)),
        "remaining_fraction": {str(rate): table.remaining[:, a].tolist() for a, rate in enumerate(cfg.prune_rates)},
        "moderate": {"round": r_mod, "prune_rate": cfg.prune_rates[a_mod],
                     "remaining_fraction": float(table.remaining[r_mod, a_mod]), "per_sparsity": moderate},
        "curves": curves,
        "instances": instances,
    }


def build(cfg: Config):
    """The dense sweep's grid, hparams, keys and trainer (the rounds follow from its result,
    see `round_hparams`)."""
    grid = dense_grid(cfg)
    return grid, dense_hparams(cfg), common.seed_keys(cfg.seed, grid), trainer(cfg)


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the dense sweep and every pruning round, write the figures, return the summary."""
    return analyse(cfg, out_dir, train_lottery(cfg, out_dir, progress=progress, execution=execution))
