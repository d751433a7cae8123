"""The `superpos` command: list, run and resume experiments.

    superpos list
    superpos run NAME [--quick] [--out DIR] [--set key=value ...]
    superpos resume DIR

A run directory holds config.json, summary.json, figures/*.png and checkpoints/ (orbax).
Configs are validated before anything is compiled; `run` never writes into a non-empty
directory, so earlier results are never overwritten.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from superpos_jax import checkpoint
from superpos_jax.config import ConfigError, apply_overrides, from_dict, read_json, to_dict, write_json


def _experiments():
    import experiments

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


def _execute(module: Any, cfg: Any, out: Path, quick: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = module.run(cfg, out, progress=True)
    summary = {"experiment": module.NAME, "quick": quick, "config": to_dict(cfg),
               "wall_seconds": time.perf_counter() - t0, **summary}
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
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / f"{args.name}{'-quick' if args.quick else ''}-{stamp}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"output directory {out} is not empty; choose another --out, or continue it with "
            f"`superpos resume {out}`"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"experiment": module.NAME, "quick": args.quick, "config": to_dict(cfg)})
    print(f"run directory: {out}")
    _execute(module, cfg, out, args.quick)
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
    if checkpoint.latest_step(ckpt) is None:
        raise ConfigError(f"cannot resume {out}: no checkpoint in {ckpt}")
    print(f"resuming {meta['experiment']} in {out}")
    _execute(module, cfg, out, bool(meta.get("quick", False)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="superpos", description="Superposition experiments in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list experiments").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="run an experiment")
    run.add_argument("name")
    run.add_argument("--quick", action="store_true", help="reduced config, < 1 min on 2 CPU cores")
    run.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    run.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields")
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint")
    resume.add_argument("dir")
    resume.set_defaults(func=cmd_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"superpos: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
