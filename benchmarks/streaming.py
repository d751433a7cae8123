"""Training an SAE from activations on disk vs the same rows in memory, side by side in one run.

What is measured
----------------
One SAE (d_in 256, d_sae 2048, batch 1024; relu and topk) trained for `--steps` steps (default:
one epoch) on a stored data set twice the host budget (`--budget-mib` 32: 64 MiB of float32 shards
of 16 MiB), in four variants, each in a fresh process (so each has its own peak RSS), the
variants interleaved and repeated `--repeats` times (median reported):

* **memory-rows**: the rows as a device-resident `ArrayRows` (batches gathered inside the
  compiled loop, i.i.d.): the in-memory reference, no host traffic per step.
* **memory-stream**: the same batches as the disk stream (its `indices`), gathered on the host
  from an in-memory array and handed to the engine as a `Task.stream` (prefetched): the cost of
  the engine's streaming path without any file.
* **disk-stream**: `ShardedActivations` over the shards, prefetched one call ahead (the product).
* **disk-sync**: the same, with the engine's `Prefetcher` replaced by one that never reads
  ahead, so every call's rows are read while the devices wait: what the prefetch overlap buys.

Also, in this process: the stream's read rate alone (`read` of one epoch, call by call, no
training), from the page cache and cold (evicted first), in MiB/s, to set against the rate the
SAE consumes rows. `--variants ''` measures only that.

Per variant: rows per second of training (the `run_sweep` wall time of the timed run, after a
warm-up run compiled every program), and the process's peak RSS (`ru_maxrss`). The shards are
in the page cache (just written, or read by the previous variant) unless `--cold`, which evicts
them before every timed run with `posix_fadvise(DONTNEED)`. Target (issue 13): disk-stream not
slower per row than memory-rows by more than 20%.

Every figure is printed with the load average (`os.getloadavg()`) when it was measured.

Usage::

    python benchmarks/streaming.py               # writes benchmarks/streaming.json
    python benchmarks/streaming.py --quick       # 32 steps, one repeat
    python benchmarks/streaming.py --cold --json /tmp/cold.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "streaming.json"
VARIANTS = ("memory-rows", "memory-stream", "disk-stream", "disk-sync")
ARCHS = ("relu", "topk")
D_IN, D_SAE, BATCH = 256, 2048, 1024


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded."""
    return [round(v, 2) for v in os.getloadavg()]


_WORKER = r'''
import json, os, resource, sys, time
import numpy as np
from unittest import mock
from superpos_jax.engine import stream as stream_mod, sweep
from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae.sources import ArrayRows, FedSource
from superpos_jax.sae.streaming import ShardedActivations
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

variant, data, budget, n_steps, cold, archs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1", sys.argv[6].split(",")
disk = ShardedActivations(data, batch_size=%(batch)d, seed=0, buffer_bytes=budget)


class MemoryStream:
    def __init__(self, x, src):
        self.x, self.src, self.steps_per_call = x, src, src.steps_per_call
    def read(self, start, n):
        return self.x[np.stack([self.src.indices(t) for t in range(start, start + n)])]
    def spec(self, n):
        return self.src.spec(n)
    def fingerprint(self):
        return {"memory": int(self.x.shape[0])}
    def position(self, step):
        return {"step": step}


class MemorySource(FedSource):
    def __init__(self, x, src):
        self.d_in, self.shared, self.stream = src.d_in, src.shared, MemoryStream(x, src)
    def stats(self, key, n, hparams, shared):
        return shared.x[:n]


class SyncPrefetcher(stream_mod.Prefetcher):
    def get(self, start, n, *, then=None):
        return super().get(start, n)  # never read ahead


def all_rows():
    return np.concatenate([np.load(s.path).astype(np.float32) for s in disk.shards])


def evict():
    for s in disk.shards:
        fd = os.open(s.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


if variant == "memory-rows":
    source = ArrayRows(all_rows())
elif variant == "memory-stream":
    source = MemorySource(all_rows(), disk)
else:
    source = disk
patch = mock.patch.object(sweep, "Prefetcher", SyncPrefetcher) if variant == "disk-sync" else mock.patch.object(sweep, "Prefetcher", stream_mod.Prefetcher)
out = {"variant": variant, "steps_per_call": disk.steps_per_call, "window_blocks": disk.window_blocks,
       "host_bytes": disk.host_bytes, "archs": {}}
with patch:
    for arch in archs:
        training = SAETraining(arch, disk.d_in, %(d_sae)d, %(batch)d, stats_samples=1024)
        hp = sae_hparams(training, **({"l1_coefficient": [1e-3]} if arch == "relu" else {"k": [32]}))
        trainer = make_trainer(sae_task(training, source), recipe_optim(training, n_steps, 1e-4), log_every=1)
        keys = instance_keys([0])
        warm = min(n_steps, disk.steps_per_call)
        sweep.run_sweep(trainer, hp, keys, n_steps=warm, chunk_steps=warm, progress=False)  # compiles
        if cold:
            evict()
        res = sweep.run_sweep(trainer, hp, keys, n_steps=n_steps, progress=False)
        out["archs"][arch] = {"seconds": res.seconds, "rows_per_s": n_steps * %(batch)d / res.seconds,
                              "final_loss": float(res.losses[0, -1]), "load": [round(v, 2) for v in os.getloadavg()]}
out["maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(out))
''' % {"batch": BATCH, "d_sae": D_SAE}


