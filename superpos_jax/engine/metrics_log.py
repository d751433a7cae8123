"""`metrics.jsonl`: one JSON line per chunk of a sweep, and an optional TensorBoard writer.

`run_sweep(..., metrics=MetricsLog(path))` appends, after every chunk, one line (standard
JSON: non-finite numbers are written as null):

    {"sweep": tag,                       (only when the log has one, see `for_sweep`)
     "step": 2500,                       steps done
     "wall_seconds": 12.3,               training wall time so far, summed over resumed calls
     "loss": {"min", "q25", "median", "q75", "max", "mean"},
                                         over the instances whose loss is finite (null: none)
     "n_non_finite": 0,                  instances whose loss is NaN/inf
     "instances": [{"instance": 0, "coords": {"model": "relu", "seed": 0},
                    "loss": 0.0123,      mean loss over the chunk's last window
                    "D": 0.98, ...}]}    the scalar observations of that window (`Trainer.observe`), by name

Observation names are the leaves' paths in the observed pytree (`"a.b"` for `{"a": {"b": x}}`);
only scalar leaves are written. `pandas.read_json(path, lines=True)` reads the file, one row
per chunk.

Resuming is exact: when a sweep starts from step s (a restored checkpoint, or 0), its lines
past s are dropped first, so a resumed run's file equals an uninterrupted run's, wall times
aside. Only process 0 writes. With `tensorboard_dir` the same scalars go to TensorBoard
(`loss/<quantile>`, `loss/n_non_finite`, `instance/<coords>/<name>`) through tensorboardX,
installed by the `tensorboard` extra; a resumed sweep purges the events past its start.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from superpos_jax.engine.distributed import is_primary

QUANTILES: dict[str, float] = {"min": 0.0, "q25": 0.25, "median": 0.5, "q75": 0.75, "max": 1.0}
RESERVED: tuple[str, ...] = ("instance", "coords", "loss")
_TAG = re.compile(r"[^-/\w.]")


def _tensorboardx() -> Any:
    try:
        import tensorboardX
    except ImportError as e:
        raise ImportError(
            "TensorBoard logging needs tensorboardX, which is not installed: "
            "pip install 'superpos-jax[tensorboard]' (or pip install tensorboardX)"
        ) from e
    return tensorboardX


def _json_value(v: Any) -> Any:
    """A JSON-able Python value: NumPy scalars unwrapped, non-finite floats as None."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return str(v)


def observation_names(observed: Any) -> list[str]:
    """The names of the leaves of an observed pytree (their paths, dot-separated).

    Raises:
        ValueError: a name is one of `RESERVED` or appears twice.
    """
    names = []
    for path, _ in jax.tree_util.tree_leaves_with_path(observed):
        name = jax.tree_util.keystr(path, simple=True, separator=".") or "observation"
        if name in RESERVED or name in names:
            raise ValueError(
                f"observation {name!r} cannot be a metrics.jsonl field: names must be unique and not one of {RESERVED}"
            )
        names.append(name)
    return names


def scalar_observations(observed: Any) -> dict[str, np.ndarray]:
    """The scalar-per-instance leaves of `observed` (leaves shaped (instance, ...)), by name."""
    names = observation_names(observed)
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(observed)]
    return {name: leaf for name, leaf in zip(names, leaves, strict=True) if leaf.ndim == 1}


def chunk_record(
    step: int,
    wall_seconds: float,
    losses: np.ndarray,
    observed: Mapping[str, np.ndarray],
    coords: Sequence[Mapping[str, Any]],
    sweep: str | None = None,
) -> dict[str, Any]:
    """The metrics.jsonl line of one chunk (see the module docstring).

    Args:
        step: steps done at the end of the chunk.
        wall_seconds: training wall time so far.
        losses: shape (instance,), each instance's mean loss over the chunk's last window.
        observed: name -> shape (instance,), scalar observations of that window.
        coords: one mapping of grid coordinates per instance.
        sweep: the sweep's tag, written when not None.
    """
    losses = np.asarray(losses, np.float64)
    finite = losses[np.isfinite(losses)]
    if finite.size:
        summary = {k: float(np.quantile(finite, q)) for k, q in QUANTILES.items()}
        summary["mean"] = float(np.mean(finite))
    else:
        summary = {k: None for k in (*QUANTILES, "mean")}
    instances = []
    for i in range(losses.shape[0]):
        row: dict[str, Any] = {"instance": i, "coords": _json_value(dict(coords[i])), "loss": _json_value(float(losses[i]))}
        row.update({name: _json_value(values[i]) for name, values in observed.items()})
        instances.append(row)
    record: dict[str, Any] = {} if sweep is None else {"sweep": sweep}
    record.update(step=int(step), wall_seconds=float(wall_seconds), loss=summary,
                  n_non_finite=int(losses.shape[0] - finite.size), instances=instances)
    return record


