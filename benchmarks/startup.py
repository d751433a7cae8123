"""Start-up costs, side by side in one run: importing the library, listing the experiments, and
the time to the first trained step of an SAE sweep with a large vs a small activation store.

What is measured
----------------
* **import**: wall time of `python -c "import superpos_jax"` against `python -c "import jax"`,
  each in a fresh subprocess, interleaved, median of `--repeats` (5). Target: at most 1.5×.
  For reference also `import superpos_jax.sae.training` (a family with all its dependencies).
* **list**: wall time of `superpos list` (the installed script; `python -m superpos_jax.cli list`
  when it is not on the PATH), fresh subprocesses, median of the repeats.
* **first step**: for every recipe and architecture (relu-2023, relu-2024, topk, batchtopk,
  jumprelu, gated-2023, gated-2024), a fresh `make_trainer(sae_task(...))` of a 4-instance
  sweep (d_in 256, d_sae 1024, batch 1024) on `ArrayRows` of `--large-mb` (1024 MiB; 256 with
  `--quick`) and of `--small-mb` (1 MiB) of float32 activations: the seconds from building the
  trainer to the end of `trainer.run(trainer.init(...), hp, 1)` (init, both compilations and one
  step), median of `--first-step-repeats` (3; 1 with `--quick`), small and large interleaved.
  The arrays are placed on the device once, before timing. Target: large within 20% of small —
  the activations are an argument of the compiled programs, never a constant in them.

Every figure is printed with the 1-, 5- and 15-minute load average (`os.getloadavg()`) taken
when it was measured: on a shared machine, a load above the core count inflates them.

Usage::

    python benchmarks/startup.py                 # full size (1 GiB of rows)
    python benchmarks/startup.py --quick         # 256 MiB vs 1 MiB, fewer repeats
    python benchmarks/startup.py --write         # also replace the section in benchmarks/RESULTS.md

Writes `benchmarks/startup.json` (or `--json PATH`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "startup.json"
DEFAULT_RESULTS = HERE / "RESULTS.md"
SECTION_HEADING = "## Start-up: `import`, `superpos list`, the first SAE step vs the size of the store"
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("relu-2023", "relu", "2023"),
    ("relu-2024", "relu", "2024"),
    ("topk", "topk", "2023"),
    ("batchtopk", "batchtopk", "2023"),
    ("jumprelu", "jumprelu", "2023"),
    ("gated-2023", "gated", "2023"),
    ("gated-2024", "gated", "2024"),
)
N_INSTANCES, D_IN, D_SAE, BATCH = 4, 256, 1024, 1024


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def _timed_subprocess(argv: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=HERE)
    return time.perf_counter() - start


def _record(times: Sequence[float], loads: Sequence[Sequence[float]]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "runs_s": [round(t, 4) for t in times],
            "load": [list(x) for x in loads]}


IMPORTS: tuple[str, ...] = ("jax", "superpos_jax", "superpos_jax.sae.training")


def time_imports(repeats: int) -> dict[str, Any]:
    """`import jax`, `import superpos_jax` and (for reference, a family with all its
    dependencies) `import superpos_jax.sae.training` in fresh interpreters, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in IMPORTS}
    loads: dict[str, list[list[float]]] = {name: [] for name in IMPORTS}
    for _ in range(repeats):
        for name in times:
            loads[name].append(load())
            times[name].append(_timed_subprocess([sys.executable, "-c", f"import {name}"]))
    out = {name: _record(times[name], loads[name]) for name in times}
    out["ratio"] = out["superpos_jax"]["median_s"] / out["jax"]["median_s"]
    return out


def time_list(repeats: int) -> dict[str, Any]:
    """`superpos list` in fresh processes."""
    script = shutil.which("superpos")
    argv = [script, "list"] if script else [sys.executable, "-m", "superpos_jax.cli", "list"]
    times, loads = [], []
    for _ in range(repeats):
        loads.append(load())
        times.append(_timed_subprocess(argv))
    return {"command": " ".join(["superpos", "list"] if script else argv[1:]), **_record(times, loads)}