def run_variant(variant: str, data: Path, budget: int, n_steps: int, cold: bool, archs: list[str]) -> dict[str, Any]:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-c", _WORKER, variant, str(data), str(budget), str(n_steps),
                           "1" if cold else "0", ",".join(archs)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_data(directory: Path, data_mib: int) -> None:
    import numpy as np

    from superpos_jax.sae.streaming import write_shards

    rng = np.random.default_rng(0)
    rows_per_mib = 2**20 // (4 * D_IN)
    # a low-rank-plus-noise cloud, so the SAE has something to learn
    basis = rng.standard_normal((64, D_IN)).astype(np.float32)
    chunks = ((rng.standard_normal((4 * rows_per_mib, 64)).astype(np.float32) ** 3) @ basis
              + 0.1 * rng.standard_normal((4 * rows_per_mib, D_IN)).astype(np.float32) for _ in range(data_mib // 4))
    write_shards(chunks, directory, 16 * rows_per_mib)


def measure_reads(data: Path, budget: int, cold: bool, repeats: int = 3) -> dict[str, Any]:
    """Median rate of reading one epoch through the stream, call by call (no training)."""
    import time

    from superpos_jax.sae.streaming import ShardedActivations

    src = ShardedActivations(data, batch_size=BATCH, seed=0, buffer_bytes=budget)
    times = []
    for _ in range(repeats):
        if cold:
            for s in src.shards:
                fd = os.open(s.path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
        start = time.perf_counter()
        for step in range(0, src.steps_per_epoch, src.steps_per_call):
            src.read(step, min(src.steps_per_call, src.steps_per_epoch - step))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    rows = src.steps_per_epoch * BATCH
    return {"seconds": seconds, "rows_per_s": rows / seconds, "mib_per_s": rows * D_IN * 4 / 2**20 / seconds,
            "load": load()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-mib", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--cold", action="store_true", help="evict the shards from the page cache before timing")
    parser.add_argument("--quick", action="store_true", help="32 steps, one repeat")
    parser.add_argument("--data", type=Path, default=None, help="reuse (or create) the data set here")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    budget = args.budget_mib * 2**20
    data_mib = 2 * args.budget_mib
    n_steps = args.steps or (32 if args.quick else data_mib * 2**20 // (4 * D_IN * BATCH))
    repeats = 1 if args.quick else args.repeats
    archs, variants = args.archs.split(","), [v for v in args.variants.split(",") if v]

    with tempfile.TemporaryDirectory(prefix="superpos-stream-bench-") as tmp:
        data = args.data or Path(tmp) / "shards"
        if not data.exists() or not any(data.iterdir()):
            data.mkdir(parents=True, exist_ok=True)
            write_data(data, data_mib)
        read_rate = {kind: measure_reads(data, budget, kind == "cold") for kind in ("cached", "cold")}
        for kind, r in read_rate.items():
            print(f"stream read alone ({kind}): {r['mib_per_s']:,.0f} MiB/s ({r['rows_per_s']:,.0f} rows/s; "
                  f"load {r['load']})", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(repeats):
            for v in variants:
                before = load()
                result = run_variant(v, data, budget, n_steps, args.cold, archs)
                result["load_before"] = before
                runs[v].append(result)
                per = "  ".join(f"{a} {result['archs'][a]['rows_per_s']:,.0f} rows/s (load {result['archs'][a]['load']})"
                                for a in archs)
                print(f"[{r + 1}/{repeats}] {v:14s} {per}  peak RSS {result['maxrss_bytes'] / 2**20:.0f} MiB",
                      flush=True)

    summary: dict[str, Any] = {}
    for v in variants:
        summary[v] = {a: statistics.median(x["archs"][a]["rows_per_s"] for x in runs[v]) for a in archs}
        summary[v]["peak_rss_mib"] = statistics.median(x["maxrss_bytes"] for x in runs[v]) / 2**20
    ratios = {}
    for a in archs:
        base = summary.get("memory-rows", {}).get(a)
        for v in variants:
            if base:
                ratios[f"{v}/memory-rows {a}"] = round(summary[v][a] / base, 3)
        if "disk-stream" in summary and "disk-sync" in summary:
            ratios[f"disk-stream/disk-sync {a}"] = round(summary["disk-stream"][a] / summary["disk-sync"][a], 3)
    report = {
        "benchmark": "streaming", "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"d_in": D_IN, "d_sae": D_SAE, "batch": BATCH, "budget_mib": args.budget_mib, "data_mib": data_mib,
                   "steps": n_steps, "repeats": repeats, "cold": args.cold, "archs": archs},
        "stream_read_alone": read_rate, "median_rows_per_s": summary, "ratios": ratios, "runs": runs, "load_end": load(),
    }
    print("\nmedian rows/s:")
    for v in variants:
        print(f"  {v:14s} " + "  ".join(f"{a} {summary[v][a]:,.0f}" for a in archs)
              + f"  peak RSS {summary[v]['peak_rss_mib']:.0f} MiB")
    for k, val in ratios.items():
        print(f"  {k}: {val}")
    print(f"load at the end: {load()}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
