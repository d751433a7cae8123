"""Training throughput of a toy-model sweep: superpos_jax vs a PyTorch reference loop.

What is measured
----------------
Both sides train I independent ReLU-output toy models of *Toy Models of Superposition*
(n = 20 features, m = 5 hidden dimensions, batch 1024 fresh examples per step, importance
0.7**i, AdamW with lr 1e-3 and weight decay 0.01). Instance i has feature probability
P[i mod 7] with P = (1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001), the sparsity experiment's
values cycled to length I, so both sides see the same data statistics: each feature is
present with probability p and then has magnitude U[0, 1].

* **superpos_jax**: `toy_task` + `make_trainer`, used exactly as `experiments/sparsity.py`
  does. `trainer.run(state, hparams, steps)` is one compiled, vmapped `lax.scan`
  over all instances. It is compiled and run once as a warm-up, then timed `repeats`
  times, each call synchronised with `jax.block_until_ready`. It is timed with the default
  counter-hash data generator and again with `generator="threefry"`
  (`jax.random.uniform`), to show how much of the step time is the data path.
* **PyTorch reference**: the batched-instance training loop of the public *Toy Models
  of Superposition* notebook. The instance axis lives in the weights, W of shape
  (I, n, m) with `xavier_normal_` init and b zeros (I, n). Every step draws a fresh batch
  `where(rand(B, I, n) <= p, rand(B, I, n), 0)`, computes
  `relu(einsum(einsum(x, W), W) + b)`, takes the importance-weighted squared error
  averaged over batch and features and summed over instances, then runs
  `zero_grad` / `backward` / `AdamW.step`. It uses torch's default thread count and
  autograd as usual. There are 20 warm-up steps, then `steps` steps are timed
  `repeats` times.

Each configuration reports model-steps/s = instances × steps / wall seconds: the median
over repeats (with min–max), plus the ratio ours / reference. Before timing, a data
sanity check prints the firing rate and mean magnitude of present features for each
probability, for our samplers (the exact per-step batches the trainer draws) and for the
reference's sampling.

Usage::

    python benchmarks/toy_sweep.py                        # I = 7 and 64, 1000 steps, 5 repeats
    python benchmarks/toy_sweep.py --instances 4096 --device-only   # JAX only (e.g. a GPU)
    python benchmarks/toy_sweep.py --write                # also write benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from superpos_jax.toy.samplers import geometric_importance
from superpos_jax.toy.models import toy_hparams, toy_task
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.trainer import instance_keys, make_trainer

N_FEATURES = 20
D_HIDDEN = 5
BATCH_SIZE = 1024
IMPORTANCE_BASE = 0.7
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
FEATURE_PROBABILITIES: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
TORCH_WARMUP_STEPS = 20
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION_PREFIX = "## Toy sweep throughput"


# --------------------------------------------------------------------------------------
# Configuration shared by both sides
# --------------------------------------------------------------------------------------


def instance_probabilities(n_instances: int) -> np.ndarray:
    """Feature probability of each instance: the sparsity experiment's 7 values, cycled."""
    return np.resize(np.asarray(FEATURE_PROBABILITIES, np.float32), n_instances)


def jax_hparams(n_instances: int) -> dict[str, jax.Array]:
    """Per-instance hparams of the JAX sweep (ReLU-output model), placed on the device."""
    hparams = toy_hparams(
        instance_probabilities(n_instances),
        geometric_importance(N_FEATURES, IMPORTANCE_BASE),
        ["relu"] * n_instances,
        LEARNING_RATE,
    )
    return jax.device_put(hparams)