def coords_tag(coords: Mapping[str, Any], instance: int) -> str:
    """A TensorBoard tag naming one instance by its grid coordinates ("model_relu.seed_0")."""
    if not coords:
        return f"instance_{instance}"
    return _TAG.sub("_", ".".join(f"{k}_{v}" for k, v in coords.items()))


class MetricsLog:
    """Where `run_sweep` writes its per-chunk metrics: a JSON-lines file and, optionally, a
    TensorBoard log directory (see the module docstring for the format).

    Args:
        path: the metrics.jsonl file (created with its folder on first use).
        tensorboard_dir: also write TensorBoard scalars here (needs tensorboardX, the
            `tensorboard` extra; checked now, before anything trains).
        sweep: the tag of the sweep, for a run with several sweeps sharing one file (each
            line carries it; a resumed sweep drops only its own lines; its TensorBoard
            events go to `tensorboard_dir/<sweep>`). See `for_sweep`.
    """

    def __init__(self, path: str | Path, *, tensorboard_dir: str | Path | None = None, sweep: str | None = None):
        if tensorboard_dir is not None:
            _tensorboardx()
        self.path = Path(path)
        self.tensorboard_dir = None if tensorboard_dir is None else Path(tensorboard_dir)
        self.sweep = sweep
        self._file: TextIO | None = None
        self._writer: Any = None
        self._wall_offset = 0.0

    def for_sweep(self, sweep: str | None) -> MetricsLog:
        """The same file and TensorBoard directory, for the sweep tagged `sweep`."""
        return MetricsLog(self.path, tensorboard_dir=self.tensorboard_dir, sweep=sweep)

    def _own(self, record: Mapping[str, Any]) -> bool:
        return record.get("sweep") == self.sweep

    def open(self, start_step: int) -> None:
        """Start writing a sweep that begins at `start_step`: drop this sweep's lines past it
        (and any unreadable line), and continue its wall time from the last kept line."""
        self.close()
        self._wall_offset = 0.0
        if not is_primary():
            return
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                    continue
                if self._own(record):
                    if record["step"] > start_step:
                        continue
                    self._wall_offset = float(record.get("wall_seconds") or 0.0)
                kept.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)
        self._file = self.path.open("a")
        if self.tensorboard_dir is not None:
            logdir = self.tensorboard_dir if self.sweep is None else self.tensorboard_dir / self.sweep
            purge = start_step + 1 if start_step > 0 else None
            self._writer = _tensorboardx().SummaryWriter(str(logdir), purge_step=purge)

    def log(
        self,
        step: int,
        seconds: float,
        losses: np.ndarray,
        observed: Mapping[str, np.ndarray],
        coords: Sequence[Mapping[str, Any]],
    ) -> None:
        """Append the line of the chunk ending at `step`, `seconds` into this call's training
        (see `chunk_record` for the other arguments); a no-op outside process 0."""
        if self._file is None:
            if is_primary():
                raise RuntimeError("MetricsLog.log before open(start_step)")
            return
        record = chunk_record(step, self._wall_offset + seconds, losses, observed, coords, self.sweep)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            self._write_tensorboard(record, coords)

    def _write_tensorboard(self, record: Mapping[str, Any], coords: Sequence[Mapping[str, Any]]) -> None:
        step, w = record["step"], self._writer
        for name, value in record["loss"].items():
            if value is not None:
                w.add_scalar(f"loss/{name}", value, step)
        w.add_scalar("loss/n_non_finite", record["n_non_finite"], step)
        for row in record["instances"]:
            tag = coords_tag(coords[row["instance"]], row["instance"])
            for name, value in row.items():
                if name not in ("instance", "coords") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    w.add_scalar(f"instance/{tag}/{name}", value, step)
        w.flush()

    def close(self) -> None:
        """Flush and close the file and the TensorBoard writer (open again to continue)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
