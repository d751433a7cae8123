"""The `superpos` command: list, run and resume experiments.

    superpos list [--check]
    superpos run NAME|PATH.py [--quick] [--out DIR] [--config FILE.json] [--set KEY=VALUE ...]
                 [--KEY=VALUE ...] [--tensorboard DIR] [execution options]
    superpos run NAME --help          every config field: type, default, constraint; --quick
    superpos resume DIR [--tensorboard DIR] [execution options]
    superpos steer RUN "prompt" --feature N --value X [--feature M --value Y ...] [--values X ...]
                   [--n-new K]

`list` reads the experiments' names without importing them and shows a module that cannot
run as broken, with the reason; `list --check` imports every module to be sure (exit 1 when
one is broken). `run` takes an experiment's NAME or the path of your own module (see
`superpos_experiments` for the contract). Config keys are dotted for nested fields
(`model.d_model`); later sources win: the defaults, `--quick`, `--config FILE.json` (a JSON
object, nested or dotted), `--KEY=VALUE` (as sweep agents such as wandb's pass them), `--set`.

Execution options (none changes results): --devices N, --max-instances-per-call N,
--memory-fraction F, and for multi-process jobs --distributed [--coordinator HOST:PORT
--num-processes N --process-id I] (or SUPERPOS_DISTRIBUTED=1).

The run directory (`superpos_jax.rundir`) holds config.json, status.json (the start marker),
summary.json, metrics.jsonl, figures/*.png and checkpoints/ (orbax). Everything is validated
before anything is compiled, and every expected error (the project's own, OSError, invalid
JSON, running out of memory) is one line `superpos: error: ...` with exit status 2; a
traceback means a bug. `run` never writes into a non-empty directory, and a run that fails
with an expected error before its first checkpoint removes what it created. A run killed
before its first checkpoint is resumed from step 0.

SIGTERM is handled from the moment `main` starts: it never kills the process half-way. A
sweep that is training stops after its next checkpoint (the chunk running when the signal
came, even the first one, still compiling, finishes first); a signal that comes before the
run directory exists stops the command before it writes anything. Either way the exit status
is 75 (EX_TEMPFAIL): repeat the command, or `superpos resume DIR`. A signal that comes
after the last checkpoint lets the run finish its analysis and summary (exit 0). In
multi-process jobs every process runs the same command; only process 0 writes files.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from superpos_jax import config, suite
from superpos_jax.config import ConfigError
from superpos_jax.rundir import RunDir, RunDirError

EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: interrupted, resumable


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the command's one format."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"superpos: error: {message}\n")


# ---------------------------------------------------------------- config


def _load(name: str) -> ModuleType:
    return suite.resolve(name)


def _config_file(path: str) -> dict[str, Any]:
    try:
        data = config.read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must hold a JSON object of config fields, not {type(data).__name__}")
    return data


def build_config(
    module: ModuleType,
    *,
    quick: bool = False,
    config_file: str | None = None,
    flags: dict[str, str] | None = None,
    overrides: list[str] | None = None,
) -> Any:
    """The validated config of `module`: its defaults, then `QUICK` (when `quick`), the JSON
    file, the `--KEY=VALUE` flags and the `--set` overrides, later ones winning."""
    cfg = module.Config()
    if quick:
        cfg = config.apply_overrides(cfg, getattr(module, "QUICK", {}))
    if config_file is not None:
        try:
            cfg = config.apply_overrides(cfg, _config_file(config_file))
        except ConfigError as e:
            raise ConfigError(f"{e} (in --config {config_file})") from None
    if flags:
        cfg = config.apply_overrides(cfg, flags)
    cfg = config.apply_overrides(cfg, config.parse_assignments(overrides or []))
    config.validate(cfg)
    return cfg


def _prepare(name: str, quick: bool, overrides: list[str], config_file: str | None = None,
             flags: dict[str, str] | None = None) -> tuple[ModuleType, Any]:
    module = _load(name)
    return module, build_config(module, quick=quick, config_file=config_file, flags=flags, overrides=overrides)


def _flag_overrides(extra: list[str]) -> dict[str, str]:
    """`--key=value` arguments argparse did not know: config overrides (wandb's format)."""
    out = {}
    for arg in extra:
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not eq or not key:
            raise ConfigError(
                f"unrecognized argument {arg!r}; set config fields with --KEY=VALUE or --set KEY=VALUE "
                f"(`superpos run NAME --help` lists them)"
            )
        out[key] = value
    return out


def config_help(module: ModuleType) -> str:
    """The config fields of `module` (dotted name, type, default, constraint), the rules
    between fields and the `--quick` overrides, as `superpos run NAME --help` prints them."""
    cfg = module.Config()
    rows = [(f.name, config.type_name(f.type), config.format_value(f.value), f.constraint) for f in config.fields_of(cfg)]
    widths = [max(len(r[i]) for r in rows + [("field", "type", "default", "")]) for i in range(3)]
    lines = [f"config fields of {module.NAME} (set with --set KEY=VALUE, --KEY=VALUE or --config FILE.json):",
             "  " + "  ".join(h.ljust(w) for h, w in zip(("field", "type", "default"), widths)) + "  constraint"]
    for r in rows:
        lines.append(("  " + "  ".join(v.ljust(w) for v, w in zip(r[:3], widths)) + f"  {r[3]}").rstrip())
    rules = []
    for cls in type(cfg).__mro__:
        check = cls.__dict__.get("check")
        if check is not None and check.__doc__:
            rules.append(f"  {cls.__name__}: " + " ".join(check.__doc__.split()))
    if rules:
        lines += ["rules between fields:", *rules]
    quick = getattr(module, "QUICK", {})
    if quick:
        lines += ["--quick sets: " + ", ".join(f"{k}={config.format_value(v)}" for k, v in quick.items())]
    return "\n".join(lines)


# ---------------------------------------------------------------- execution


def _execution_options(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the execution flags (before anything starts) and return them as a dict."""
    from superpos_jax.engine import distributed

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


def _start(args: argparse.Namespace) -> Any:
    """Join the multi-process job if asked, then describe where the sweep runs."""
    from superpos_jax.engine import distributed
    from superpos_jax.engine.execution import Execution

    if _execution_options(args)["distributed"]:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    try:
        mesh = distributed.sweep_mesh(args.devices)
    except ValueError as e:
        raise ConfigError(f"--devices = {args.devices} is invalid: {e}") from e
    try:
        return Execution(mesh, args.max_instances_per_call, args.memory_fraction)
    except ValueError as e:
        raise ConfigError(f"execution options are invalid: {e}") from e


def _run_dir(root: Path, tensorboard: str | None) -> RunDir:
    """The run directory, its metrics log checked now (TensorBoard needs its extra)."""
    run_dir = RunDir(root, tensorboard=None if tensorboard is None else Path(tensorboard))
    if tensorboard is not None:
        try:
            run_dir.metrics_log()
        except ImportError as e:
            raise ConfigError(f"--tensorboard {tensorboard}: {e}") from None
    return run_dir


def _execute(module: ModuleType, cfg: Any, run_dir: RunDir, quick: bool, execution: Any) -> dict[str, Any]:
    import matplotlib

    from superpos_jax.engine import distributed
    from superpos_jax.engine.sweep import Preempted

    matplotlib.use("Agg")  # the command writes files, never windows; the library itself sets no backend
    t0 = time.perf_counter()
    try:
        summary = module.run(cfg, run_dir, progress=distributed.is_primary(), execution=execution)
    except Preempted as e:
        raise _Interrupted(f"{e}; continue with `superpos resume {run_dir.root}`") from e
    summary = {"experiment": module.NAME, "quick": quick, "config": config.to_dict(cfg),
               "wall_seconds": time.perf_counter() - t0, **summary}
    run_dir.write_summary(summary)
    if distributed.is_primary():
        print(f"wrote {run_dir.summary_path}")
        for f in run_dir.figures_written():
            print(f"wrote {f}")
    return summary


class _Interrupted(Exception):
    """The run stopped after a checkpoint, or before it started (SIGTERM); exit 75."""


class _Termination:
    """The SIGTERM handler of the whole command: it records the request (`requested`) and
    returns, so that nothing is killed half-written. `run_sweep` finds this handler installed
    and shares its flag (a request made before a sweep began stops it at its first checkpoint);
    the commands look at it before they create anything."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.requested:
            print("\nsuperpos: SIGTERM: stopping at the next checkpoint", file=sys.stderr, flush=True)
        self.requested = True


def _stop_if_requested(what: str) -> None:
    """Raise `_Interrupted` when SIGTERM came before the command wrote anything."""
    handler = signal.getsignal(signal.SIGTERM)
    if getattr(handler, "requested", False):
        raise _Interrupted(f"stopped by SIGTERM before {what}; nothing was written, repeat the command")


# ---------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    experiments = suite.discover()
    if args.check:
        experiments = [suite.check(e) for e in experiments]
    width = max([20, *(len(e.name) + 1 for e in experiments)])
    for e in experiments:
        print(f"{e.name:{width}s} {e.description}" if e.broken is None else f"{e.name:{width}s} BROKEN ({e.path.name}): {e.broken}")
    return 1 if args.check and any(e.broken is not None for e in experiments) else 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.help:
        args.parser.print_help()
        if args.name is not None:
            print()
            print(config_help(_load(args.name)))
        else:
            print("\nexperiments: " + ", ".join(e.name for e in suite.discover() if e.broken is None))
        return 0
    if args.name is None:
        raise ConfigError("give an experiment: `superpos run NAME` (`superpos list` shows them) or a module's path")
    module, cfg = _prepare(args.name, args.quick, args.set or [], args.config, _flag_overrides(extra))
    options = _execution_options(args)
    if args.out is None and options["distributed"]:
        raise ConfigError("multi-process runs need an explicit --out shared by every process")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = Path(args.out) if args.out else Path("runs") / f"{module.NAME}{'-quick' if args.quick else ''}-{stamp}"
    run_dir = _run_dir(root, args.tensorboard)
    run_dir.ensure_empty()
    execution = _start(args)
    meta = {"experiment": module.NAME, "quick": args.quick, "config": config.to_dict(cfg), **suite.source_of(module)}
    if args.tensorboard is not None:
        meta["tensorboard"] = str(Path(args.tensorboard).resolve())
    _stop_if_requested(f"the run directory {root} was created")
    made = run_dir.create(meta)
    from superpos_jax.engine import distributed

    if distributed.is_primary():
        print(f"run directory: {root}")
    try:
        _execute(module, cfg, run_dir, args.quick, execution)
    except Exception as e:
        if _expected(e) and not run_dir.has_checkpoint():
            run_dir.discard(made)
            raise _Failed(f"{_message(e)} (nothing was checkpointed; removed the run directory {root})") from e
        raise
    return 0


def cmd_resume(args: argparse.Namespace, extra: list[str]) -> int:
    _no_extra(extra)
    meta = RunDir(Path(args.dir)).read_config()
    module = suite.load_file(meta["path"]) if meta.get("path") else _load(str(meta["experiment"]))
    if module.NAME != meta["experiment"]:
        raise ConfigError(f"cannot resume {args.dir}: its module now has NAME {module.NAME!r}, not {meta['experiment']!r}")
    try:
        cfg = config.from_dict(module.Config, meta["config"])
        config.validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"cannot resume {args.dir}: {e}") from None
    tensorboard = args.tensorboard if args.tensorboard is not None else meta.get("tensorboard")
    run_dir = _run_dir(Path(args.dir), tensorboard)
    restart = not run_dir.has_checkpoint()
    if restart and not run_dir.is_started():
        raise RunDirError(f"cannot resume {args.dir}: no checkpoint in {run_dir.checkpoint_dir()} and no start "
                          f"marker {run_dir.status_path.name} (not a run started by `superpos run`)")
    execution = _start(args)
    from superpos_jax.engine import distributed

    _stop_if_requested(f"resuming {args.dir}")
    run_dir.mark("started")
    if distributed.is_primary():
        print(f"{'no checkpoint yet: restarting' if restart else 'resuming'} {meta['experiment']} in {args.dir}"
              f"{' from step 0' if restart else ''}")
    _execute(module, cfg, run_dir, bool(meta.get("quick", False)), execution)
    return 0


def _steer_settings(args: argparse.Namespace) -> tuple[list[int], list[list[float]]]:
    """The features and clamp settings of `superpos steer`: the i-th --value clamps the i-th
    --feature; --values are further values of the last --feature, the others held (each a
    setting of its own). Checked here, before the run is loaded."""
    from superpos_jax.lm.steering import MAX_CLAMP

    features, values, sweep = list(args.feature), list(args.value or []), list(args.values or [])
    for i, f in enumerate(features):
        if f in features[:i]:
            raise ConfigError(f"--feature {f} is given twice: each feature is clamped to one value")
    # the last feature may take all its values from --values
    if not (len(values) == len(features) or (sweep and len(values) == len(features) - 1)):
        also = " (with --values, the last --feature may go without one)" if sweep else ""
        raise ConfigError(f"--feature is given {len(features)} time(s) and --value {len(values)} time(s): give one "
                          f"--value per --feature, in order (the i-th --value clamps the i-th --feature){also}")
    for flag, vs, owner in (("--value", values, features), ("--values", sweep, [features[-1]] * len(sweep))):
        for v, f in zip(vs, owner):
            if not (math.isfinite(v) and abs(v) <= MAX_CLAMP):
                raise ConfigError(f"{flag} {v!r} (for --feature {f}) is invalid: a clamp value must be a finite "
                                  f"number in [-{MAX_CLAMP:g}, {MAX_CLAMP:g}]")
    held = values[: len(features) - 1]
    last = values[len(features) - 1 :] + sweep
    return features, [held + [v] for v in last]


def cmd_steer(args: argparse.Namespace, extra: list[str]) -> int:
    _no_extra(extra)
    from superpos_jax.lm import steering
    features, settings = _steer_settings(args)
    run = steering.load_run(args.run)
    steering.check_request(run, features, args.prompt, values=settings, n_new=args.n_new)
    print(f"prompt: {args.prompt!r}")
    print(f"unsteered: {steering.steer_generate(run, args.prompt, features, None, args.n_new)!r}")
    labels = [", ".join(f"feature {f} = {v:g}" for f, v in zip(features, s)) for s in settings]
    for label, text in zip(labels, steering.steer_generate_sweep(run, args.prompt, features, settings, args.n_new)):
        print(f"{label}: {text!r}")
    probs = steering.next_token_sweep(run, args.prompt, features, settings)
    decode = run.tokenizer.decode
    for label, p in zip(labels, probs):
        top = p.argsort()[::-1][:5]
        print(f"  next token at {label}: " + ", ".join(f"{decode([int(t)])!r} {p[t]:.2f}" for t in top))
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")


def _list_command(args: argparse.Namespace, extra: list[str]) -> int:
    _no_extra(extra)
    return cmd_list(args)


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
    parser = _Parser(prog="superpos", description="Superposition experiments in JAX.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ls = sub.add_parser("list", help="list experiments (read without importing them)", allow_abbrev=False)
    ls.add_argument("--check", action="store_true", help="import every experiment to be sure it runs (exit 1 if one cannot)")
    ls.set_defaults(func=_list_command)
    run = sub.add_parser("run", help="run an experiment", add_help=False, allow_abbrev=False,
                         usage="superpos run NAME|PATH.py [options] [--set KEY=VALUE ...] [--KEY=VALUE ...]")
    run.add_argument("name", nargs="?", help="an experiment's NAME (`superpos list`) or the path of your own module")
    run.add_argument("-h", "--help", action="store_true", help="show this help and, with NAME, its config fields")
    run.add_argument("--quick", action="store_true", help="reduced config, < 1 min on 2 CPU cores")
    run.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    run.add_argument("--config", metavar="FILE.json", help="config fields from a JSON object (nested or dotted keys)")
    run.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config fields (wins over all)")
    run.add_argument("--tensorboard", metavar="DIR", help="also log the metrics as TensorBoard events in DIR")
    _add_execution_options(run)
    run.set_defaults(func=cmd_run, parser=run)
    resume = sub.add_parser("resume", help="continue an interrupted run from its last checkpoint", allow_abbrev=False)
    resume.add_argument("dir")
    resume.add_argument("--tensorboard", metavar="DIR", help="TensorBoard events in DIR (default: the run's own choice)")
    _add_execution_options(resume)
    resume.set_defaults(func=cmd_resume)
    steer = sub.add_parser(
        "steer", help="generate with SAE features of a run clamped", allow_abbrev=False,
        description="Clamp one or more SAE features of a run (the SAE's error term kept) and show the greedy "
                    "continuation and the next-token distribution, unsteered and for every clamp setting.",
        epilog="Several features: repeat --feature N --value X; the i-th --value clamps the i-th --feature, "
               "all at once. --values X ... are further values of the last --feature, the others held at their "
               "--value: each value is one setting, and all settings run as one vmapped call (with --values the "
               "last --feature may go without a --value). E.g. --feature 3 --value 2 --feature 5 --value 0 "
               "--values 10 20 runs (3=2, 5=0), (3=2, 5=10), (3=2, 5=20).")
    steer.add_argument("run", help="a run directory with model/ and sae/ (e.g. from `run monosemanticity`)")
    steer.add_argument("prompt")
    steer.add_argument("--feature", type=int, action="append", required=True, metavar="N",
                       help="SAE feature index; repeat to clamp several features (distinct) at once")
    steer.add_argument("--value", type=float, action="append", metavar="X",
                       help="clamp value of the --feature in the same position (repeat, one per --feature)")
    steer.add_argument("--values", type=float, nargs="+", metavar="X",
                       help="more values of the last --feature, the others held: a sweep, one vmapped call")
    steer.add_argument("--n-new", type=int, default=40, help="tokens to generate (bytes for a byte-level model)")
    steer.set_defaults(func=cmd_steer)
    return parser


class _Failed(Exception):
    """An expected error, already put into words (after cleaning up)."""


def _expected(e: BaseException) -> bool:
    """Whether `e` is an error of the user's input or environment (not a bug): the project's
    own errors (those of modules not yet imported cannot have been raised), OSError, invalid
    JSON, running out of memory (the host's, numpy's "array is too big", XLA's
    RESOURCE_EXHAUSTED or "Out of memory")."""
    kinds: list[type[BaseException]] = [ConfigError, RunDirError, suite.ExperimentError, OSError,
                                        json.JSONDecodeError, MemoryError, KeyError, _Failed]
    for module, names in _PROJECT_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None:
            kinds += [getattr(loaded, n) for n in names]
    if isinstance(e, tuple(kinds)):
        return True
    return _out_of_memory(e)


_PROJECT_ERRORS = {
    "superpos_jax.engine.checkpoint": ("CheckpointMismatch", "CheckpointError"),
    "superpos_jax.interop.safetensors": ("SafetensorsError",),
    "superpos_jax.interop.saelens": ("SAELensFormatError",),
    "superpos_jax.lm.corpus": ("CorpusError",),
    "superpos_jax.lm.io": ("TransformerFormatError",),
    "superpos_jax.lm.steering": ("SteeringError",),
}


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    if isinstance(e, ValueError) and ("array is too big" in text or "Maximum allowed size exceeded" in text):
        return True
    jax_errors = sys.modules.get("jax.errors")
    runtime = getattr(jax_errors, "JaxRuntimeError", None)
    return runtime is not None and isinstance(e, runtime) and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text)


def _message(e: BaseException) -> str:
    """The one line that describes expected error `e`: where it happened, what was wrong."""
    if isinstance(e, json.JSONDecodeError) and not isinstance(e, ConfigError):
        return f"invalid JSON: {e}"
    if isinstance(e, KeyError) and e.args:
        return f"missing key {e.args[0]!r}" if not isinstance(e.args[0], str) or " " not in e.args[0] else e.args[0]
    if isinstance(e, MemoryError):
        return f"out of memory: {e or 'the config asks for more memory than this machine has'}"
    if _out_of_memory(e):
        return f"out of memory (the config asks for arrays too large for this machine): {str(e).splitlines()[0]}"
    msg = str(e)
    if isinstance(e, OSError) and not isinstance(e, ConfigError) and e.filename is not None and str(e.filename) not in msg:
        msg = f"{msg} ({e.filename})"
    return msg


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> int:
    """Run the command in `argv` (default: sys.argv[1:]); return its exit status.

    SIGTERM is caught from the start (see the module docstring); the previous handler is
    restored on return unless `restore_signals` is False (the `superpos` process keeps it until
    it exits, so a SIGTERM after the command finished cannot kill it mid-teardown)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _Termination()) if in_main_thread else None
    try:
        args, extra = build_parser().parse_known_args(argv)
        return args.func(args, extra)
    except _Interrupted as e:
        print(f"superpos: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception as e:
        if not _expected(e):
            raise
        print(f"superpos: error: {_message(e)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None and restore_signals:
            signal.signal(signal.SIGTERM, previous)


def console() -> None:
    """The `superpos` command's entry point: `main()`, then exit with its status."""
    sys.exit(main(restore_signals=False))


if __name__ == "__main__":
    console()
