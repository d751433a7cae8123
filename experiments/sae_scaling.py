"""A scaling-law study of SAEs: held-out loss against dictionary size and training compute.

Data: synthetic ground truth (`sae.sources.GroundTruthSource`) with many more features than
dimensions, 512 random unit directions in 32 dimensions, firing with probabilities decaying
as 0.993^i (4 active per example on average), so that the rare features keep rewarding larger
dictionaries. TopK SAEs with a fixed k = 4 and dictionary sizes N = 32 … 512 (×2 steps) train
with constant-rate Adam for 1600 steps of 256 examples.

Two ways to train the sizes, with the same results (to float32 rounding) and the same
summary.json and figures (`dictionary_sweep`):

* "per_size": one compiled sweep (seeds) per dictionary size, each at its own d_sae;
* "masked": ONE compiled sweep over (size × seed), every instance padded to the largest size
  and masked to its own (`n_latents`, see `superpos_jax.sae.training`): one compile instead of
  one per size, but every instance computes max N latents, Σ over sizes of (N_max − N) wasted;
* "auto" (default): "masked" on GPU/TPU, "per_size" on CPU (`sweep_mode`). Measured on CPU
  (benchmarks/dict_sweep.py, sizes 32 … 512 × 2 seeds, 400 steps, 2 shared cores at load
  7–10; benchmarks/RESULTS.md, "Dictionary-size sweep"): a compiled masked step costs 8.0× the five per-size
  programs together for TopK (3.6× for ReLU; the padding factor is 2.58), while the per-size
  path pays five compiles (first calls, compile included: TopK 136 s for the five sizes vs 139 s
  masked; ReLU 178 s vs 76 s). So on CPU the masked path wins only short runs, and the
  per-size path the default 1600 steps. On accelerators the small per-size programs leave the
  device idle and each pays its own compile, which the one masked program avoids; that side
  is not yet measured (no GPU was available), so "masked" there is the expected choice.
  A resumed "auto" run keeps the mode its checkpoints were written in (`checkpoints/masked`
  or `checkpoints/N<size>`), whatever the device it resumes on.

Several training lengths from one run: every `log_every` steps the trainer's `observe` hook
scores the current SAE on a fixed held-out batch (a constant of the compiled program), giving
the held-out FVU after s steps for every s. With a constant learning rate (the TopK recipe has
no schedule) the state after s steps is exactly that of an s-step run, so the curve read at
s = n_steps / 2^j stands for runs of those lengths. The compute of a (N, s) point is
`sae.scaling.sae_training_flops(d_in, N, s · batch)`; sizes and lengths both double, so
points with equal N·s share a compute budget exactly (IsoFLOP profiles).

Results: L(N) = a·N^(−b) + c fitted to the longest-trained loss of each size; the compute
frontier N_opt(C) = k·C^e (`sae.scaling.compute_optimal`) over the budgets that have at least
three sizes (the optimum refined by a parabola in log N through its neighbours, so N_opt is
not restricted to the ×2 grid); and a power law in C fitted to the loss frontier. The "loss" throughout is the
held-out FVU (fraction of variance unexplained), which is the MSE in units of the data's
variance. The default is sized for a shared 2-core CPU, where drawing the (batch, n_gt)
ground-truth firing pattern dominates a step; a larger study is e.g. `--set n_ground_truth=4096
d_in=128 probability_base=0.999 k=8 dictionary_sizes=256,512,1024,2048,4096 n_steps=6400`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.config import PositiveFloat, PositiveInt, Rule, fail, in_range, library_errors
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.plots import sae as sae_plots
from superpos_jax.plots.base import save
from superpos_jax.sae.sources import GroundTruthSource, decaying_probabilities, ground_truth_dictionary
from superpos_jax.sae.metrics import evaluate
from superpos_jax.sae.model import SAE
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task
from superpos_jax.sae.scaling import PowerLaw, compute_optimal, fit_power_law, loss_frontier, sae_training_flops
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import Trainer, make_trainer

NAME = "sae-scaling"
DESCRIPTION = "SAE scaling laws: held-out FVU vs dictionary size and compute, fitted power laws, N_opt(C)"


@dataclass(frozen=True)
class Config(common.RunConfig):
    n_steps: PositiveInt = 1_600
    chunk_steps: PositiveInt = 1_600
    log_every: PositiveInt = 25
    batch_size: PositiveInt = 256
    learning_rate: PositiveFloat = 2e-3
    n_ground_truth: PositiveInt = 512
    d_in: PositiveInt = 32
    probability_base: Annotated[float, in_range(0.0, 1.0, closed="(]")] = 0.993
    mean_active: PositiveFloat = 4.0
    k: PositiveInt = 4
    dictionary_sizes: Annotated[tuple[int, ...], Rule(
        "at least 3 increasing positive integers (a power law needs 3 points)",
        lambda v: len(v) >= 3 and v[0] >= 1 and all(a < b for a, b in zip(v, v[1:])))] = (32, 64, 128, 256, 512)
    n_lengths: PositiveInt = 7
    n_seeds: PositiveInt = 1
    dead_steps: PositiveInt = 500
    eval_samples: PositiveInt = 4096
    dictionary_sweep: Literal["auto", "masked", "per_size"] = "auto"

    def check(self) -> None:
        """n_steps a multiple of log_every · 2^(n_lengths − 1); k <= the smallest dictionary;
        the ground truth's probabilities and every size's `SAETraining` are valid."""
        super().check()
        shortest = self.log_every * 2 ** (self.n_lengths - 1)
        if self.n_steps % shortest:
            fail("n_steps", self.n_steps, f"a multiple of log_every · 2^(n_lengths − 1) = {shortest}")
        if self.k > min(self.dictionary_sizes):
            fail("k", self.k, f"at most the smallest dictionary size {min(self.dictionary_sizes)}")
        try:
            decaying_probabilities(self.n_ground_truth, self.probability_base, self.mean_active)
        except ValueError as err:
            fail("mean_active", self.mean_active, f"compatible with probability_base and n_ground_truth ({err})")
        with library_errors("dictionary_sizes"):
            for d_sae in self.dictionary_sizes:
                _training(self, d_sae)


QUICK = {"n_steps": 400, "chunk_steps": 400, "n_lengths": 5, "n_ground_truth": 128, "d_in": 16,
         "probability_base": 0.98, "mean_active": 3.0, "k": 3, "dictionary_sizes": (16, 32, 64),
         "eval_samples": 1024}


def source(cfg: Config) -> GroundTruthSource:
    """The ground-truth activations: dictionary (n_gt, d_in) and decaying firing probabilities."""
    dictionary = ground_truth_dictionary(cfg.n_ground_truth, cfg.d_in, key=jax.random.key(cfg.seed))
    return GroundTruthSource(dictionary, decaying_probabilities(cfg.n_ground_truth, cfg.probability_base, cfg.mean_active))


def held_out(cfg: Config) -> np.ndarray:
    """The fixed held-out batch (eval_samples, d_in), drawn from a key no training step uses."""
    return np.asarray(source(cfg).sample(jax.random.fold_in(jax.random.key(cfg.seed), 2**31 - 1), cfg.eval_samples))


def lengths(cfg: Config) -> np.ndarray:
    """The training lengths (steps) read off each run, n_steps / 2^j ascending, shape (n_lengths,)."""
    return np.asarray([cfg.n_steps // 2**j for j in range(cfg.n_lengths)][::-1], np.int64)


def sweep_mode(cfg: Config, backend: str | None = None, out_dir: RunDir | None = None) -> str:
    """The way the sizes are trained: `cfg.dictionary_sweep`, with "auto" resolved to "masked"
    on an accelerator and "per_size" on CPU (`backend`: default `jax.default_backend()`), or,
    when `out_dir` already holds checkpoints of one mode (a resumed run), to that mode."""
    return common.dictionary_sweep_mode(cfg.dictionary_sweep, cfg.dictionary_sizes, backend=backend, out_dir=out_dir)


def build(cfg: Config, d_sae: int | None = None) -> tuple[Grid, dict[str, np.ndarray], jax.Array, Trainer]:
    """Grid (seeds), hparams, keys and observing trainer of one dictionary size (the largest
    by default)."""
    d_sae = max(cfg.dictionary_sizes) if d_sae is None else d_sae
    training = _training(cfg, d_sae)
    grid = Grid({"seed": range(cfg.n_seeds)})
    hparams = sae_hparams(training, k=np.full(grid.size, cfg.k, np.float32))
    return grid, hparams, common.seed_keys(cfg.seed + 1, grid), _trainer(cfg, training)


def build_masked(cfg: Config) -> tuple[Grid, dict[str, np.ndarray], jax.Array, Trainer]:
    """Grid (d_sae × seed), hparams (with `n_latents` = each instance's size), keys and the
    observing trainer of every size in one program, padded to the largest size. Instance
    (size N, seed s) has the key and data of seed s in the size-N sweep of `build`."""
    training = _training(cfg, max(cfg.dictionary_sizes))
    grid = Grid({"d_sae": cfg.dictionary_sizes, "seed": range(cfg.n_seeds)})
    hparams = sae_hparams(training, k=np.full(grid.size, cfg.k, np.float32),
                          n_latents=np.asarray(grid.column("d_sae"), np.float32))
    return grid, hparams, common.seed_keys(cfg.seed + 1, grid), _trainer(cfg, training)


def _trainer(cfg: Config, training: SAETraining) -> Trainer:
    x_eval = jnp.asarray(held_out(cfg), jnp.float32)

    def observe(params: Any, hp: dict) -> dict[str, jax.Array]:
        out = evaluate(SAE(training.arch, params, hp), x_eval)
        return {"fvu": out["fvu"], "mse": out["mse"]}

    return make_trainer(sae_task(training, source(cfg)), recipe_optim(training, cfg.n_steps, cfg.learning_rate),
                        log_every=cfg.log_every, observe=observe)


def _training(cfg: Config, d_sae: int) -> SAETraining:
    return SAETraining("topk", cfg.d_in, d_sae, batch_size=cfg.batch_size, dead_steps=cfg.dead_steps)


def _law(fit: PowerLaw | None) -> dict[str, float] | None:
    if fit is None:
        return None
    return {"a": fit.a, "b": fit.b, "c": fit.c, "r2": fit.r2, "n_points": fit.n_points}


def _train_sizes(
    cfg: Config, out_dir: RunDir, mode: str, *, progress: bool, execution: Execution
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every size trained (`mode`: "per_size" or "masked"). Returns, per size: its held-out
    curves `curve` (seed, n_windows), `final` train losses (seed,), held-out `l0` and
    `dead_fraction` (seed,), `seconds`; and the run record over the (d_sae × seed) grid."""
    x_eval = jnp.asarray(held_out(cfg), jnp.float32)
    full = Grid({"d_sae": cfg.dictionary_sizes, "seed": range(cfg.n_seeds)})
    sizes: list[dict[str, Any]] = []
    if mode == "masked":
        grid, hparams, keys, trainer = build_masked(cfg)
        result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress,
                              execution=execution, tag="masked")
        final, ok = common.final_losses(result)
        ev = batched_evaluate(_training(cfg, max(cfg.dictionary_sizes)), result.state, x_eval, hparams)
        curves = np.asarray(result.observations["fvu"], np.float64)
        for d_sae in cfg.dictionary_sizes:
            rows = np.flatnonzero(grid.column("d_sae") == d_sae)
            sizes.append({"curve": curves[rows], "final": final[rows], "l0": ev["l0"][rows],
                          "dead_fraction": ev["dead_fraction"][rows],
                          "seconds": result.seconds / len(cfg.dictionary_sizes)})
        seconds, plan = result.seconds, result.plan
        bad = {int(i): result.non_finite.get(int(i)) for i in np.flatnonzero(~ok)}
    else:
        seconds, bad, plan = 0.0, {}, None
        for a, d_sae in enumerate(cfg.dictionary_sizes):
            grid, hparams, keys, trainer = build(cfg, d_sae)
            result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress,
                                  execution=execution, tag=f"N{d_sae}")
            final, ok = common.final_losses(result)
            ev = batched_evaluate(_training(cfg, d_sae), result.state, x_eval, hparams)
            sizes.append({"curve": np.asarray(result.observations["fvu"], np.float64), "final": final,
                          "l0": ev["l0"], "dead_fraction": ev["dead_fraction"], "seconds": result.seconds})
            seconds += result.seconds
            bad.update({a * cfg.n_seeds + int(i): result.non_finite.get(int(i)) for i in np.flatnonzero(~ok)})
            plan = result.plan
    record = {
        "grid": {k: list(v) for k, v in full.axes.items()},
        "model_steps_per_second": full.size * cfg.n_steps / seconds if seconds > 0 else 0.0,
        "execution": plan.as_dict(),
        "non_finite_instances": [{"instance": i, "coords": full.coords(i), "detected_by_step": step}
                                 for i, step in sorted(bad.items())],
    }
    return sizes, record


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train every dictionary size (per size or in one masked program, `sweep_mode`), read the
    held-out curves, fit the laws; figures on process 0; return the summary."""
    steps = lengths(cfg)
    windows = steps // cfg.log_every - 1  # observation w is taken after (w + 1) · log_every steps
    mode = sweep_mode(cfg, out_dir=out_dir)
    trained, records = _train_sizes(cfg, out_dir, mode, progress=progress, execution=execution)
    fvu = np.zeros((len(cfg.dictionary_sizes), steps.size))
    per_size: list[dict[str, Any]] = []
    for a, (d_sae, t) in enumerate(zip(cfg.dictionary_sizes, trained)):
        curve = t["curve"]  # (seed, n_windows)
        fvu[a] = np.mean(curve[:, windows], axis=0)
        per_size.append({
            "d_sae": d_sae, "fvu_curve": np.mean(curve, axis=0).round(6).tolist(),
            "final_fvu": float(fvu[a, -1]), "final_fvu_per_seed": curve[:, -1].tolist(),
            "l0": float(np.mean(t["l0"])), "dead_fraction": float(np.mean(t["dead_fraction"])),
            "final_train_loss": float(np.mean(t["final"])), "train_seconds": t["seconds"],
        })

    sizes = np.asarray(cfg.dictionary_sizes, np.float64)
    size_of = np.repeat(sizes, steps.size)
    tokens = np.tile(steps * cfg.batch_size, sizes.size).astype(np.float64)
    computes = np.asarray([sae_training_flops(cfg.d_in, n, t) for n, t in zip(size_of, tokens)])
    losses = fvu.ravel()
    size_law = fit_power_law(sizes, fvu[:, -1], irreducible=True)
    budget = size_of * tokens
    full = np.asarray([np.sum(budget == b) >= 3 for b in budget])
    frontier = compute_optimal(size_of[full], computes[full], losses[full], refine=True)
    front = loss_frontier(computes, losses)
    compute_law = fit_power_law(computes[front], losses[front], irreducible=True) if front.size >= 3 else None
    if is_primary():
        figures = out_dir.figures
        save(sae_plots.scaling(
            sizes, fvu[:, -1], size_law, ylabel="held-out FVU",
            title=f"TopK (k={cfg.k}) on {cfg.n_ground_truth} ground-truth features in {cfg.d_in} dims, "
                  f"{int(steps[-1] * cfg.batch_size):,} tokens",
        ), figures / "scaling_size.png")
        save(sae_plots.compute_optimal_figure(
            size_of[full], computes[full], losses[full], frontier=frontier, loss_fit=compute_law,
            title="held-out FVU of TopK SAEs over dictionary size and training compute (IsoFLOP budgets with ≥ 3 sizes)",
        ), figures / "compute_optimal.png")
        save(sae_plots.scaling(
            computes, losses, compute_law, groups=[f"N={int(n)}" for n in size_of], xlabel="training compute C (FLOPs)",
            ylabel="held-out FVU", variable="C", title="held-out FVU vs compute (fit: loss frontier)",
        ), figures / "scaling_compute.png")
    return {
        **records,
        "dictionary_sweep": mode,
        "n_instances": len(cfg.dictionary_sizes) * cfg.n_seeds,
        "train_seconds": float(sum(p["train_seconds"] for p in per_size)),
        "loss": "held-out FVU",
        "dictionary_sizes": list(cfg.dictionary_sizes),
        "steps": steps.tolist(),
        "tokens": (steps * cfg.batch_size).tolist(),
        "fvu": fvu.round(6).tolist(),
        "runs": {"size": size_of.tolist(), "compute": computes.tolist(), "fvu": losses.tolist()},
        "size_law": _law(size_law),
        "size_exponent": size_law.b,
        "compute_law": _law(compute_law),
        "compute_optimal": {
            "computes": frontier.computes.tolist(), "sizes": frontier.sizes.tolist(), "losses": frontier.losses.tolist(),
            "exponent": frontier.exponent, "k": None if frontier.fit is None else frontier.fit.a,
        },
        "per_size": per_size,
    }