def activation_rows(megabytes: float, seed: int = 0):
    """`ArrayRows` of about `megabytes` MiB of float32 activations (d_in = 256), on the device."""
    import jax
    import numpy as np

    from superpos_jax.sae.sources import ArrayRows

    n_rows = max(BATCH, int(megabytes * 2**20) // (4 * D_IN))
    rows = np.random.default_rng(seed).standard_normal((n_rows, D_IN), dtype=np.float32)
    source = ArrayRows(rows)
    del rows
    jax.block_until_ready(source.x)
    return source


def first_step_seconds(architecture: str, recipe: str, source: Any) -> float:
    """Seconds from building a fresh trainer to the end of its first trained step."""
    import jax

    from superpos_jax.engine.trainer import instance_keys, make_trainer
    from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

    start = time.perf_counter()
    training = SAETraining(architecture, D_IN, D_SAE, batch_size=BATCH, recipe=recipe)
    coefficient = [8.0, 16.0, 24.0, 32.0] if training.arch.swept == "k" else [0.1, 0.3, 1.0, 3.0]
    hp = sae_hparams(training, **{training.arch.swept: coefficient})
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 1000, 1e-3))
    state, trace = trainer.run(trainer.init(hp, instance_keys(range(N_INSTANCES))), hp, 1)
    jax.block_until_ready((state, trace))
    return time.perf_counter() - start


def time_first_steps(large_mb: float, small_mb: float, repeats: int) -> list[dict[str, Any]]:
    """Every variant's first-step seconds on the large and the small store, interleaved."""
    small, large = activation_rows(small_mb), activation_rows(large_mb, seed=1)
    first_step_seconds("relu", "2023", small)  # warm JAX's own one-time start-up before timing
    rows = []
    for name, architecture, recipe in VARIANTS:
        times: dict[str, list[float]] = {"small": [], "large": []}
        loads: dict[str, list[list[float]]] = {"small": [], "large": []}
        for _ in range(repeats):
            for size, source in (("small", small), ("large", large)):
                loads[size].append(load())
                times[size].append(first_step_seconds(architecture, recipe, source))
        row = {"variant": name, "small": _record(times["small"], loads["small"]),
               "large": _record(times["large"], loads["large"])}
        row["ratio"] = row["large"]["median_s"] / row["small"]["median_s"]
        print(f"  {name:<11} small {row['small']['median_s']:.2f} s, large {row['large']['median_s']:.2f} s, "
              f"ratio {row['ratio']:.2f} (load {loads['large'][-1]})", flush=True)
        rows.append(row)
    for size, source in (("small", small), ("large", large)):
        for row in rows:
            row[f"{size}_rows"] = int(source.x.shape[0])
            row[f"{size}_mib"] = round(source.x.size * 4 / 2**20, 2)
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"machine": f"{_cpu_name()}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})",
            "python": platform.python_version(), "jax": jax.__version__,
            "device": f"{device.platform}: {getattr(device, 'device_kind', '') or device.platform}"}


