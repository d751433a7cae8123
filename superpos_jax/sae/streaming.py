"""Activations on disk, streamed beyond memory: `ShardedActivations` and `write_shards`.

A data set of activations is a list of *shards*: `.npy` files (one 2-D array, C order) or
`.safetensors` files (one named 2-D tensor each), float16 or float32, every one with the same
d_in. `ShardedActivations` is a `FedSource` whose `stream` reads each compiled call's batches
from the shards with explicit, bounded file reads (never a memory map, whose pages would count
in the resident set), so the host memory it holds is set by `buffer_bytes`, not by the data.

The order (a pure function of `seed` and the step, so a resumed run reads exactly what the
uninterrupted one read):

1. Every shard is cut into contiguous *blocks* of `block_rows` rows; the last block of a shard
   holds what is left (between 1 and `block_rows` rows). Blocks are numbered shard by shard.
2. Epoch e visits every block of every shard once, in the order
   `np.random.default_rng([seed, e]).permutation(n_blocks)`.
3. That order is cut into *windows* of `window_blocks` consecutive blocks (the last window may
   hold fewer); window w's rows are the rows of its blocks, concatenated in that order.
4. The rows of window w are visited in the order `np.random.default_rng([seed, e, w])
   .permutation(rows in window w)`; the epoch's row order is window 0's rows, then window 1's, ...
5. Step t reads positions `[p * batch_size, (p + 1) * batch_size)` of epoch e's row order, with
   `e, p = divmod(t, steps_per_epoch)` and `steps_per_epoch = n_rows // batch_size`: the last
   `n_rows % batch_size` rows of each epoch's order are dropped (different rows each epoch, as in
   `ArraySource`), so every row is read at most once per epoch, exactly once when the batch size
   divides the rows.

Mixing: a batch draws its rows uniformly from one window (or two, where it straddles a window
boundary), i.e. from `window_blocks` blocks chosen uniformly from all shards; only rows of the
same block are ever correlated by position. Reading a window is `window_blocks` sequential reads
of `block_rows` rows each, wherever the blocks lie.

Host memory: one window of float32 rows (and its row permutation) plus two calls' float32 rows
(the one being read and the one handed to the devices) fit in `buffer_bytes`; `steps_per_call`
takes a quarter of the budget for one call, the window what is left. On a CPU backend the
devices' copies of a call (one per device of the mesh) are host memory too, beyond the budget.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Float, PRNGKeyArray

from superpos_jax.interop import safetensors as _st
from superpos_jax.sae.sources import ArrayRows, FedSource

__all__ = ["Shard", "ShardedActivations", "write_shards"]

FORMATS = (".npy", ".safetensors")
_ALLOWED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def _allowed(dtype: np.dtype) -> bool:
    """float16 or float32, in either byte order."""
    return dtype.kind == "f" and dtype.itemsize in (2, 4)
_DIGEST_BYTES = 4096  # bytes hashed at each end of a shard's data, for the fingerprint
_NPY_MAX_HEADER = 100_000


@dataclass(frozen=True)
class Shard:
    """One validated shard file: where its rows start and how they are stored.

    Attributes:
        path: the file. format: ".npy" or ".safetensors". tensor: the tensor's name (None for
            `.npy`). rows, d_in: its shape. dtype: float16 or float32 (either byte order).
        offset: byte offset of row 0 in the file. size: the file's size in bytes.
    """

    path: str
    format: str
    tensor: str | None
    rows: int
    d_in: int
    dtype: np.dtype
    offset: int
    size: int

    @property
    def row_bytes(self) -> int:
        return self.d_in * self.dtype.itemsize


class ShardedActivations(FedSource):
    """Shuffled (batch_size, d_in) batches streamed from activation shards on disk.

    The order, the mixing and the memory bound are in the module docstring. The source is its
    own `stream` (`engine.stream.Stream`): `read(start, n)` gives float32 rows shaped
    (n, batch_size, d_in) for global steps [start, start + n). Every instance of a sweep trains on
    the same streamed batch (`FedSource.take`). `shared` is an `ArrayRows` of the first
    `stats_samples` rows of epoch 0's order (all rows if there are fewer), for the statistics an
    SAE takes at init (`stats`).

    Args:
        paths: a shard file, a directory (its files matching `glob`, sorted by name), or a
            sequence of shard files (in that order).
        batch_size: rows per step.
        seed: non-negative integer seed of the order.
        buffer_bytes: the host memory budget of the stream (default 256 MiB).
        tensor: the tensor to read from `.safetensors` shards (default: each file's only one).
        glob: pattern of the shards in a directory (default: every `.npy` and `.safetensors`).
        block_rows: rows per block (the unit of the block permutation and of one read).
        window_blocks: blocks per shuffle window (default: as many as the budget holds, at most
            all of them). It sets the order, so it is part of the fingerprint.
        stats_samples: rows kept in `shared` for init statistics.

    Attributes:
        shards: the validated `Shard`s. n_rows, d_in, n_blocks, steps_per_epoch, window_blocks,
        steps_per_call, host_bytes (the host memory the budget accounts for).

    Raises (before anything is read or compiled): FileNotFoundError for a missing shard or a
    directory without shards; ValueError / TypeError naming the file and the field for a bad
    format, a shape that is not 2-D, a dtype other than float16/float32, a d_in that differs
    from the first shard's, a truncated file, fewer rows than one batch, or a budget that
    cannot hold one block and two one-step calls.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        batch_size: int,
        seed: int,
        buffer_bytes: int = 256 * 2**20,
        tensor: str | None = None,
        glob: str | None = None,
        block_rows: int = 1024,
        window_blocks: int | None = None,
        stats_samples: int = 4096,
    ):
        for name, value in (("batch_size", batch_size), ("buffer_bytes", buffer_bytes), ("block_rows", block_rows),
                            ("stats_samples", stats_samples)):
            _check_positive_int(name, value)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if window_blocks is not None:
            _check_positive_int("window_blocks", window_blocks)
        if tensor is not None and (not isinstance(tensor, str) or not tensor):
            raise ValueError(f"tensor must be a non-empty tensor name, got {tensor!r}")
        self.shards = tuple(_open_shard(p, tensor) for p in _shard_paths(paths, glob))
        first = self.shards[0]
        for shard in self.shards[1:]:
            if shard.d_in != first.d_in:
                raise ValueError(f"shard {shard.path!r}: d_in = {shard.d_in}, but the first shard {first.path!r} "
                                 f"has d_in = {first.d_in}; every shard must have the same d_in")
        self.batch_size, self.seed, self.block_rows = int(batch_size), int(seed), int(block_rows)
        self.buffer_bytes, self.tensor = int(buffer_bytes), tensor
        self.d_in = first.d_in
        self.n_rows = sum(s.rows for s in self.shards)
        if self.n_rows < self.batch_size:
            raise ValueError(f"need at least one batch: the shards hold {self.n_rows} rows < batch_size "
                             f"{self.batch_size}")
        self.steps_per_epoch = self.n_rows // self.batch_size

        shard_start = np.cumsum([0] + [s.rows for s in self.shards])
        blocks = [(i, r) for i, s in enumerate(self.shards) for r in range(0, s.rows, self.block_rows)]
        self._block_shard = np.array([i for i, _ in blocks], np.int64)
        self._block_row0 = np.array([r for _, r in blocks], np.int64)
        rows_of = np.array([s.rows for s in self.shards], np.int64)
        self._block_len = np.minimum(self.block_rows, rows_of[self._block_shard] - self._block_row0)
        self._block_global0 = shard_start[self._block_shard] + self._block_row0
        self.n_blocks = len(blocks)

        step_bytes = self.batch_size * self.d_in * 4
        row_cost = self.d_in * 4 + 8  # a float32 row of the window and its permutation entry
        scratch = self.block_rows * max(s.row_bytes for s in self.shards)  # one block as stored
        need = 2 * step_bytes + self.block_rows * row_cost + scratch
        if self.buffer_bytes < need:
            raise ValueError(
                f"buffer_bytes = {self.buffer_bytes} is too small: it must hold two one-step calls "
                f"(2 x {step_bytes} bytes) and one block of {self.block_rows} rows ({self.block_rows * row_cost} "
                f"bytes, + {scratch} to read it), at least {need} bytes")
        self.steps_per_call = max(1, self.buffer_bytes // 4 // step_bytes)
        free = self.buffer_bytes - 2 * self.steps_per_call * step_bytes - scratch
        fits = max(1, free // (self.block_rows * row_cost))
        if window_blocks is None:
            self.window_blocks = int(min(fits, self.n_blocks))
        else:
            if window_blocks > fits:
                raise ValueError(
                    f"window_blocks = {window_blocks} does not fit buffer_bytes = {self.buffer_bytes}: at most "
                    f"{fits} blocks of {self.block_rows} rows fit beside two calls of {self.steps_per_call} steps")
            self.window_blocks = int(min(window_blocks, self.n_blocks))
        self.host_bytes = int(2 * self.steps_per_call * step_bytes + self.window_blocks * self.block_rows * row_cost
                              + scratch)
        self.n_windows = -(-self.n_blocks // self.window_blocks)

        self._lock = threading.Lock()
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._window: tuple[int, int] | None = None
        self._window_rows = np.empty((0, self.d_in), np.float32)
        self._window_perm = np.empty(0, np.int64)
        self._scratch = np.empty(0, np.uint8)
        self._fingerprint = self._describe()
        n_stats = min(int(stats_samples), self.n_rows)
        self.shared = ArrayRows(self._read_positions(0, 0, n_stats))
        self.stream = self

    # -- the order -------------------------------------------------------------------------------

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch `epoch`'s block order and the first position of each window (+ the end)."""
        if epoch not in self._layouts:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
            lengths = self._block_len[order]
            per_window = np.add.reduceat(lengths, np.arange(0, self.n_blocks, self.window_blocks))
            starts = np.concatenate([[0], np.cumsum(per_window)]).astype(np.int64)
            if len(self._layouts) >= 2:  # reads touch at most the current and the next epoch
                self._layouts.pop(min(self._layouts))
            self._layouts[epoch] = (order, starts)
        return self._layouts[epoch]

    def _window_blocks_of(self, epoch: int, window: int) -> np.ndarray:
        order, _ = self._layout(epoch)
        return order[window * self.window_blocks : (window + 1) * self.window_blocks]

    def _window_order(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(global row of each local row of the window, the window's row permutation)."""
        blocks = self._window_blocks_of(epoch, window)
        local = np.concatenate([np.arange(g, g + n) for g, n in zip(self._block_global0[blocks], self._block_len[blocks])])
        return local, np.random.default_rng([self.seed, epoch, window]).permutation(local.shape[0])

    def _segments(self, epoch: int, p0: int, p1: int) -> Iterable[tuple[int, int, int]]:
        """(window, first, last) local positions covering epoch positions [p0, p1)."""
        _, starts = self._layout(epoch)
        w = int(np.searchsorted(starts, p0, side="right")) - 1
        while p0 < p1:
            end = min(p1, int(starts[w + 1]))
            yield w, p0 - int(starts[w]), end - int(starts[w])
            p0, w = end, w + 1

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s whole row order: global row indices (rows numbered shard by shard),
        int64, shape (n_rows,). For inspection and tests: it holds 8 bytes per row."""
        _check_non_negative_int("epoch", epoch)
        with self._lock:
            _, starts = self._layout(int(epoch))
            parts = []
            for w in range(self.n_windows):
                local, perm = self._window_order(int(epoch), w)
                parts.append(local[perm])
            assert sum(p.shape[0] for p in parts) == starts[-1]
            return np.concatenate(parts)

    def indices(self, step: int) -> np.ndarray:
        """Global row indices of the batch at global `step`, int64, shape (batch_size,)."""
        _check_non_negative_int("step", step)
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        with self._lock:
            out = []
            for w, q0, q1 in self._segments(epoch, pos * self.batch_size, (pos + 1) * self.batch_size):
                local, perm = self._window_order(epoch, w)
                out.append(local[perm[q0:q1]])
            return np.concatenate(out)

    # -- reading ---------------------------------------------------------------------------------

    def _load_window(self, epoch: int, window: int) -> None:
        if self._window == (epoch, window):
            return
        self._window = None
        blocks = self._window_blocks_of(epoch, window)
        lengths = self._block_len[blocks]
        slots = np.concatenate([[0], np.cumsum(lengths)])
        if self._window_rows.shape[0] < self.window_blocks * self.block_rows:
            self._window_rows = np.empty((self.window_blocks * self.block_rows, self.d_in), np.float32)
            self._scratch = np.empty(self.block_rows * max(s.row_bytes for s in self.shards), np.uint8)
        # read shard by shard, each in file order; every block lands in its slot of the window
        reads = sorted(range(len(blocks)), key=lambda j: (self._block_shard[blocks[j]], self._block_row0[blocks[j]]))
        handle, open_shard = None, -1
        try:
            for j in reads:
                b = blocks[j]
                s = int(self._block_shard[b])
                if s != open_shard:
                    if handle is not None:
                        handle.close()
                    handle, open_shard = open(self.shards[s].path, "rb", buffering=0), s
                self._read_block(handle, self.shards[s], int(self._block_row0[b]), int(lengths[j]),
                                 self._window_rows[slots[j] : slots[j + 1]])
        finally:
            if handle is not None:
                handle.close()
        self._window_perm = np.random.default_rng([self.seed, epoch, window]).permutation(int(slots[-1]))
        self._window = (epoch, window)

    def _read_block(self, handle: Any, shard: Shard, row0: int, count: int, out: np.ndarray) -> None:
        """Rows [row0, row0 + count) of `shard` into the float32 rows `out`, by one explicit read."""
        nbytes = count * shard.row_bytes
        direct = shard.dtype == np.dtype(np.float32)  # native float32: read straight into the window
        buf = out.reshape(-1).view(np.uint8) if direct else self._scratch[:nbytes]
        handle.seek(shard.offset + row0 * shard.row_bytes)
        view, done = memoryview(buf), 0
        while done < nbytes:
            got = handle.readinto(view[done:])
            if not got:
                raise OSError(f"shard {shard.path!r}: ended after {shard.offset + row0 * shard.row_bytes + done} "
                              f"bytes while reading rows {row0}..{row0 + count} (was it truncated after opening?)")
            done += got
        if not direct:
            out[...] = buf.view(shard.dtype).reshape(count, shard.d_in)

    def _read_positions(self, epoch: int, p0: int, p1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at positions [p0, p1) of epoch `epoch`'s order, float32 (p1 - p0, d_in)."""
        out = np.empty((p1 - p0, self.d_in), np.float32) if out is None else out
        with self._lock:
            at = 0
            for w, q0, q1 in self._segments(epoch, p0, p1):
                self._load_window(epoch, w)
                np.take(self._window_rows, self._window_perm[q0:q1], axis=0, out=out[at : at + q1 - q0], mode="clip")
                at += q1 - q0
        return out

    def read(self, start: int, n_steps: int) -> Float[np.ndarray, "step batch d_in"]:
        """The rows of global steps [start, start + n_steps): float32 (n_steps, batch_size, d_in)."""
        _check_non_negative_int("start", start)
        _check_positive_int("n_steps", n_steps)
        out = np.empty((n_steps * self.batch_size, self.d_in), np.float32)
        step, end, at = int(start), int(start) + int(n_steps), 0
        while step < end:
            epoch, pos = divmod(step, self.steps_per_epoch)
            take = min(end - step, self.steps_per_epoch - pos)  # this epoch's steps
            rows = take * self.batch_size
            self._read_positions(epoch, pos * self.batch_size, pos * self.batch_size + rows, out[at : at + rows])
            step, at = step + take, at + rows
        return out.reshape(n_steps, self.batch_size, self.d_in)

    def spec(self, n_steps: int) -> jax.ShapeDtypeStruct:
        """The shape and dtype of `read(·, n_steps)`."""
        return jax.ShapeDtypeStruct((n_steps, self.batch_size, self.d_in), jnp.float32)

    def fingerprint(self) -> dict[str, Any]:
        """The data and its order: every shard's file name (not its folder, so a copied data set
        resumes), format, tensor, shape, dtype, size and a SHA-256 of the first and last 4 KiB of
        its data (not its mtime, which a copy changes); the seed, batch, block and window sizes."""
        return self._fingerprint

    def position(self, step: int) -> dict[str, int]:
        """The reading position after `step` steps: the epoch, the step and the row within it."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        return {"epoch": epoch, "step_in_epoch": pos, "row_in_epoch": pos * self.batch_size,
                "rows_read": int(step) * self.batch_size}

    def _describe(self) -> dict[str, Any]:
        shards = []
        for s in self.shards:
            digest = hashlib.sha256()
            data_bytes = s.rows * s.row_bytes
            with open(s.path, "rb") as f:
                f.seek(s.offset)
                digest.update(f.read(min(_DIGEST_BYTES, data_bytes)))
                f.seek(s.offset + max(0, data_bytes - _DIGEST_BYTES))
                digest.update(f.read(min(_DIGEST_BYTES, data_bytes)))
            shards.append({"name": os.path.basename(s.path), "format": s.format, "tensor": s.tensor,
                           "shape": [s.rows, s.d_in], "dtype": s.dtype.str, "bytes": s.size,
                           "sha256_ends": digest.hexdigest()})
        return {"source": "ShardedActivations", "shards": shards, "n_rows": self.n_rows, "d_in": self.d_in,
                "batch_size": self.batch_size, "seed": self.seed, "block_rows": self.block_rows,
                "window_blocks": self.window_blocks}

    # -- FedSource -------------------------------------------------------------------------------

    def stats(self, key: PRNGKeyArray, n: int, hparams: Any, shared: Any) -> Float[Array, "n d_in"]:
        """The first n rows of `shared` (a uniform sample of the data without replacement); rows
        drawn uniformly with replacement from it when it holds fewer than n."""
        if n <= shared.x.shape[0]:
            return shared.x[:n]
        return shared.sample(key, n)


def write_shards(
    rows: npt.ArrayLike | Iterable[npt.ArrayLike],
    directory: str | os.PathLike[str],
    rows_per_shard: int,
    format: Literal["npy", "safetensors"] = "npy",
    *,
    dtype: npt.DTypeLike | None = None,
    tensor: str = "activations",
    prefix: str = "shard",
) -> list[Path]:
    """Write activations as shards `{prefix}_{i:05d}.npy` (or `.safetensors`) in `directory`.

    Args:
        rows: a 2-D array (rows, d_in), or an iterable of 2-D arrays with the same d_in (e.g.
            batches of harvested activations), written in order.
        directory: where the shards go (created if missing; must not hold shards of `prefix`).
        rows_per_shard: rows per shard (the last shard holds what is left).
        format: "npy" or "safetensors" (one tensor named `tensor` per file).
        dtype: float16 or float32 to store (default: the rows' own, which must be one of them).

    Each shard is written to a temporary file and renamed, so a shard file is whole or absent.
    Memory: one shard of rows at a time. Returns the paths written, in order.
    """
    _check_positive_int("rows_per_shard", rows_per_shard)
    if format not in ("npy", "safetensors"):
        raise ValueError(f"format must be 'npy' or 'safetensors', got {format!r}")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "." + format
    existing = sorted(out_dir.glob(f"{_glob.escape(prefix)}_*{ext}"))
    if existing:
        raise FileExistsError(f"{out_dir} already holds shards of prefix {prefix!r} (e.g. {existing[0].name}); "
                              "write into an empty directory or choose another prefix")
    chunks: Iterable[Any] = [rows] if isinstance(rows, np.ndarray) or hasattr(rows, "__array__") else rows
    store = None if dtype is None else np.dtype(dtype)
    if store is not None and store not in _ALLOWED_DTYPES:
        raise TypeError(f"dtype must be float16 or float32, got {store}")
    written: list[Path] = []
    pending: list[np.ndarray] = []
    n_pending, d_in = 0, None

    def flush(count: int) -> None:
        nonlocal pending, n_pending
        joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
        shard, rest = joined[:count], joined[count:]
        path = out_dir / f"{prefix}_{len(written):05d}{ext}"
        _write_one(np.ascontiguousarray(shard), path, format, tensor)
        written.append(path)
        pending, n_pending = ([rest] if rest.shape[0] else []), rest.shape[0]

    for i, chunk in enumerate(chunks):
        chunk = np.asarray(chunk)
        if chunk.ndim != 2:
            raise ValueError(f"rows (chunk {i}) must be 2-D (rows, d_in), got shape {chunk.shape}")
        if d_in is None:
            d_in = chunk.shape[1]
        elif chunk.shape[1] != d_in:
            raise ValueError(f"rows (chunk {i}) have d_in = {chunk.shape[1]}, the first chunk {d_in}")
        kind = store if store is not None else chunk.dtype
        if kind not in _ALLOWED_DTYPES:
            raise TypeError(f"rows (chunk {i}) have dtype {chunk.dtype}; store float16 or float32 (pass dtype=)")
        pending.append(chunk.astype(kind, copy=False))
        n_pending += chunk.shape[0]
        while n_pending >= rows_per_shard:
            flush(rows_per_shard)
    if n_pending:
        flush(n_pending)
    if not written:
        raise ValueError("rows holds no rows: nothing to write")
    return written


def _write_one(shard: np.ndarray, path: Path, format: str, tensor: str) -> None:
    if format == "safetensors":
        _st.save_file({tensor: shard}, path)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array(f, shard, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shard_paths(paths: Any, pattern: str | None) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        root = os.fspath(paths)
        if os.path.isdir(root):
            if pattern is None:
                found = [p for p in _glob.glob(os.path.join(_glob.escape(root), "*")) if p.endswith(FORMATS)]
            else:
                found = _glob.glob(os.path.join(_glob.escape(root), pattern))
            found = sorted(p for p in found if os.path.isfile(p))
            if not found:
                wanted = pattern if pattern is not None else "*.npy or *.safetensors"
                raise FileNotFoundError(f"no shard files ({wanted}) in directory {root!r}")
            return found
        return [root]
    try:
        listed = [os.fspath(p) for p in paths]
    except TypeError:
        raise TypeError(f"paths must be a file, a directory or a sequence of files, got {paths!r}") from None
    if not listed:
        raise ValueError("paths is an empty sequence: give at least one shard file")
    return listed


def _open_shard(path: str, tensor: str | None) -> Shard:
    if not os.path.exists(path):
        raise FileNotFoundError(f"shard file not found: {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"shard {path!r} is not a regular file")
    if not path.endswith(FORMATS):
        raise ValueError(f"shard {path!r}: unknown format; shards are {' or '.join(FORMATS)} files")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if path.endswith(".npy"):
                name, shape, dtype, offset = None, *_npy_header(f, path)
            else:
                name, shape, dtype, offset = _safetensors_header(f, size, path, tensor)
    except PermissionError as err:
        raise PermissionError(f"shard {path!r} is not readable: {err.strerror}") from err
    if len(shape) != 2:
        raise ValueError(f"shard {path!r}: shape = {tuple(shape)}; a shard must be 2-D (rows, d_in)")
    if not _allowed(dtype):
        raise TypeError(f"shard {path!r}: dtype = {dtype}; shards must be float16 or float32")
    rows, d_in = int(shape[0]), int(shape[1])
    if rows == 0 or d_in == 0:
        raise ValueError(f"shard {path!r}: shape = {(rows, d_in)} holds no data; every shard needs rows and d_in > 0")
    if offset + rows * d_in * dtype.itemsize > size:
        raise ValueError(f"shard {path!r}: truncated: {rows} x {d_in} {dtype} rows need "
                         f"{offset + rows * d_in * dtype.itemsize} bytes, the file has {size}")
    return Shard(path, ".npy" if name is None else ".safetensors", name, rows, d_in, dtype, offset, size)


def _npy_header(f: Any, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_NPY_MAX_HEADER)
        else:
            raise ValueError(f"format version {version} (supported: 1.0, 2.0)")
    except (ValueError, SyntaxError, EOFError) as err:
        raise ValueError(f"shard {path!r}: not a readable .npy file: {err}") from None
    if fortran and len(shape) > 1 and shape[1] > 1 and shape[0] > 1:
        raise ValueError(f"shard {path!r}: stored in Fortran order; shards must be C order (rows contiguous): "
                         "save np.ascontiguousarray(x)")
    return tuple(shape), dtype, f.tell()


def _safetensors_header(f: Any, size: int, path: str, tensor: str | None) -> tuple[str, tuple[int, ...], np.dtype, int]:
    entries = _st.tensor_layout(f, size, path)
    if tensor is None:
        if len(entries) != 1:
            raise ValueError(f"shard {path!r} holds {len(entries)} tensors {sorted(entries)}; name the one to read "
                             "with tensor=")
        tensor = next(iter(entries))
    elif tensor not in entries:
        raise ValueError(f"shard {path!r} has no tensor {tensor!r}; it holds {sorted(entries)}")
    dtype, shape, begin, _ = entries[tensor]
    return tensor, shape, dtype, begin


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
