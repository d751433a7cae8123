"""The `superpos` command: list, run and resume experiments.

    superpos list
    superpos run NAME [--quick] [--out DIR] [--set key=value ...] [execution options]
    superpos resume DIR [execution options]
    superpos steer RUN --feature N --value X [--values X ...] [--n-new K] "prompt"

Execution options (none changes results): --devices N, --max-instances-per-call N,
--memory-fraction F, and for multi-process jobs --distributed [--coordinator HOST:PORT
--num-processes N --process-id I] (or SUPERPOS_DISTRIBUTED=1).

A run directory holds config.json, summary.json, figures/*.png and checkpoints/ (orbax).
Configs are validated before anything is compiled; `run` never writes into a non-empty
directory, so earlier results are never overwritten. SIGTERM stops a run after a final
checkpoint with exit status 75 (EX_TEMPFAIL); `superpos resume DIR` continues it.
In multi-process jobs every process runs the same command; only process 0 writes files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from superpos_jax.engine import checkpoint
from superpos_jax.engine import distributed
from superpos_jax.config import ConfigError, apply_overrides, from_dict, read_json, to_dict, write_json
from superpos_jax.engine.execution import Execution
from superpos_jax.engine.sweep import Preempted

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: interrupted, resumable


def _experiments():
    import superpos_experiments as experiments
    return experiments


def _prepare(name: str, quick: bool, overrides: list[str]) -> tuple[Any, Any]:
    module = _experiments().load(name)
    cfg = module.Config()
    if quick:
        cfg = apply_overrides(cfg, [f"{k}={_fmt(v)}" for k, v in module.QUICK.items()])
    cfg = apply_overrides(cfg, overrides)
    cfg.validate()
    return module, cfg


def _fmt(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def _execution_options(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the execution flags (before anything starts) and return them as a dict."""
    for flag in ("devices", "max_instances_per_call", "num_processes"):
        v = getattr(args, flag)
        if v is not None and v <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} = {v} is invalid: must be a positive integer")
    if not 0.0 < args.memory_fraction <= 1.0:
        raise ConfigError(f"--memory-fraction = {args.memory_fraction} is invalid: must lie in (0, 1]")
    parts = (args.coordinator, args.num_processes, args.process_id)
    if any(p is not None for p in parts):
        if not all(p is not None for p in parts):
            raise ConfigError("--coordinator, --num-processes and --process-id go together: give all three or none")
        if not 0 <= args.process_id < args.num_processes:
            raise ConfigError(f"--process-id = {args.process_id} is invalid: must lie in [0, {args.num_processes})")
        if ":" not in args.coordinator:
            raise ConfigError(f"--coordinator = {args.coordinator!r} is invalid: must be HOST:PORT")
    return {"distributed": args.distributed or distributed.requested_by_environment() or parts[0] is not None}


def _start(args: argparse.Namespace) -> Execution:
    """Join the multi-process job if asked, then describe where the sweep runs."""
    if _execution_options(args)["distributed"]:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        mesh = distributed.sweep_mesh(args.devices)
    except ValueError as e:
        raise ConfigError(f"--devices = {args.devices} is invalid: {e}") from e
    return Execution(mesh, args.max_instances_per_call, args.memory_fraction)


def _execute(module: Any, cfg: Any, out: Path, quick: bool, execution: Execution) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = module.run(cfg, out, progress=distributed.is_primary(), execution=execution)
    summary = {"experiment": module.NAME, "quick": quick, "config": to_dict(cfg),
               "wall_seconds": time.perf_counter() - t0, **summary}
    if distributed.is_primary():
        write_json(out / "summary.json", summary)
        figures = sorted((out / "figures").glob("*.png")) if (out / "figures").is_dir() else []
        print(f"wrote {out / 'summary.json'}")
        for f in figures:
            print(f"wrote {f}")
    return summary