def make_jax_trainer(steps: int, generator: str):
    """The library's trainer for this benchmark; `log_every=steps`: one loss per call."""
    task = toy_task(N_FEATURES, D_HIDDEN, BATCH_SIZE, generator=generator)  # type: ignore[arg-type]
    optim = OptimConfig(name="adamw", learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    return make_trainer(task, optim, log_every=steps)


# --------------------------------------------------------------------------------------
# PyTorch reference (lazily imported)
# --------------------------------------------------------------------------------------


def import_torch():
    """Return the `torch` module, or None (with a message) if it is not installed."""
    try:
        import torch
    except ImportError:
        print("[toy_sweep] torch is not installed: skipping the PyTorch reference "
              "(pip install -e '.[bench]' to enable it).")
        return None
    return torch


def make_torch_reference(torch, n_instances: int, device: str, seed: int = 0):
    """Build the notebook's batched-instance toy model, optimizer and one training step.

    Returns `(step, generate_batch)`. `step()` performs one full training step (fresh
    batch, forward, loss, backward, AdamW update), following the notebook's `optimize`
    loop with a constant learning rate. `generate_batch(B)` is the model's sampler.
    """
    nn = torch.nn
    F = torch.nn.functional
    torch.manual_seed(seed)
    dev = torch.device(device)
    n, m = N_FEATURES, D_HIDDEN

    class ToyReference(nn.Module):
        """ReLU-output toy model with the instance axis in the weights (as in the notebook)."""

        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty((n_instances, n, m), device=dev)))
            self.b_final = nn.Parameter(torch.zeros((n_instances, n), device=dev))
            probs = torch.as_tensor(instance_probabilities(n_instances), device=dev)
            self.feature_probability = probs[:, None]  # (instance, 1)
            importance = torch.as_tensor(geometric_importance(n, IMPORTANCE_BASE), device=dev)
            self.importance = importance[None, :].expand(n_instances, n)  # (instance, feature)

        def forward(self, features):
            hidden = torch.einsum("...if,ifh->...ih", features, self.W)
            out = torch.einsum("...ih,ifh->...if", hidden, self.W)
            return F.relu(out + self.b_final)

        def generate_batch(self, n_batch: int):
            feat = torch.rand((n_batch, n_instances, n), device=dev)
            return torch.where(
                torch.rand((n_batch, n_instances, n), device=dev) <= self.feature_probability,
                feat,
                torch.zeros((), device=dev),
            )

    model = ToyReference()
    opt = torch.optim.AdamW(list(model.parameters()), lr=LEARNING_RATE)  # weight_decay 0.01 default
    assert opt.param_groups[0]["weight_decay"] == WEIGHT_DECAY

    def step() -> None:
        for group in opt.param_groups:  # the notebook sets the (scheduled) lr every step
            group["lr"] = LEARNING_RATE
        opt.zero_grad(set_to_none=True)
        batch = model.generate_batch(BATCH_SIZE)
        out = model(batch)
        error = model.importance * (batch.abs() - out) ** 2
        loss = error.mean(dim=(0, 2)).sum()  # einops.reduce('b i f -> i', 'mean').sum()
        loss.backward()
        opt.step()

    return step, model.generate_batch


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Wall seconds of each timed repeat of one implementation at one instance count."""

    label: str
    n_instances: int
    steps: int
    seconds: list[float]

    def rates(self) -> list[float]:
        """Model-steps per second of each repeat."""
        return [self.n_instances * self.steps / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        """Median model-steps/s over repeats."""
        return statistics.median(self.rates())


def timed_runs(call, state, repeats: int):
    """`call(state) -> (state, out)` once to compile and warm up, then `repeats` timed calls
    (each waited for). Returns (seconds per call, final state, last out)."""
    state, out = call(state)
    jax.block_until_ready((state, out))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, out = call(state)
        jax.block_until_ready((state, out))
        seconds.append(time.perf_counter() - t0)
    return seconds, state, out


def time_jax(n_instances: int, steps: int, repeats: int, generator: str) -> Timing:
    """Time `trainer.run` over `steps` steps: one compile + warm-up call, then `repeats`."""
    trainer = make_jax_trainer(steps, generator)
    hparams = jax_hparams(n_instances)
    state = trainer.init(hparams, instance_keys(np.arange(n_instances)))
    seconds, state, trace = timed_runs(lambda s: trainer.run(s, hparams, steps), state, repeats)
    loss = np.asarray(trace)
    if not np.all(np.isfinite(loss)):
        print(f"[toy_sweep] warning: non-finite JAX losses ({generator}, I={n_instances})")
    return Timing(f"superpos_jax ({generator})", n_instances, steps, seconds)


def time_torch(torch, n_instances: int, steps: int, repeats: int, device: str) -> Timing:
    """Time the reference loop: `TORCH_WARMUP_STEPS` warm-up steps, then `repeats` × `steps`."""
    step, _ = make_torch_reference(torch, n_instances, device)
    sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(TORCH_WARMUP_STEPS):
        step()
    sync()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds.append(time.perf_counter() - t0)
    return Timing(f"PyTorch reference ({device})", n_instances, steps, seconds)


# --------------------------------------------------------------------------------------
# Data-statistics sanity check
# --------------------------------------------------------------------------------------


def jax_trainer_batches(generator: str, n_batches: int) -> np.ndarray:
    """The first `n_batches` batches the JAX trainer draws for the 7-instance sweep.

    Uses `Trainer.batch`, the same function the training step draws its data with.
    Returns shape (step, instance, feature, batch).
    """
    n_instances = len(FEATURE_PROBABILITIES)
    trainer = make_jax_trainer(1, generator)
    hparams = jax_hparams(n_instances)
    state = trainer.init(hparams, instance_keys(np.arange(n_instances)))

    draw = jax.jit(jax.vmap(trainer.batch))
    return np.stack([
        np.asarray(draw(eqx.tree_at(lambda st: st.step, state, jnp.full(n_instances, s, jnp.int32)), hparams))
        for s in range(n_batches)
    ])


def torch_reference_batches(torch, n_batches: int) -> np.ndarray:
    """`n_batches` batches of the reference sampler, as (step, instance, feature, batch)."""
    _, generate_batch = make_torch_reference(torch, len(FEATURE_PROBABILITIES), "cpu", seed=1)
    with torch.no_grad():
        out = [generate_batch(BATCH_SIZE).numpy().transpose(1, 2, 0) for _ in range(n_batches)]
    return np.stack(out)


def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-instance firing rate, mean magnitude of present features and number present,
    of (step, instance, feature, batch) data."""
    present = x > 0
    count = present.sum(axis=(0, 2, 3))
    rate = present.mean(axis=(0, 2, 3))
    total = np.where(present, x, 0.0).sum(axis=(0, 2, 3), dtype=np.float64)
    mean_mag = total / np.maximum(count, 1)
    return rate, mean_mag, count


