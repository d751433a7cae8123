"""A dictionary-size sweep two ways: one compiled program per size vs ONE padded, masked program.

What is measured
----------------
The same SAE sweep, sizes N ∈ `--sizes` × `--seeds` seeds at one swept coefficient, trained on
the ground-truth source of `experiments/sae_scaling.py` (d_in = 32, 512 features, 0.993^i
firing probabilities, batch 256, Adam), as

* **per_size**: one `sae_task` + `make_trainer` per size at d_sae = N (instances = seeds),
  the sizes run one after another;
* **masked**: one `sae_task` at d_sae = max N with hparam `n_latents` = N per instance
  (instances = sizes × seeds), the pad-and-mask path of `superpos_jax.sae.training`.

For each: the wall time of the first call (compile + `--steps` steps, init included), and the
median of `--repeats` further calls of the already-compiled programs (steps only); model-steps/s
= instances × steps / seconds. Each figure is printed with `os.getloadavg()` (1-minute) taken
right after it. The results are checked side by side: the final loss window and held-out FVU of
every (N, seed) from both paths, and their largest difference.

Padding costs compute: the masked program does (#sizes · N_max) / Σ N times the latent work of
the per-size programs (2.58 for 32 … 512 in ×2 steps), but compiles once and runs one larger
program, which is what an accelerator wants.

Usage::

    python benchmarks/dict_sweep.py                              # relu, sizes 32..512, 200 steps
    python benchmarks/dict_sweep.py --architecture topk --k 4    # the sae-scaling experiment's TopK
    python benchmarks/dict_sweep.py --sizes 16,32,64 --steps 400 # the experiment's --quick sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

import jax
import numpy as np

from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae.sources import GroundTruthSource, decaying_probabilities, ground_truth_dictionary
from superpos_jax.sae.training import SAETraining, batched_evaluate, recipe_optim, sae_hparams, sae_task


def _load() -> float:
    return os.getloadavg()[0]


def _source(d_in: int, n_gt: int) -> GroundTruthSource:
    dictionary = ground_truth_dictionary(n_gt, d_in, key=jax.random.key(0))
    return GroundTruthSource(dictionary, decaying_probabilities(n_gt, 0.993, 4.0))


def _program(args: argparse.Namespace, source: GroundTruthSource, d_sae: int, sizes: list[int] | None):
    """(training, trainer, hparams, keys) of one program: sizes None = plain d_sae, else masked."""
    training = SAETraining(args.architecture, args.d_in, d_sae, batch_size=args.batch_size, dead_steps=500)
    n_sizes = 1 if sizes is None else len(sizes)
    seeds = np.tile(np.arange(args.seeds), n_sizes)
    coef = {training.arch.swept: np.full(seeds.size, args.k if training.arch.swept == "k" else args.l1, np.float32)}
    if sizes is not None:
        coef["n_latents"] = np.repeat(np.asarray(sizes, np.float32), args.seeds)
    hp = sae_hparams(training, **coef)
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, args.steps, args.lr), log_every=args.steps)
    return training, trainer, hp, instance_keys(seeds)


def _time(trainer: Any, hp: dict, keys: jax.Array, steps: int, repeats: int) -> tuple[float, list[float], Any, Any]:
    """(first call seconds incl. compile, repeat seconds, final state, loss trace)."""
    t0 = time.perf_counter()
    state, trace = trainer.run(trainer.init(hp, keys), hp, steps)
    jax.block_until_ready(trace)
    first = time.perf_counter() - t0
    again = []
    for _ in range(repeats):
        s0 = trainer.init(hp, keys)
        jax.block_until_ready(s0)
        t0 = time.perf_counter()
        _, tr = trainer.run(s0, hp, steps)
        jax.block_until_ready(tr)
        again.append(time.perf_counter() - t0)
    return first, again, state, trace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--architecture", default="relu")
    parser.add_argument("--sizes", default="32,64,128,256,512")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--d-in", type=int, default=32)
    parser.add_argument("--n-gt", type=int, default=512)
    parser.add_argument("--k", type=float, default=4.0)
    parser.add_argument("--l1", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    n_max = max(sizes)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores; "
          f"jax {jax.__version__} backend {jax.default_backend()} devices {jax.devices()}")
    print(f"{args.architecture}: sizes {sizes} x {args.seeds} seeds, {args.steps} steps of {args.batch_size}, "
          f"d_in {args.d_in}, {args.n_gt} ground-truth features; padding factor "
          f"{len(sizes) * n_max / sum(sizes):.2f} (#sizes * N_max / sum N)")
    source = _source(args.d_in, args.n_gt)
    x_eval = source.sample(jax.random.key(12345), 4096)
    rows: list[tuple[str, float, float, float, float, float]] = []
    per_size_out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    first_total, again_total = 0.0, 0.0
    for n in sizes:
        training, trainer, hp, keys = _program(args, source, n, None)
        first, again, state, trace = _time(trainer, hp, keys, args.steps, args.repeats)
        fvu = batched_evaluate(training, state, x_eval, hp)["fvu"]
        per_size_out[n] = (np.asarray(trace)[:, -1], np.asarray(fvu))
        first_total += first
        again_total += statistics.median(again)
        print(f"  per_size N={n}: first call {first:.2f} s, then median {statistics.median(again):.3f} s "
              f"(min {min(again):.3f}, max {max(again):.3f})  load {_load():.2f}", flush=True)
    n_inst = len(sizes) * args.seeds
    rows.append(("per_size (one program per N)", first_total, again_total,
                 n_inst * args.steps / first_total, n_inst * args.steps / again_total, _load()))
    training, trainer, hp, keys = _program(args, source, n_max, sizes)
    first, again, state, trace = _time(trainer, hp, keys, args.steps, args.repeats)
    fvu_masked = np.asarray(batched_evaluate(training, state, x_eval, hp)["fvu"])
    trace = np.asarray(trace)[:, -1]
    rows.append(("masked (one padded program)", first, statistics.median(again),
                 n_inst * args.steps / first, n_inst * args.steps / statistics.median(again), _load()))
    print(f"  masked: first call {first:.2f} s, then median {statistics.median(again):.3f} s "
          f"(min {min(again):.3f}, max {max(again):.3f})  load {_load():.2f}", flush=True)

    print("\n| path | first call: compile + run (s) | compiled run (s) | model-steps/s incl. compile "
          "| model-steps/s compiled | load (1 min) |")
    print("|---|---|---|---|---|---|")
    for name, f, a, r1, r2, load in rows:
        print(f"| {name} | {f:.2f} | {a:.3f} | {r1:,.0f} | {r2:,.0f} | {load:.2f} |")
    print(f"\nratio masked / per_size wall time: first call {rows[1][1] / rows[0][1]:.2f}, "
          f"compiled run {rows[1][2] / rows[0][2]:.2f}  (load {_load():.2f})")
    print("\nresults side by side (final loss window; held-out FVU), per_size vs masked:")
    worst_loss, worst_fvu = 0.0, 0.0
    for a, n in enumerate(sizes):
        loss_p, fvu_p = per_size_out[n]
        sl = slice(a * args.seeds, (a + 1) * args.seeds)
        worst_loss = max(worst_loss, float(np.max(np.abs(trace[sl] - loss_p) / np.abs(loss_p))))
        worst_fvu = max(worst_fvu, float(np.max(np.abs(fvu_masked[sl] - fvu_p))))
        print(f"  N={n}: loss {np.round(loss_p, 6).tolist()} vs {np.round(trace[sl], 6).tolist()}; "
              f"FVU {np.round(fvu_p, 6).tolist()} vs {np.round(fvu_masked[sl], 6).tolist()}")
    print(f"largest relative loss difference {worst_loss:.2e}, largest FVU difference {worst_fvu:.2e}")


if __name__ == "__main__":
    main()
