"""A local text corpus for tiny-transformer training: the Python standard library by default.

Host side (NumPy): `load_corpus` walks a directory in sorted order, keeps files that are UTF-8
text without NUL bytes, and concatenates each split's files into one uint8 byte array, every file
followed by the document separator `SEPARATOR` (the NUL byte, which no kept file contains).
Nothing is downloaded: the default root is the running interpreter's own stdlib.

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
    "Corpus",
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


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
    """A loaded corpus: two uint8 byte arrays and their provenance.

    Attributes:
        train, val: uint8 arrays of shape (n_train_bytes,), (n_val_bytes,); each file's bytes
            followed by one `SEPARATOR` byte.
        train_files, val_files: relative POSIX paths in load order (sorted).
        n_skipped: files matched by suffix but skipped (not UTF-8, contain NUL, unreadable) or
            left out by the `max_bytes` cap.
        root: absolute root directory. val_fraction: the split fraction.
        fingerprint: 16 hex digits of SHA-256 over the split, paths and contents; equal
            fingerprints mean identical train and val arrays (use it in checkpoint fingerprints).
    """

    train: np.ndarray
    val: np.ndarray
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]
    n_skipped: int
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


def stdlib_source_dir() -> Path:
    """The running interpreter's standard-library source directory (`sysconfig` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"])


def discover_files(
    root: str | os.PathLike,
    *,
    suffixes: Iterable[str] | None = (".py",),
    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE_DIRS,
) -> list[Path]:
    """Regular files under `root` whose name ends with one of `suffixes`, in sorted order.

    Args:
        root: directory to walk (symlinked directories are not followed).
        suffixes: name endings to keep, e.g. (".py",); None keeps every file (binary files are
            filtered later by `load_corpus`).
        exclude_dirs: directory names skipped at any depth.

    Returns:
        absolute paths sorted by their relative POSIX path.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root is not a directory: {os.fspath(root)!r}")
    keep = None if suffixes is None else tuple(suffixes)
    excluded = frozenset(exclude_dirs)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in excluded]
        for name in filenames:
            if keep is not None and not name.endswith(keep):
                continue
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(root).as_posix(), path))
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def load_corpus(
    root: str | os.PathLike | None = None,
    *,
    suffixes: Iterable[str] | None = (".py",),
    max_bytes: int | None = None,
    val_fraction: float = 0.05,
    exclude_dirs: Iterable[str] = DEFAULT_EXCLUDE_DIRS,
) -> Corpus:
    """Read a directory of text files into a `Corpus` (train/val byte arrays).

    Files are visited in sorted order; a file is kept iff it decodes as UTF-8 and contains no
    NUL byte. With `max_bytes`, the train split may hold at most `(1 - val_fraction) * max_bytes`
    bytes and val at most `val_fraction * max_bytes` (separators included); a file that does not
    fit its split's remaining budget is skipped and smaller later files may still fill it, so
    the capped corpus is a deterministic subset of the full one.

    Args:
        root: directory; None means `stdlib_source_dir()`.
        suffixes: see `discover_files`.
        max_bytes: total byte cap, or None for everything.
        val_fraction: fraction in (0, 1) of files (by path hash) that go to validation.
        exclude_dirs: see `discover_files`.

    Raises:
        FileNotFoundError: `root` is not a directory.
        ValueError: bad arguments, no text files, or an empty split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes}")
    root_path = (stdlib_source_dir() if root is None else Path(root)).resolve()
    files = discover_files(root_path, suffixes=suffixes, exclude_dirs=exclude_dirs)
    budget = {
        "train": None if max_bytes is None else int((1.0 - val_fraction) * max_bytes),
        "val": None if max_bytes is None else int(val_fraction * max_bytes),
    }
    chunks: dict[str, list[bytes]] = {"train": [], "val": []}
    names: dict[str, list[str]] = {"train": [], "val": []}
    used = {"train": 0, "val": 0}
    skipped = 0
    for path in files:
        rel = path.relative_to(root_path).as_posix()
        split = "val" if zlib.crc32(rel.encode("utf-8")) / 2**32 < val_fraction else "train"
        limit = budget[split]
        if limit is not None and used[split] + path.stat().st_size + 1 > limit:
            skipped += 1
            continue
        data = _read_text_bytes(path)
        if data is None:
            skipped += 1
            continue
        chunks[split].append(data)
        names[split].append(rel)
        used[split] += len(data) + 1
    if not names["train"] and not names["val"]:
        raise ValueError(
            f"no UTF-8 text files with suffixes {None if suffixes is None else tuple(suffixes)} "
            f"under {os.fspath(root_path)!r}" + (f" within max_bytes={max_bytes}" if max_bytes else "")
        )
    for split in ("train", "val"):
        if not names[split]:
            raise ValueError(
                f"the {split} split is empty ({len(names['train']) + len(names['val'])} files kept); "
                "raise max_bytes or adjust val_fraction"
            )
    arrays = {s: _join(chunks[s]) for s in ("train", "val")}
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
        n_skipped=skipped,
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
    try:
        data = path.read_bytes()
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
