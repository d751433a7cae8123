"""The run directory of an experiment: the one place that knows its layout.

    <root>/config.json        what ran: {"experiment", "quick", "config", ["path"]}
    <root>/status.json        the start marker: {"status": "started" | "finished", "time", "pid", "host"}
    <root>/summary.json       the experiment's results (per-instance records with grid coordinates)
    <root>/metrics.jsonl      one line per training chunk (step, per-instance values)
    <root>/figures/*.png      the figures
    <root>/checkpoints/       orbax checkpoints of the (untagged) sweep
    <root>/checkpoints/<tag>/ ... of sweep `tag` when an experiment trains several

A run directory is always resumable or gone. `run` refuses a non-empty directory (earlier
results are never overwritten), then writes the start marker status.json and, last,
config.json; from then on `resume` continues it from its newest checkpoint or, when it has
none yet (killed during the first compile, say), starts the same config again from step 0.
A directory that holds the marker but no config.json (killed while being created) counts
as empty for `run`.
A run that fails with an expected error before its first checkpoint is removed again
(`discard`: whatever it created, and nothing else), so that the same `run` can be repeated.
In a multi-process job every process holds the same `RunDir`; only process 0 writes
config.json, status.json and summary.json (atomically).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superpos_jax.config import ConfigError, read_json, write_json

if TYPE_CHECKING:
    from superpos_jax.engine.metrics_log import MetricsLog

CONFIG = "config.json"
STATUS = "status.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
_CREATION = (STATUS, STATUS + ".tmp", CONFIG + ".tmp")
"""What an interrupted `create` may leave (the marker, before config.json): `run` reuses it."""
_RESERVED = (CONFIG, STATUS, SUMMARY, METRICS, FIGURES, CHECKPOINTS)


class RunDirError(ValueError):
    """A run directory cannot be used as asked (not empty or not a directory for `run`, not a
    run for `resume`)."""


def _is_primary() -> bool:
    from superpos_jax.engine.distributed import is_primary

    return is_primary()


def _barrier(name: str) -> None:
    from superpos_jax.engine.distributed import barrier

    barrier(name)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The directory `root` of one run, and where each of its files lives.

    Attributes:
        root: the directory.
        tensorboard: where the metrics log also writes TensorBoard events (None: nowhere).
    """

    root: Path
    tensorboard: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.tensorboard is not None:
            object.__setattr__(self, "tensorboard", Path(self.tensorboard))

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    @property
    def figures(self) -> Path:
        """The figures folder (created by whoever writes the first figure)."""
        return self.root / FIGURES

    def figure_path(self, name: str) -> Path:
        """Where figure `name` goes (".png" added when `name` has no suffix)."""
        return self.figures / (name if Path(name).suffix else f"{name}.png")

    def path(self, name: str) -> Path:
        """Where an experiment's own output `name` goes (e.g. "model", "browser"): a file or
        folder directly under the root that is none of the run directory's own."""
        if name in _RESERVED or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{name!r} cannot be an experiment's output: it must be one name, not one of {_RESERVED}")
        return self.root / name

    def checkpoint_dir(self, tag: str | None = None) -> Path:
        """The checkpoints of the untagged sweep, or of sweep `tag` (`checkpoints/<tag>`)."""
        if tag is not None and (not tag or "/" in tag or tag.startswith(".")):
            raise ValueError(f"a sweep tag names one folder, got {tag!r}")
        return self.root / CHECKPOINTS if tag is None else self.root / CHECKPOINTS / tag

    def checkpoint_dirs(self) -> list[Path]:
        """Every folder that may hold a sweep's checkpoints: checkpoints/ and each tag in it."""
        top = self.root / CHECKPOINTS
        return [top, *sorted(p for p in top.iterdir() if p.is_dir())] if top.is_dir() else []

    def has_checkpoint(self) -> bool:
        """Whether any sweep of this run has a committed checkpoint."""
        from superpos_jax.engine.checkpoint import latest_step

        return any(latest_step(d) is not None for d in self.checkpoint_dirs())

    def figures_written(self) -> list[Path]:
        """The figures on disk, sorted."""
        return sorted(self.figures.glob("*.png")) if self.figures.is_dir() else []

    def metrics_log(self, tag: str | None = None) -> MetricsLog:
        """The sink `run_sweep` appends a line of metrics.jsonl to after every chunk of sweep
        `tag` (and TensorBoard events under `tensorboard/<tag>`, when asked); it writes on
        process 0 only."""
        from superpos_jax.engine.metrics_log import MetricsLog

        return MetricsLog(self.metrics_path, tensorboard_dir=self.tensorboard, sweep=tag)

    # ------------------------------------------------------------ lifecycle

    @property
    def status_path(self) -> Path:
        return self.root / STATUS

    def ensure_empty(self) -> None:
        """Raise `RunDirError` unless `root` is missing or an empty directory that `create` can
        write into (checked by every process)."""
        root = self.root
        if root.is_symlink() and not root.exists():
            raise RunDirError(f"output directory {root} is a symbolic link to {os.readlink(root)}, which does not exist")
        if root.exists() and not root.is_dir():
            raise RunDirError(f"output directory {root} is a file, not a directory; choose another --out")
        if root.is_dir():
            if any(p.name not in _CREATION for p in root.iterdir()):
                raise RunDirError(
                    f"output directory {root} is not empty; choose another --out, or continue it with "
                    f"`superpos resume {root}`"
                )
            writable = root
        else:
            writable = next(p for p in root.absolute().parents if p.exists() or p.is_symlink())
            if not writable.is_dir():
                raise RunDirError(f"cannot create output directory {root}: {writable} is not a directory")
        if not os.access(writable, os.W_OK | os.X_OK):
            raise RunDirError(f"cannot create output directory {root}: {writable} is not writable")

    def create(self, meta: dict[str, Any]) -> list[Path]:
        """Make the directory, write the start marker and then config.json = `meta` (process 0),
        between barriers so that every process has seen it empty before and finds it made after.

        Returns:
            The directories this call made, outermost first (`root` and any missing parents;
            empty on other processes), for `discard`.
        """
        _barrier("superpos-run-checked")
        made: list[Path] = []
        if _is_primary():
            made = [p for p in (*reversed(self.root.absolute().parents), self.root.absolute()) if not p.exists()]
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                self.mark("started")
                write_json(self.config_path, meta)  # last: a directory with config.json is a whole run
            except OSError as e:
                raise RunDirError(f"cannot create output directory {self.root}: {e.strerror or e}") from None
        _barrier("superpos-run-created")
        return made

    def mark(self, status: str) -> None:
        """Write the start marker: `status` ("started" by `run` and `resume`, "finished" with the
        summary), when and by which process (process 0 only)."""
        if _is_primary():
            write_json(self.status_path, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                          "pid": os.getpid(), "host": socket.gethostname()})

    def is_started(self) -> bool:
        """Whether `run` started here: the start marker exists (with config.json: it completed)."""
        return self.status_path.is_file()

    def discard(self, made: list[Path]) -> None:
        """Remove what this run created, after it failed before its first checkpoint: the
        directories in `made` (from `create`), or, when `root` existed (it was empty then),
        everything in it; nothing outside `root` but the empty parents it made. Process 0 only."""
        if not _is_primary():
            return
        root = self.root.absolute()
        if root in made:
            shutil.rmtree(root, ignore_errors=True)
            for parent in reversed(made[: made.index(root)]):
                try:
                    parent.rmdir()
                except OSError:
                    break
        elif root.is_dir():
            for entry in root.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def read_config(self) -> dict[str, Any]:
        """config.json of an existing run; `RunDirError` when it is missing or malformed."""
        if not self.config_path.is_file():
            if self.is_started():
                raise RunDirError(f"cannot resume {self.root}: it was interrupted while being created (no {CONFIG}); "
                                  f"start it again with `superpos run ... --out {self.root}`")
            raise RunDirError(f"cannot resume {self.root}: it has no {CONFIG} (not a run directory)")
        try:
            meta = read_json(self.config_path)
        except ConfigError as e:
            raise RunDirError(f"cannot resume {self.root}: {e}") from None
        if not isinstance(meta, dict) or "experiment" not in meta or "config" not in meta:
            raise RunDirError(f"cannot resume {self.root}: {self.config_path} lacks 'experiment' or 'config'")
        return meta

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically and mark the run finished (process 0 only)."""
        if _is_primary():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.summary_path, summary)
            self.mark("finished")
