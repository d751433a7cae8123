"""A local text corpus for tiny-transformer training: the Python standard library by default.

Host side (NumPy): `load_corpus` walks a directory in sorted order, reads the files matching its
include glob patterns (default: `*.py` for the stdlib, every file for a directory of the user's),
keeps those that are UTF-8 text without NUL bytes (binary ones are skipped and counted), and
concatenates each split's files into one uint8 byte array, every file followed by the document
separator `SEPARATOR` (the NUL byte, which no kept file contains). Nothing is downloaded: the
default root is the running interpreter's own stdlib. `check_corpus` is the same selection run only
until both splits hold a file: a cheap pre-flight that raises the `CorpusError` loading would.

Train/validation split is BY FILE and stable: a file goes to validation iff
`zlib.crc32(relative_posix_path) / 2**32 < val_fraction`, so adding or removing files never moves
the others between splits.

Device side (pure JAX, jit/scan/vmap friendly): `sample_windows` draws uniformly placed windows
from a token array with a key; `eval_windows` returns fixed, evenly spaced, non-overlapping
windows for validation. For next-token training ask for `seq_len + 1` tokens and use
`w[:, :-1]` as inputs and `w[:, 1:]` as targets.

Baselines (host, nats per token): `unigram_entropy` is the plug-in entropy of one array's token
frequencies; `unigram_cross_entropy(train, val)` is the loss of the best unigram model fit on
train (add-one smoothed frequencies) evaluated on val — the number a transformer must beat.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import sysconfig
import zlib
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, ArrayLike, Int, Integer, PRNGKeyArray, Shaped

__all__ = [
    "SEPARATOR",
    "STDLIB_INCLUDE",
    "Corpus",
    "CorpusError",
    "check_corpus",
    "default_include",
    "discover_files",
    "eval_windows",
    "load_corpus",
    "sample_windows",
    "stdlib_source_dir",
    "unigram_cross_entropy",
    "unigram_entropy",
]

SEPARATOR: int = 0
DEFAULT_EXCLUDE_DIRS: tuple[str, ...] = ("site-packages", "dist-packages", "__pycache__")
STDLIB_INCLUDE: tuple[str, ...] = ("*.py",)


class CorpusError(ValueError):
    """A corpus directory (with its include patterns and byte budget) holds no usable text."""


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A loaded corpus: two uint8 byte arrays and their provenance.

    Attributes:
        train, val: uint8 arrays of shape (n_train_bytes,), (n_val_bytes,); each file's bytes
            followed by one `SEPARATOR` byte.
        train_files, val_files: relative POSIX paths in load order (sorted).
        n_binary: files matched by the include patterns but skipped as not text (a NUL byte,
            not UTF-8, or unreadable).
        n_over_budget: text files left out by the `max_bytes` cap.
        include: the glob patterns that selected the files.
        root: absolute root directory. val_fraction: the split fraction.
        fingerprint: 16 hex digits of SHA-256 over the split, paths and contents; equal
            fingerprints mean identical train and val arrays (use it in checkpoint fingerprints).
    """

    train: np.ndarray
    val: np.ndarray
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    n_binary: int
    n_over_budget: int
    include: tuple[str, ...]
    root: str
    val_fraction: float
    fingerprint: str

    @property
    def n_train_bytes(self) -> int:
        return int(self.train.size)

    @property
    def n_val_bytes(self) -> int:
        return int(self.val.size)

    @property
    def n_files(self) -> int:
        return len(self.train_files) + len(self.val_files)

    @property
    def n_skipped(self) -> int:
        """Files matched but not used: `n_binary + n_over_budget`."""
        return self.n_binary + self.n_over_budget


def stdlib_source_dir() -> Path:
    """The running interpreter's standard-library source directory (`sysconfig` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"])


def default_include(root: str | os.PathLike | None) -> tuple[str, ...]:
    """The include patterns used when none are given: `*.py` for the standard library (root
    None), every file for a directory of the user's (binary files are then skipped)."""
    return STDLIB_INCLUDE if root is None else ("*",)


def _matches(rel: str, include: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel if "/" in pattern else name, pattern) for pattern in include)


