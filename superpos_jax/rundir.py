"""The run directory of an experiment: the one place that knows its layout.

    <root>/config.json        what ran: {"experiment", "quick", "config", ["path"]}
    <root>/summary.json       the experiment's results (per-instance records with grid coordinates)
    <root>/metrics.jsonl      one line per training chunk (step, per-instance values)
    <root>/figures/*.png      the figures
    <root>/checkpoints/       orbax checkpoints of the (untagged) sweep
    <root>/checkpoints/<tag>/ ... of sweep `tag` when an experiment trains several

`run` refuses a non-empty directory (earlier results are never overwritten); `resume` opens
one that has a config.json and a checkpoint. In a multi-process job every process holds the
same `RunDir`; only process 0 writes config.json and summary.json (atomically).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from superpos_jax.config import ConfigError, read_json, write_json

if TYPE_CHECKING:
    from superpos_jax.engine.metrics_log import MetricsLog

CONFIG = "config.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
_RESERVED = (CONFIG, SUMMARY, METRICS, FIGURES, CHECKPOINTS)


class RunDirError(ValueError):
    """A run directory cannot be used as asked (not empty for `run`, not a run for `resume`)."""


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

    def ensure_empty(self) -> None:
        """Raise `RunDirError` unless `root` is missing or empty (checked by every process)."""
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise RunDirError(
                f"output directory {self.root} is not empty; choose another --out, or continue it with "
                f"`superpos resume {self.root}`"
            )

    def create(self, meta: dict[str, Any]) -> None:
        """Make the directory and write config.json = `meta` (process 0), between barriers so
        that every process has seen it empty before and finds it made after."""
        _barrier("superpos-run-checked")
        if _is_primary():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.config_path, meta)
        _barrier("superpos-run-created")

    def read_config(self) -> dict[str, Any]:
        """config.json of an existing run; `RunDirError` when it is missing or malformed."""
        if not self.config_path.is_file():
            raise RunDirError(f"cannot resume {self.root}: it has no {CONFIG} (not a run directory)")
        try:
            meta = read_json(self.config_path)
        except ConfigError as e:
            raise RunDirError(f"cannot resume {self.root}: {e}") from None
        if not isinstance(meta, dict) or "experiment" not in meta or "config" not in meta:
            raise RunDirError(f"cannot resume {self.root}: {self.config_path} lacks 'experiment' or 'config'")
        return meta

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically (process 0 only)."""
        if _is_primary():
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.summary_path, summary)
