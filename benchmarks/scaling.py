"""How sweep throughput and memory scale with the instance count and the device count.

    python benchmarks/scaling.py                      # full table (~10 min on 2 CPU cores)
    python benchmarks/scaling.py --quick              # a few points, ~2 min
    python benchmarks/scaling.py --write              # also write the section and figure
    python benchmarks/scaling.py --phase-diagram      # time the 2->1 phase diagram sweep (GPU target)

Every point runs in its own subprocess (so the device count can be set with
`JAX_NUM_CPU_DEVICES` and the peak resident memory, `ru_maxrss`, belongs to that point alone).
Each point trains a ReLU toy-model sweep with `run_sweep`, exactly as the experiments do:
sharded over the devices, in blocks sized by the measured memory budget. After one warm-up
call (compile), `--repeats` timed calls give the median model-steps/s (instances × steps /
wall seconds of the training loop).

The phase-diagram mode times the 2→1 phase diagram of Toy Models of Superposition: 50 relative
importances × 50 feature densities × 10 seeds = 25,000 instances of n=2, m=1, trained for
`--phase-steps` steps (the paper's 10k on a GPU; fewer on a CPU, extrapolated and labelled so).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "RESULTS.md"
DEFAULT_FIGURE = HERE / "scaling.png"
HEADING = "## Sweep scaling: instances, devices, memory"
BATCH = 1024

# (n_features, d_hidden, instances, devices, max_instances_per_call)
INSTANCE_POINTS = (
    [(2, 1, i, 1, None) for i in (1, 10, 100, 1_000, 10_000, 100_000)]
    + [(20, 5, i, 1, None) for i in (1, 16, 256, 4096)]
    # the same sweeps forced into one block per call, for contrast with the cache-sized default
    + [(2, 1, 100_000, 1, 100_000), (20, 5, 4096, 1, 4096)]
)
DEVICE_POINTS = [(20, 5, 1024, d, None) for d in (1, 2, 4, 8)] + [(2, 1, 10_000, d, None) for d in (1, 2, 4, 8)]
QUICK_POINTS = [(2, 1, 1, 1, None), (2, 1, 10_000, 1, None), (20, 5, 256, 1, None), (20, 5, 256, 4, None)]


def steps_for(n: int, m: int, instances: int) -> int:
    """Enough steps for ~1 s per timed call on 2 CPU cores, a multiple of 10."""
    work = instances * BATCH * n * max(m, 1)
    return int(max(20, min(20_000, 4e9 / work)) // 10 * 10)


# --------------------------------------------------------------------------------------
# One point, in a child process
# --------------------------------------------------------------------------------------


def measure(point: dict) -> dict:
    import jax
    import numpy as np

    from superpos_jax import OptimConfig, instance_keys, make_trainer, run_sweep, toy_hparams, toy_task
    from superpos_jax.toy.samplers import geometric_importance
    from superpos_jax.engine.distributed import sweep_mesh
    from superpos_jax.engine.execution import Execution

    n, m, instances, steps = point["n"], point["m"], point["instances"], point["steps"]
    if point.get("phase"):
        # 2 -> 1 phase diagram: relative importance x density x seed; feature 0 has importance 1.
        r = np.geomspace(0.1, 10.0, 50)
        p = np.geomspace(0.01, 1.0, 50)
        rr, pp, _ = np.meshgrid(r, p, np.arange(10), indexing="ij")
        importance = np.stack([np.ones(rr.size), rr.ravel()], axis=1)
        probs = pp.ravel()
        instances = rr.size
    else:
        importance = geometric_importance(n, 0.9 if n > 2 else 1.0)
        probs = np.geomspace(1.0, 0.01, instances) if instances > 1 else np.array([0.1])
    hparams = toy_hparams(probs, importance, ["relu"] * instances, 1e-3)
    keys = instance_keys(np.arange(instances))
    trainer = make_trainer(toy_task(n, m, BATCH), OptimConfig(), log_every=10)
    execution = Execution(sweep_mesh(point["devices"]), point.get("max_instances_per_call"))

    rates, seconds = [], []
    for i in range(point["repeats"] + 1):
        result = run_sweep(trainer, hparams, keys, n_steps=steps, progress=False, execution=execution)
        if i:  # the first call compiles
            rates.append(instances * result.steps_per_second)
            seconds.append(result.seconds)
    assert np.isfinite(result.losses).all()
    plan = result.plan
    per_call = None
    if plan.footprint is not None:
        per_call = (plan.footprint.call * plan.block_size + plan.footprint.resident * plan.padded_size) / 2**20
    return {
        **point, "instances": instances, "model_steps_per_s": statistics.median(rates),
        "min": min(rates), "max": max(rates), "seconds": statistics.median(seconds),
        "block_size": plan.block_size, "n_blocks": plan.n_blocks, "padded": plan.padded_size,
        "xla_estimate_mib": per_call,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
    }


def run_point(point: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    if point.get("cpu_devices"):
        env["JAX_NUM_CPU_DEVICES"] = str(point["cpu_devices"])
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(point)], env=env, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"point {point} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = [
        "| n→m | instances | devices | blocks | steps | block × blocks | model-steps/s (median) | min–max | XLA working set (MiB/device) | peak RSS (MiB) |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        est = "n/a" if r["xla_estimate_mib"] is None else f"{r['xla_estimate_mib']:,.1f}"
        lines.append(
            f"| {r['n']}→{r['m']} | {r['instances']:,} | {r['devices']} | "
            f"{'planner' if not r.get('max_instances_per_call') else 'cap ' + format(r['max_instances_per_call'], ',')} | {r['steps']} | "
            f"{r['block_size']:,} × {r['n_blocks']} | {r['model_steps_per_s']:,.0f} | "
            f"{r['min']:,.0f}–{r['max']:,.0f} | {est} | {r['peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    from superpos_jax import plots

    fig = plots.base.new_figure((15, 4.2))
    axes = fig.subplots(1, 3)
    for (n, m), marker in (((2, 1), "o"), ((20, 5), "s")):
        pts = sorted(
            (r for r in rows if (r["n"], r["m"]) == (n, m) and r["series"] == "instances"
             and not r.get("max_instances_per_call")),
            key=lambda r: r["instances"],
        )
        if pts:
            x = [r["instances"] for r in pts]
            axes[0].loglog(x, [r["model_steps_per_s"] for r in pts], marker=marker, label=f"n={n}, m={m}")
            axes[2].loglog(x, [r["peak_rss_mib"] for r in pts], marker=marker, label=f"n={n}, m={m}: peak RSS")
            axes[2].loglog(x, [r["xla_estimate_mib"] or float("nan") for r in pts], marker=marker, ls="--",
                           label=f"n={n}, m={m}: XLA estimate")
        one = [r for r in rows if (r["n"], r["m"]) == (n, m) and r.get("max_instances_per_call") == r["instances"]]
        if one:
            axes[0].scatter([r["instances"] for r in one], [r["model_steps_per_s"] for r in one], marker="x", s=60,
                            color="k", zorder=3, label=f"n={n}, m={m}: forced one block")
            axes[2].scatter([r["instances"] for r in one], [r["peak_rss_mib"] for r in one], marker="x", s=60,
                            color="k", zorder=3)
        dev = sorted((r for r in rows if (r["n"], r["m"]) == (n, m) and r["series"] == "devices"),
                     key=lambda r: r["devices"])
        if len({r["devices"] for r in dev}) > 1:
            axes[1].plot([r["devices"] for r in dev], [r["model_steps_per_s"] for r in dev], marker=marker,
                         label=f"n={n}, m={m}, {dev[0]['instances']:,} instances")
    axes[0].set(xlabel="instances in the sweep", ylabel="model-steps / s", title="throughput vs sweep size (1 device)")
    axes[1].set(xlabel="fake CPU devices (all on the same 2 cores)", ylabel="model-steps / s",
                title="throughput vs device count", xticks=[1, 2, 4, 8])
    axes[2].set(xlabel="instances in the sweep", ylabel="MiB", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="a few points only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phase-diagram", action="store_true", help="time the 50x50x10 2->1 phase diagram sweep")
    ap.add_argument("--phase-steps", type=int, default=10_000, help="steps for --phase-diagram (paper: 10k)")
    ap.add_argument("--write", nargs="?", const=str(DEFAULT_RESULTS), default=None, metavar="PATH")
    ap.add_argument("--figure", default=str(DEFAULT_FIGURE))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return

    if args.phase_diagram:
        point = {"n": 2, "m": 1, "instances": 25_000, "devices": None, "steps": args.phase_steps,
                 "repeats": 1, "phase": True}
        r = run_point(point)
        scale = 10_000 / args.phase_steps
        print(f"2->1 phase diagram, 25,000 instances x {args.phase_steps} steps on {r['device']}: "
              f"{r['seconds']:.2f} s of training ({r['model_steps_per_s']:,.0f} model-steps/s); "
              f"10k steps: {r['seconds'] * scale:.1f} s{' (extrapolated)' if scale != 1 else ''}")
        return

    series = [("devices", p) for p in QUICK_POINTS] if args.quick else (
        [("instances", p) for p in INSTANCE_POINTS] + [("devices", p) for p in DEVICE_POINTS])
    rows = []
    for kind, (n, m, instances, devices, cap) in series:
        point = {"n": n, "m": m, "instances": instances, "devices": devices, "cpu_devices": devices,
                 "max_instances_per_call": cap, "steps": steps_for(n, m, instances), "repeats": args.repeats,
                 "series": kind}
        r = run_point(point)
        rows.append(r)
        print(f"n={n} m={m} instances={instances:,} devices={devices} cap={cap}: "
              f"{r['model_steps_per_s']:,.0f} model-steps/s, peak RSS {r['peak_rss_mib']:,.0f} MiB", flush=True)
    body = table(rows)
    print(body)
    if args.write:
        sys.path.insert(0, str(HERE))
        from toy_sweep import write_section

        figure(rows, Path(args.figure))
        Path(args.figure).with_suffix(".json").write_text(json.dumps(rows, indent=1))
        date = _dt.date.today().isoformat()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        text = (
            f"`python benchmarks/scaling.py --write` — {date} — {cpu_name()}, {cores} cores, "
            f"jax {rows[0]['jax']}, device {rows[0]['device']}\n\n{body}\n\n"
            f"![scaling]({Path(args.figure).name})\n"
        )
        write_section(Path(args.write), HEADING, text)
        print(f"wrote {args.write} and {args.figure}")


if __name__ == "__main__":
    main()
