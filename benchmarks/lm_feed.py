"""SAE training on a language model's activations: computed in the loop vs harvested first.

What is measured
----------------
The same frozen transformer (`lm.transformer`, GPT-2 init, random weights: throughput does not
depend on what it learned), the same SAEs (TopK, every layer's `resid_post` × `--seeds` seeds
as one vmapped sweep), the same number of SAE steps of `--batch` rows per instance:

* **in-loop** (`lm.feed.LMActivations`): one compiled `trainer.run` of `--steps` steps; every
  step runs the LM on `n_contexts` fresh corpus windows (a pool of ≥ mix × batch rows per
  layer, `--mix`) and each instance trains on `batch` rows of its layer's pool. With
  `--buffer-steps R` one pool of ≥ R × batch rows serves R steps, each row used once. Nothing
  leaves the device.
* **harvest first**: run the LM over enough corpus windows for `steps × batch` rows per layer
  (each row used once on average, i.e. mix = 1, the minimum forward work), copy them to a host
  array (`lm.activations.harvest`), then train one sweep per layer on `ArrayRows` of that array
  (rows of a device-resident array, uniform with replacement) — the flow of
  `experiments/monosemanticity.py`. Its time = harvest + transfer + training.

Figures are activations per second = instances × steps × batch / wall seconds (medians of
`--repeats`, compile and one warm-up call excluded on both sides), each printed with
`os.getloadavg()` (1-minute). The in-loop side does `mix` × the forward compute of the harvest
side's minimum; it trades that for zero host memory and no harvest stage.

Usage::

    python benchmarks/lm_feed.py                 # CPU-sized defaults
    python benchmarks/lm_feed.py --d-model 256 --layers 4 --batch 4096 --steps 200   # accelerator
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import numpy as np

from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.lm import activations
from superpos_jax.lm.corpus import sample_windows
from superpos_jax.lm.feed import LMActivations
from superpos_jax.lm.transformer import TransformerConfig, init_transformer
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.training import SAETraining, sae_hparams, sae_task


def _load() -> float:
    return os.getloadavg()[0]


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of `fn()` (blocked until ready) and the load beside each repeat."""
    times, loads = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        loads.append(_load())
    return float(np.median(times)), loads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-ctx", type=int, default=64)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--k", type=float, default=16)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--mix", type=int, default=4)
    ap.add_argument("--n-contexts", type=int, default=None, help="windows per pool (default: LMActivations')")
    ap.add_argument("--buffer-steps", type=lambda v: [int(x) for x in v.split(",")], default=[1],
                    help="comma-separated: the in-loop side once per value (steps one pool serves; default 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--corpus-tokens", type=int, default=2_000_000)
    args = ap.parse_args(argv)

    d = args.d_model
    cfg = TransformerConfig(n_layers=args.layers, d_model=d, n_heads=max(1, d // 16), d_head=16, d_mlp=4 * d,
                            n_ctx=args.n_ctx, d_vocab=256)
    model = init_transformer(cfg, key=jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, 256, args.corpus_tokens).astype(np.uint8)
    hooks = tuple(f"blocks.{i}.resid_post" for i in range(args.layers))
    training = SAETraining("topk", d, d * args.expansion, batch_size=args.batch, stats_samples=1024)
    optim = OptimConfig(name="adam", learning_rate=1e-3)
    layers = np.repeat(np.arange(args.layers), args.seeds)
    n_inst = layers.size
    acts_total = n_inst * args.steps * args.batch
    print(f"device {jax.devices()[0].device_kind}  model L={args.layers} d={d} n_ctx={args.n_ctx}  "
          f"SAE d_sae={training.d_sae} k={args.k:g} batch={args.batch}  instances={n_inst} "
          f"(layers x seeds)  steps={args.steps}  mix={args.mix}", flush=True)

    # in-loop: one program for every layer and seed, once per buffer_steps value
    t_loops = {}
    for r in args.buffer_steps:
        src = LMActivations(model, tokens, hooks, batch_size=args.batch, skip=1, mix=args.mix,
                            n_contexts=args.n_contexts, buffer_steps=r)
        hp = sae_hparams(training, k=np.full(n_inst, args.k), hook=src.hook_hparam(layers.tolist()))
        trainer = make_trainer(sae_task(training, src), optim, log_every=args.steps)
        keys = instance_keys(np.arange(n_inst))
        state = trainer.init(hp, keys)
        state, _ = trainer.run(state, hp, args.steps)  # compile + warm-up
        holder = {"s": state}

        def in_loop(trainer=trainer, hp=hp, holder=holder):
            holder["s"], trace = trainer.run(holder["s"], hp, args.steps)
            return trace

        t_loops[r], loads_loop = _timed(in_loop, args.repeats)
        print(f"in-loop R={r:<3d} {acts_total / t_loops[r]:12,.0f} activations/s  ({t_loops[r]:.3f} s per {args.steps} "
              f"steps; forward on {src.n_contexts} x {args.n_ctx} tokens per {r} step(s), pool {src.pool})  "
              f"load {', '.join(f'{x:.2f}' for x in loads_loop)}", flush=True)

    # harvest first: the minimum forward work (each row once), to the host, then ArrayRows
    rows_needed = args.steps * args.batch
    n_windows = math.ceil(rows_needed / (args.n_ctx - 1))
    windows = sample_windows(tokens, key=jax.random.key(1), batch_size=n_windows, seq_len=args.n_ctx)
    activations.harvest(model, windows[:64], hooks[0])  # compile
    harvested: dict[str, np.ndarray] = {}

    def harvest():
        for h in hooks:
            harvested[h] = activations.harvest(model, windows, h, batch=64)[:, 1:, :].reshape(-1, d)
        return harvested[hooks[-1]]

    t_harvest, loads_h = _timed(harvest, args.repeats)
    array_trainers = []
    for h in hooks:
        t = make_trainer(sae_task(training, ArrayRows(harvested[h])), optim, log_every=args.steps)
        hp_h = sae_hparams(training, k=np.full(args.seeds, args.k))
        s = t.init(hp_h, instance_keys(np.arange(args.seeds)))
        s, _ = t.run(s, hp_h, args.steps)  # compile + warm-up
        array_trainers.append([t, hp_h, s])

    def train_arrays():
        out = []
        for entry in array_trainers:
            t, hp_h, s = entry
            entry[2], trace = t.run(s, hp_h, args.steps)
            out.append(trace)
        return out

    t_train, loads_t = _timed(train_arrays, args.repeats)
    t_both = t_harvest + t_train
    host_mb = sum(a.nbytes for a in harvested.values()) / 2**20
    print(f"harvest      {args.layers * rows_needed / t_harvest:12,.0f} rows/s harvested ({t_harvest:.3f} s, "
          f"{host_mb:.1f} MiB on the host)  load {', '.join(f'{x:.2f}' for x in loads_h)}", flush=True)
    print(f"ArrayRows    {acts_total / t_train:12,.0f} activations/s training only ({t_train:.3f} s)  "
          f"load {', '.join(f'{x:.2f}' for x in loads_t)}", flush=True)
    print(f"harvest+train{acts_total / t_both:12,.0f} activations/s ({t_both:.3f} s)", flush=True)
    for r, t_loop in t_loops.items():
        print(f"ratio in-loop R={r} / (harvest + train) = {t_both / t_loop:.2f}x   "
              f"in-loop / train-only = {t_train / t_loop:.2f}x   load {_load():.2f}", flush=True)


if __name__ == "__main__":
    main()