def data_check(torch, n_batches: int = 32) -> str:
    """Compare the samplers' firing rates and magnitudes per feature probability (markdown).

    z-scores are against the exact distribution: rate p (binomial standard error) and
    magnitude U[0, 1] (mean 0.5, standard deviation sqrt(1/12) per present feature).
    """
    probs = np.asarray(FEATURE_PROBABILITIES)
    n_samples = n_batches * N_FEATURES * BATCH_SIZE
    sources: dict[str, np.ndarray] = {
        "hash": jax_trainer_batches("hash", n_batches),
        "threefry": jax_trainer_batches("threefry", n_batches),
    }
    if torch is not None:
        sources["torch"] = torch_reference_batches(torch, n_batches)
    stats = {name: batch_statistics(x) for name, x in sources.items()}
    names = list(stats)
    header = ["p"] + [f"rate {s}" for s in names] + [f"mean magnitude {s}" for s in names]
    lines = [
        f"Data check: {n_batches} batches × {BATCH_SIZE} examples × {N_FEATURES} features = "
        f"{n_samples} draws per probability. Expected: rate p, magnitude mean 0.5; "
        "z-scores against these (|z| ≲ 3 expected).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---:|" * len(header),
    ]
    max_z = dict.fromkeys(names, 0.0)
    for i, p in enumerate(probs):
        rates, mags = [], []
        for s in names:
            rate, mag, count = (a[i] for a in stats[s])
            sd_rate = np.sqrt(p * (1 - p) / n_samples)
            z_rate = 0.0 if sd_rate == 0 else (rate - p) / sd_rate
            z_mag = (mag - 0.5) / np.sqrt(1 / 12 / max(count, 1))
            max_z[s] = max(max_z[s], abs(z_rate), abs(z_mag))
            rates.append(f"{rate:.5f} (z={z_rate:+.1f})" if sd_rate else f"{rate:.5f}")
            mags.append(f"{mag:.4f} (z={z_mag:+.1f})")
        lines.append("| " + " | ".join([f"{p:g}"] + rates + mags) + " |")
    lines.append("")
    lines.append("max |z| per sampler: " + ", ".join(f"{s} {max_z[s]:.1f}" for s in names))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def cpu_name() -> str:
    """A human-readable CPU model name (platform.processor() is often empty on Linux)."""
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (what `nproc` prints)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info(torch, device_only: bool = False) -> dict[str, str]:
    """Machine, library and thread information printed with (and written above) the table."""
    info = {
        "machine": f"{cpu_name()}, {usable_cores()} cores ({platform.system()} {platform.machine()})",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax devices": ", ".join(str(d) for d in jax.devices()),
        "jax backend": jax.default_backend(),
    }
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch threads"] = f"{torch.get_num_threads()} (default)"
    else:
        info["torch"] = "skipped (--device-only)" if device_only else "not installed"
    return info


def device_label() -> str:
    """Short description of the JAX device, used in the results heading."""
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or d.platform
    return f"{d.platform}: {kind}" if kind.lower() != d.platform else d.platform