def report(res: dict[str, Any]) -> str:
    """The markdown body of the RESULTS.md section."""
    imp, lst = res["import"], res["list"]
    lines = [
        f"Machine: {res['machine']['machine']}, {res['machine']['device']}, jax {res['machine']['jax']}"
        f"{' (--quick)' if res['quick'] else ''}. Load average (1/5/15 min) beside each figure, at its last run.",
        "",
        "| measurement | median | load | target |",
        "|---|---:|---|---|",
        f"| `import jax` | {imp['jax']['median_s']:.2f} s | {imp['jax']['load'][-1]} | |",
        f"| `import superpos_jax` | {imp['superpos_jax']['median_s']:.2f} s ({imp['ratio']:.2f}× jax) | "
        f"{imp['superpos_jax']['load'][-1]} | ≤ 1.5× `import jax`: **{'met' if imp['ratio'] <= 1.5 else 'not met'}** |",
        f"| `import superpos_jax.sae.training` (jax, equinox, optax, the engine) | "
        f"{imp['superpos_jax.sae.training']['median_s']:.2f} s | {imp['superpos_jax.sae.training']['load'][-1]} | |",
        f"| `{lst['command']}` | {lst['median_s']:.2f} s | {lst['load'][-1]} | |",
        "",
        f"Time to the first trained step (fresh trainer: init + compile + 1 step) of a {N_INSTANCES}-instance SAE "
        f"sweep, d_in {D_IN}, d_sae {D_SAE}, batch {BATCH}; `ArrayRows` of "
        f"{res['first_step'][0]['large_mib']:.0f} MiB vs {res['first_step'][0]['small_mib']:.0f} MiB "
        f"(median of {res['first_step_repeats']}). Target: large within 20% of small.",
        "",
        "| variant | small store | large store | large / small | load (large) |",
        "|---|---:|---:|---:|---|",
    ]
    for row in res["first_step"]:
        lines.append(f"| {row['variant']} | {row['small']['median_s']:.2f} s | {row['large']['median_s']:.2f} s | "
                     f"{row['ratio']:.2f} | {row['large']['load'][-1]} |")
    lines += ["", f"Every variant within 20%: **{'yes' if res['within_20_percent'] else 'no'}**."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="256 MiB vs 1 MiB, 3 import repeats, 1 first-step repeat")
    ap.add_argument("--repeats", type=int, default=None, help="import/list repeats (default 5; 3 with --quick)")
    ap.add_argument("--first-step-repeats", type=int, default=None, help="default 3; 1 with --quick")
    ap.add_argument("--large-mb", type=float, default=None, help="MiB of the large store (default 1024; 256 with --quick)")
    ap.add_argument("--small-mb", type=float, default=1.0, help="MiB of the small store (default 1)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the results (default {DEFAULT_JSON.name})")
    ap.add_argument("--write", nargs="?", const=DEFAULT_RESULTS, type=Path, default=None,
                    help="replace the start-up section of RESULTS.md (or of PATH)")
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.first_step_repeats = args.first_step_repeats or (1 if args.quick else 3)
    args.large_mb = args.large_mb or (256.0 if args.quick else 1024.0)
    for name in ("repeats", "first_step_repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.large_mb > 0 or not args.small_mb > 0:
        ap.error("--large-mb and --small-mb must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    print(f"load average at start: {load()}", flush=True)
    imports = time_imports(args.repeats)
    print(f"import jax {imports['jax']['median_s']:.2f} s, import superpos_jax {imports['superpos_jax']['median_s']:.2f} s "
          f"({imports['ratio']:.2f}×)", flush=True)
    listing = time_list(args.repeats)
    print(f"{listing['command']}: {listing['median_s']:.2f} s", flush=True)
    print(f"first trained step, {args.large_mb:g} MiB vs {args.small_mb:g} MiB of rows:", flush=True)
    first = time_first_steps(args.large_mb, args.small_mb, args.first_step_repeats)
    res = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick, "machine": machine(),
        "import": imports, "list": listing, "first_step": first, "first_step_repeats": args.first_step_repeats,
        "within_20_percent": all(row["ratio"] <= 1.2 for row in first),
    }
    body = report(res)
    print("\n" + body, flush=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    if args.write is not None:
        try:
            from benchmarks.toy_sweep import write_section
        except ImportError:  # run as a script: benchmarks/ itself is on sys.path
            from toy_sweep import write_section  # type: ignore[no-redef]

        write_section(args.write, SECTION_HEADING, f"Measured {res['date']}.\n\n{body}")
    return res


if __name__ == "__main__":
    main()
