"""Time to the first step: how much of a default `sae-toy` run is spent tracing, lowering and
compiling, measured inside the run.

The run is the experiment itself (`superpos_experiments.sae_toy.run` with its default config,
or `--quick`'s), in this process, into a temporary run directory. JAX reports the duration of
every trace, lowering and backend compilation through `jax.monitoring`; this script sums them
(the persistent compilation cache is off, so every program is compiled here) and prints them
beside the run's wall time, with the load average. Per architecture it also gives the seconds
between the first and the last compilation event of that architecture's sweep.

Target (issue 13): compilation (trace + lower + backend compile) under 10% of the run's wall time.

Usage::

    python benchmarks/compile_share.py            # the default sae-toy run (2,000 steps × 6 sweeps)
    python benchmarks/compile_share.py --quick    # sae-toy's --quick config
    python benchmarks/compile_share.py --json PATH
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


def measure(quick: bool) -> dict[str, Any]:
    """Run sae-toy once and return its wall time, compile-time totals and per-architecture sums."""
    import dataclasses

    from superpos_experiments import sae_toy
    from superpos_jax.rundir import RunDir

    totals: dict[str, float] = defaultdict(float)
    per_arch: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    current = {"arch": "(setup)"}

    def listener(event: str, seconds: float, **_: Any) -> None:
        name = EVENTS.get(event)
        if name is not None:
            totals[name] += seconds
            per_arch[current["arch"]][name] += seconds

    jax.monitoring.register_event_duration_secs_listener(listener)
    original = sae_toy.run_architecture

    def tracked(cfg: Any, arch: str, *args: Any, **kwargs: Any) -> Any:
        current["arch"] = arch
        t0 = time.perf_counter()
        out = original(cfg, arch, *args, **kwargs)
        per_arch[arch]["wall_s"] += time.perf_counter() - t0
        current["arch"] = "(figures)"
        return out

    sae_toy.run_architecture = tracked
    cfg = sae_toy.Config()
    if quick:
        cfg = dataclasses.replace(cfg, **sae_toy.QUICK)
    load_start = os.getloadavg()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = sae_toy.run(cfg, RunDir(Path(tmp)), progress=False)
            wall = time.perf_counter() - t0
    finally:
        sae_toy.run_architecture = original
    compile_total = sum(totals.values())
    return {
        "config": "quick" if quick else "default",
        "n_steps": cfg.n_steps,
        "architectures": list(cfg.architectures),
        "wall_s": wall,
        "train_seconds": summary["train_seconds"],
        **{k: totals[k] for k in EVENTS.values()},
        "compile_total_s": compile_total,
        "compile_share": compile_total / wall,
        "per_architecture": {a: dict(v) for a, v in per_arch.items()},
        "best_mmcs": summary["best_mmcs"],
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sae-toy's --quick config")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)
    res = measure(args.quick)
    print(f"sae-toy ({res['config']}): wall {res['wall_s']:.1f} s, training {res['train_seconds']:.1f} s; "
          f"trace {res['trace_s']:.1f} + lower {res['lower_s']:.1f} + compile {res['compile_s']:.1f} = "
          f"{res['compile_total_s']:.1f} s = {100 * res['compile_share']:.1f}% of the wall time "
          f"(load {res['load_start'][0]:.2f} → {res['load_end'][0]:.2f})")
    for arch, v in res["per_architecture"].items():
        parts = ", ".join(f"{k} {x:.1f}" for k, x in v.items())
        print(f"  {arch}: {parts}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