def results_table(timings: Sequence[Timing], reference: dict[int, Timing]) -> str:
    """Markdown table: median model-steps/s (min–max), median seconds, ratio vs reference."""
    lines = [
        "| instances | steps | implementation | model-steps/s (median) | min–max | s per run (median) | ours / reference |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for t in timings:
        rates = t.rates()
        ref = reference.get(t.n_instances)
        is_ref = t.label.startswith("PyTorch")
        ratio = "1.00" if is_ref else (f"{t.median_rate / ref.median_rate:.2f}×" if ref else "n/a")
        lines.append(
            f"| {t.n_instances} | {t.steps} | {t.label} | {t.median_rate:,.0f} | "
            f"{min(rates):,.0f}–{max(rates):,.0f} | {statistics.median(t.seconds):.3f} | {ratio} |"
        )
    return "\n".join(lines)


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section titled `heading` in the markdown file `path`, or append it.

    A section runs from its `## ` heading line to the next `## ` heading (or end of file).
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, nargs="+", default=[7, 64],
                    help="instance counts to benchmark (default: 7 64)")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per timed run (default 1000)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (default 5)")
    ap.add_argument("--generators", nargs="+", default=["hash", "threefry"], choices=["hash", "threefry"],
                    help="JAX data generators to time (default: hash threefry)")
    ap.add_argument("--device-only", action="store_true",
                    help="time only the JAX side (skip torch entirely, e.g. on a GPU machine)")
    ap.add_argument("--torch-device", default="cpu", help="device of the PyTorch reference (default cpu)")
    ap.add_argument("--reference-max-instances", type=int, default=None,
                    help="skip the PyTorch reference above this instance count (default: no limit)")
    ap.add_argument("--skip-data-check", action="store_true", help="skip the data-statistics sanity check")
    ap.add_argument("--write", nargs="?", const=str(DEFAULT_RESULTS), default=None, metavar="PATH",
                    help=f"append/replace this run's section in a markdown file (default {DEFAULT_RESULTS.name})")
    args = ap.parse_args(argv)
    if args.steps <= 0 or args.repeats <= 0 or any(i <= 0 for i in args.instances):
        ap.error("--steps, --repeats and --instances must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the data check and the timings, print the markdown table, optionally write it."""
    args = parse_args(argv)
    torch = None if args.device_only else import_torch()

    info = machine_info(torch, args.device_only)
    print("\n".join(f"{k}: {v}" for k, v in info.items()))
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        print("[toy_sweep] warning: the machine is busy (1-min load average > 0.5): timings will be "
              "noisy and pessimistic, the PyTorch reference's most of all.")
    print(f"config: n_features={N_FEATURES} d_hidden={D_HIDDEN} batch={BATCH_SIZE} "
          f"importance={IMPORTANCE_BASE}**i relu-output AdamW(lr={LEARNING_RATE}, wd={WEIGHT_DECAY}) "
          f"steps={args.steps} repeats={args.repeats}")
    print()

    if not args.skip_data_check:
        print(data_check(torch))
        print()

    timings: list[Timing] = []
    reference: dict[int, Timing] = {}
    for n_instances in args.instances:
        for generator in args.generators:
            t = time_jax(n_instances, args.steps, args.repeats, generator)
            print(f"[toy_sweep] I={n_instances:>5} {t.label:<32} {t.median_rate:>14,.0f} model-steps/s",
                  flush=True)
            timings.append(t)
        if torch is None:
            continue
        if args.reference_max_instances is not None and n_instances > args.reference_max_instances:
            print(f"[toy_sweep] I={n_instances:>5} PyTorch reference skipped "
                  f"(> --reference-max-instances={args.reference_max_instances})")
            continue
        t = time_torch(torch, n_instances, args.steps, args.repeats, args.torch_device)
        print(f"[toy_sweep] I={n_instances:>5} {t.label:<32} {t.median_rate:>14,.0f} model-steps/s", flush=True)
        timings.append(t)
        reference[n_instances] = t

    table = results_table(timings, reference)
    print()
    print(table)

    if args.write:
        now = _dt.datetime.now().strftime("%Y-%m-%d")
        heading = f"{SECTION_PREFIX} — {now} — {info['machine']} — {device_label()}"
        details = "\n".join(f"- {k}: {v}" for k, v in info.items())
        command = "python benchmarks/toy_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv)
        body = (f"`{command.strip()}`\n\n{details}\n\n{table}\n\n"
                "model-steps/s = instances × steps / wall seconds, median over repeats; "
                "ratio = ours / PyTorch reference at the same instance count.")
        path = Path(args.write)
        write_section(path, heading, body)
        print(f"\n[toy_sweep] wrote section to {path}")


if __name__ == "__main__":
    main()