def cmd_list(args: argparse.Namespace) -> int:
    exps = _experiments()
    for name in sorted(exps.REGISTRY):
        print(f"{name:20s} {exps.load(name).DESCRIPTION}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    module, cfg = _prepare(args.name, args.quick, args.set or [])
    _execution_options(args)
    if args.out is None and (args.distributed or args.coordinator or distributed.requested_by_environment()):
        raise ConfigError("multi-process runs need an explicit --out shared by every process")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{args.name}{'-quick' if args.quick else ''}-{stamp}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"output directory {out} is not empty; choose another --out, or continue it with "
            f"`superpos resume {out}`"
        )
    execution = _start(args)
    distributed.barrier("superpos-run-checked")  # every process has seen the directory empty
    if distributed.is_primary():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"experiment": module.NAME, "quick": args.quick, "config": to_dict(cfg)})
        print(f"run directory: {out}")
    distributed.barrier("superpos-run-created")
    _execute(module, cfg, out, args.quick, execution)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    path = out / "config.json"
    if not path.is_file():
        raise ConfigError(f"cannot resume {out}: it has no config.json (not a run directory)")
    meta = read_json(path)
    if not isinstance(meta, dict) or "experiment" not in meta or "config" not in meta:
        raise ConfigError(f"cannot resume {out}: {path} lacks 'experiment' or 'config'")
    module = _experiments().load(meta["experiment"])
    cfg = from_dict(module.Config, meta["config"])
    cfg.validate()
    ckpt = out / "checkpoints"
    sweeps = [ckpt, *sorted(ckpt.iterdir())] if ckpt.is_dir() else []
    if all(checkpoint.latest_step(d) is None for d in sweeps):
        raise ConfigError(f"cannot resume {out}: no checkpoint in {ckpt}")
    _execution_options(args)
    execution = _start(args)
    if distributed.is_primary():
        print(f"resuming {meta['experiment']} in {out}")
    _execute(module, cfg, out, bool(meta.get("quick", False)), execution)
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from superpos_jax.lm import steering
    from superpos_jax.lm.tokenizers import ByteTokenizer

    values = list(args.values or [])
    if args.value is not None:
        values.insert(0, args.value)
    if not values:
        raise ConfigError("give --value X (and optionally --values X1 X2 ... for a sweep)")
    run = steering.load_run(args.run)
    try:
        steering.check_request(run, args.feature, args.prompt)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"prompt: {args.prompt!r}")
    print(f"unsteered: {steering.steer_generate(run, args.prompt, args.feature, None, args.n_new)!r}")
    for v in values:
        print(f"feature {args.feature} = {v:g}: {steering.steer_generate(run, args.prompt, args.feature, v, args.n_new)!r}")
    probs = steering.next_token_sweep(run, args.prompt, args.feature, values)
    decode = ByteTokenizer().decode
    for v, p in zip(values, probs):
        top = p.argsort()[::-1][:5]
        print(f"  next token at {v:g}: " + ", ".join(f"{decode([int(t)])!r} {p[t]:.2f}" for t in top))
    return 0


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution (does not change results)")
    g.add_argument("--devices", type=int, help="use the first N devices (default: all)")
    g.add_argument("--max-instances-per-call", type=int, help="cap on instances per compiled call (default: from memory)")
    g.add_argument("--memory-fraction", type=float, default=0.5, help="share of device memory a sweep may use (default 0.5)")
    g.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host)")
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (not needed on Cloud TPU)")
    g.add_argument("--num-processes", type=int, help="number of processes in the job")
    g.add_argument("--process-id", type=int, help="this process's id in [0, num-processes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="superpos", description="Superposition experiments in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list experiments").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="run an experiment")
    run.add_argument("name")
    run.add_argument("--quick", action="store_true", help="reduced config, < 1 min on 2 CPU cores")
    run.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    run.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields")
    _add_execution_options(run)
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    resume.add_argument("dir")
    _add_execution_options(resume)
    resume.set_defaults(func=cmd_resume)
    steer = sub.add_parser("steer", help="generate with one SAE feature of a run clamped")
    steer.add_argument("run", help="a run directory with model/ and sae/ (e.g. from `run monosemanticity`)")
    steer.add_argument("prompt")
    steer.add_argument("--feature", type=int, required=True, help="SAE feature index")
    steer.add_argument("--value", type=float, help="clamp value")
    steer.add_argument("--values", type=float, nargs="+", help="more clamp values (one vmapped next-token sweep)")
    steer.add_argument("--n-new", type=int, default=40, help="bytes to generate")
    steer.set_defaults(func=cmd_steer)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Preempted as e:
        print(f"superpos: {e}; continue with `superpos resume {e.checkpoint_dir.parent}`", file=sys.stderr)
        return EXIT_PREEMPTED
    except (ConfigError, KeyError, FileNotFoundError, checkpoint.CheckpointMismatch, MemoryError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"superpos: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