def discover_files(
    root: str | os.PathLike,
    *,
    include: Iterable[str] = ("*",),
    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE_DIRS,
) -> list[Path]:
    """Regular files under `root` that match one of the glob patterns `include`, in sorted order.

    Args:
        root: directory to walk (symlinked directories are not followed).
        include: glob patterns (`fnmatch`, case-sensitive); a pattern without "/" is matched
            against the file name (`*.txt`), one with "/" against the relative POSIX path
            (`docs/*.md`, where `*` also crosses "/"). Binary files are filtered later by
            `load_corpus`.
        exclude_dirs: directory names skipped at any depth.

    Returns:
        absolute paths sorted by their relative POSIX path.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root is not a directory: {os.fspath(root)!r}")
    patterns = _patterns(include)
    excluded = frozenset(exclude_dirs)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _matches(rel, patterns) and path.is_file() and not path.is_symlink():
                found.append((rel, path))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def _patterns(include: Iterable[str] | str) -> tuple[str, ...]:
    patterns = (include,) if isinstance(include, str) else tuple(include)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise CorpusError(f"include must be one or more non-empty glob patterns, got {patterns!r}")
    return patterns


@dataclasses.dataclass
class _Selection:
    """The running state of the file selection shared by `load_corpus` and `check_corpus`."""

    chunks: dict[str, list[bytes]] = dataclasses.field(default_factory=lambda: {"train": [], "val": []})
    names: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {"train": [], "val": []})
    n_matched: int = 0
    n_binary: int = 0
    n_over_budget: int = 0


def _select(
    root: Path, files: list[Path], *, max_bytes: int | None, val_fraction: float, stop_early: bool = False
) -> _Selection:
    """Assign `files` to the splits in order, each file to its path-hash split while the split's
    budget lasts; with `stop_early`, stop once both splits hold a file (the outcome of the full
    selection is then known to be non-empty, since it visits the same files in the same order)."""
    budget = {
        "train": None if max_bytes is None else int((1.0 - val_fraction) * max_bytes),
        "val": None if max_bytes is None else int(val_fraction * max_bytes),
    }
    used = {"train": 0, "val": 0}
    out = _Selection()
    for path in files:
        out.n_matched += 1
        rel = path.relative_to(root).as_posix()
        split = "val" if zlib.crc32(rel.encode("utf-8")) / 2**32 < val_fraction else "train"
        limit = budget[split]
        try:
            size = path.stat().st_size
        except OSError:
            out.n_binary += 1
            continue
        if limit is not None and used[split] + size + 1 > limit:
            out.n_over_budget += 1
            continue
        data = _read_text_bytes(path)
        if data is None:
            out.n_binary += 1
            continue
        out.chunks[split].append(data)
        out.names[split].append(rel)
        used[split] += len(data) + 1
        if stop_early and out.names["train"] and out.names["val"]:
            break
    return out


def _refuse_empty(selection: _Selection, root: Path, include: tuple[str, ...], max_bytes: int | None) -> None:
    names = selection.names
    if not names["train"] and not names["val"]:
        counts = f"{selection.n_matched} file(s) matched: {selection.n_binary} binary or not UTF-8"
        if max_bytes is not None:
            counts += f", {selection.n_over_budget} larger than what is left of the max_bytes={max_bytes} budget"
        raise CorpusError(f"no readable text files matching {list(include)} under {os.fspath(root)!r} ({counts})")
    for split in ("train", "val"):
        if not names[split]:
            raise CorpusError(
                f"the {split} split of {os.fspath(root)!r} is empty ({len(names['train']) + len(names['val'])} "
                "text file(s) kept; files are split by path hash): add files, raise max_bytes or adjust val_fraction"
            )


def _arguments(
    root: str | os.PathLike | None, include: Iterable[str] | str | None, max_bytes: int | None, val_fraction: float
) -> tuple[Path, tuple[str, ...]]:
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise CorpusError(f"max_bytes must be a positive int or None, got {max_bytes}")
    patterns = default_include(root) if include is None else _patterns(include)
    return (stdlib_source_dir() if root is None else Path(root)).resolve(), patterns


def check_corpus(
    root: str | os.PathLike | None = None,
    *,
    include: Iterable[str] | str | None = None,
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE_DIRS,
) -> None:
    """Raise what `load_corpus` with the same arguments would raise, reading only until both
    splits hold a text file (a pre-flight for configs: cheap even for a large corpus).

    Raises:
        FileNotFoundError: `root` is not a directory.
        CorpusError: bad arguments, no readable text file, or an empty split.
    """
    root_path, patterns = _arguments(root, include, max_bytes, val_fraction)
    files = discover_files(root_path, include=patterns, exclude_dirs=exclude_dirs)
    selection = _select(root_path, files, max_bytes=max_bytes, val_fraction=val_fraction, stop_early=True)
    _refuse_empty(selection, root_path, patterns, max_bytes)


def load_corpus(
    root: str | os.PathLike | None = None,
    *,
    include: Iterable[str] | str | None = None,
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE_DIRS,
) -> Corpus:
    """Read a directory of text files into a `Corpus` (train/val byte arrays).

    Files are visited in sorted order; a file is kept iff it decodes as UTF-8 and contains no
    NUL byte (others are counted in `n_binary`). With `max_bytes`, the train split may hold at
    most `(1 - val_fraction) * max_bytes` bytes and val at most `val_fraction * max_bytes`
    (separators included); a file that does not fit its split's remaining budget is skipped
    (`n_over_budget`) and smaller later files may still fill it, so the capped corpus is a
    deterministic subset of the full one.

    Args:
        root: directory; None means `stdlib_source_dir()`.
        include: glob patterns of the files to read (see `discover_files`); None means
            `default_include(root)`: `*.py` for the stdlib, every file for a given directory.
        max_bytes: total byte cap, or None for everything.
        val_fraction: fraction in (0, 1) of files (by path hash) that go to validation.
        exclude_dirs: see `discover_files`.

    Raises:
        FileNotFoundError: `root` is not a directory.
        CorpusError: bad arguments, no readable text file, or an empty split.
    """
    root_path, patterns = _arguments(root, include, max_bytes, val_fraction)
    files = discover_files(root_path, include=patterns, exclude_dirs=exclude_dirs)
    selection = _select(root_path, files, max_bytes=max_bytes, val_fraction=val_fraction)
    _refuse_empty(selection, root_path, patterns, max_bytes)
    names = selection.names
    arrays = {s: _join(selection.chunks[s]) for s in ("train", "val")}
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update(f"{split}:{len(names[split])}\n".encode())
        digest.update("\n".join(names[split]).encode("utf-8"))
        digest.update(arrays[split].tobytes())
    return Corpus(
        train=arrays["train"],
        val=arrays["val"],
        train_files=tuple(names["train"]),
        val_files=tuple(names["val"]),
        n_binary=selection.n_binary,
        n_over_budget=selection.n_over_budget,
        include=patterns,
        root=os.fspath(root_path),
        val_fraction=float(val_fraction),
        fingerprint=digest.hexdigest()[:16],
    )


def sample_windows(
    tokens: Integer[ArrayLike, " n"],
    *,
    key: PRNGKeyArray,
    batch_size: int,
    seq_len: int,
) -> Int[Array, "batch seq_len"]:
    """`batch_size` windows of `seq_len` consecutive tokens at uniform random offsets (pure JAX).

    Start offsets are i.i.d. uniform on [0, n − seq_len]; use inside jit/scan with a
    per-step key (e.g. `jax.random.fold_in(key, step)`). `batch_size` and `seq_len` are static.

    Args:
        tokens: (n,) integer token array (uint8 bytes or int32 ids), n ≥ seq_len.
        key: PRNG key.
        batch_size, seq_len: output shape.

    Returns:
        int32 array of shape (batch_size, seq_len).
    """
    tokens = jnp.asarray(tokens)
    n = tokens.shape[0]
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if n < seq_len:
        raise ValueError(f"token array of length {n} is shorter than seq_len={seq_len}")
    starts = jax.random.randint(key, (batch_size, 1), 0, n - seq_len + 1, dtype=jnp.int32)
    index = starts + jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    return tokens[index].astype(jnp.int32)


def eval_windows(tokens: Integer[ArrayLike, " n"], n_windows: int, seq_len: int) -> Int[Array, "n_windows seq_len"]:
    """Deterministic validation windows: window i starts at i · ⌊n / n_windows⌋ (pure JAX).

    The windows are evenly spaced and do not overlap; requires n_windows · seq_len ≤ n.

    Returns:
        int32 array of shape (n_windows, seq_len).
    """
    tokens = jnp.asarray(tokens)
    n = tokens.shape[0]
    if n_windows < 1 or seq_len < 1:
        raise ValueError(f"n_windows and seq_len must be >= 1, got {n_windows}, {seq_len}")
    if n_windows * seq_len > n:
        raise ValueError(
            f"{n_windows} non-overlapping windows of length {seq_len} need {n_windows * seq_len} tokens, "
            f"have {n}"
        )
    stride = n // n_windows
    index = (jnp.arange(n_windows, dtype=jnp.int32) * stride)[:, None] + jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    return tokens[index].astype(jnp.int32)


def unigram_entropy(tokens: Shaped[ArrayLike, " n"], vocab_size: int) -> float:
    """Entropy (nats) of the empirical token distribution of `tokens`: −Σ_v p_v log p_v.

    This is the training loss of the best unigram model on the same data (a lower bound on
    any unigram model's cross-entropy there). Host side, float64.
    """
    counts = _counts(tokens, vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_cross_entropy(
    train_tokens: Shaped[ArrayLike, " n_train"],
    val_tokens: Shaped[ArrayLike, " n_val"],
    vocab_size: int,
) -> float:
    """The unigram-baseline validation loss (nats/token).

    Fits q_v = (count_train(v) + 1) / (n_train + vocab_size) (add-one smoothing, so tokens
    unseen in train have finite loss) and returns −mean_{t ∈ val} log q_t. Host side, float64.
    """
    q = (_counts(train_tokens, vocab_size) + 1.0) / (np.asarray(train_tokens).size + vocab_size)
    val_counts = _counts(val_tokens, vocab_size)
    if val_counts.sum() == 0:
        raise ValueError("val_tokens is empty")
    return float(-(val_counts * np.log(q)).sum() / val_counts.sum())


def _counts(tokens: npt.ArrayLike, vocab_size: int) -> np.ndarray:
    arr = np.asarray(tokens).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{arr.min()}, {arr.max()}]")
    return np.bincount(arr.astype(np.int64), minlength=vocab_size).astype(np.float64)


def _read_text_bytes(path: Path) -> bytes | None:
    """The file's bytes if it is text (UTF-8, no NUL byte), else None; a NUL in the first 8 KiB
    rejects a binary file without reading the rest."""
    try:
        with open(path, "rb") as f:
            if b"\x00" in f.read(8192):
                return None
            f.seek(0)
            data = f.read()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data


def _join(chunks: list[bytes]) -> np.ndarray:
    sep = bytes([SEPARATOR])
    return np.frombuffer(sep.join(chunks) + sep, dtype=np.uint8).copy()
