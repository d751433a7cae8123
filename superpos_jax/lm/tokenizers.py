"""Byte-level tokenizers for the tiny-transformer corpus (host side, NumPy; nothing downloads).

* `ByteTokenizer`: one token per UTF-8 byte, vocabulary 256. `decode(encode(s)) == s` for every
  Python string that is valid Unicode (any UTF-8 text, including non-ASCII).
* `BPETokenizer`: byte-level byte-pair encoding. `train_bpe(byte_array, n_merges)` learns merges
  offline from a corpus the caller supplies (e.g. `superpos_jax.lm.corpus.load_corpus().train`);
  token ids 0..255 are the bytes and id 256 + i is merge i. Merges are saved to and loaded from
  JSON. Encoding replays the merges in training order over the whole sequence, so any byte
  sequence round-trips exactly (`decode_bytes(encode_bytes(b)) == b`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["BPETokenizer", "ByteTokenizer", "train_bpe"]

BYTE_VOCAB: int = 256


class ByteTokenizer:
    """UTF-8 bytes as tokens: `vocab_size` = 256, ids are the byte values."""

    vocab_size: int = BYTE_VOCAB

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 encode `text`; returns an int32 array of shape (n_bytes,), values in [0, 256)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_bytes(self, data: bytes | npt.ArrayLike) -> np.ndarray:
        """Bytes (or a uint8 array) to an int32 id array of the same length."""
        return _as_uint8(data).astype(np.int32)

    def decode(self, ids: npt.ArrayLike) -> str:
        """Ids in [0, 256) back to text; invalid UTF-8 (e.g. a window cut mid-character) → U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: npt.ArrayLike) -> bytes:
        """Ids in [0, 256) back to the raw bytes."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= BYTE_VOCAB):
            raise ValueError(f"byte token ids must lie in [0, 256), got range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.uint8).tobytes()


class BPETokenizer:
    """Byte-level BPE: ids < 256 are bytes, id 256 + i is the pair `merges[i]`.

    Args:
        merges: sequence of (left_id, right_id) pairs in training order; each id must be a
            byte or an earlier merge.
    """

    def __init__(self, merges: Sequence[tuple[int, int]] | Sequence[Sequence[int]]):
        pairs = [(int(a), int(b)) for a, b in merges]
        for i, (a, b) in enumerate(pairs):
            if not (0 <= a < BYTE_VOCAB + i and 0 <= b < BYTE_VOCAB + i):
                raise ValueError(f"merge {i} = ({a}, {b}) refers to an id that does not exist yet")
        self.merges: tuple[tuple[int, int], ...] = tuple(pairs)
        pieces = [bytes([i]) for i in range(BYTE_VOCAB)]
        for a, b in pairs:
            pieces.append(pieces[a] + pieces[b])
        self._pieces = pieces
        offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in pieces])
        self._piece_offsets = offsets
        self._piece_bytes = np.frombuffer(b"".join(pieces), dtype=np.uint8)

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB + len(self.merges)

    def encode_bytes(self, data: bytes | npt.ArrayLike) -> np.ndarray:
        """Bytes (or a uint8 array) to an int32 id array, applying the merges in order."""
        ids = _as_uint8(data).astype(np.int32)
        for i, (a, b) in enumerate(self.merges):
            ids = _merge_pair(ids, a, b, BYTE_VOCAB + i)
        return ids

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 encode `text` and apply the merges; int32 array of shape (n_tokens,)."""
        return self.encode_bytes(text.encode("utf-8"))

    def decode_bytes(self, ids: npt.ArrayLike) -> bytes:
        """Token ids back to the raw bytes."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{arr.min()}, {arr.max()}]")
        starts = self._piece_offsets[arr]
        lengths = self._piece_offsets[arr + 1] - starts
        index = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        return self._piece_bytes[index].tobytes()

    def decode(self, ids: npt.ArrayLike) -> str:
        """Token ids back to text; invalid UTF-8 → U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        """Write the merges as JSON: {"type": "byte_bpe", "merges": [[a, b], ...]}."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": "byte_bpe", "merges": [list(m) for m in self.merges]}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read merges written by `save`."""
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        if not isinstance(obj, dict) or obj.get("type") != "byte_bpe" or "merges" not in obj:
            raise ValueError(f"{os.fspath(path)!r} is not a byte_bpe merges file")
        return cls(obj["merges"])


def train_bpe(byte_array: bytes | npt.ArrayLike, n_merges: int, *, separator: int | None = 0) -> BPETokenizer:
    """Learn `n_merges` byte-pair merges from a corpus (greedy, most frequent adjacent pair first).

    Pair counts include overlapping occurrences ("aaa" counts (a, a) twice); ties go to the
    smallest pair id `left * vocab + right`, so training is deterministic. Pairs that contain
    the `separator` byte (the corpus' document separator; None to allow all) are never merged,
    so tokens do not straddle documents. Training stops early when no pair occurs twice.

    Args:
        byte_array: training bytes (bytes or a uint8 array).
        n_merges: number of merges to learn (≥ 0); the vocabulary is 256 + n_merges.
        separator: a byte id excluded from merges.

    Returns:
        a `BPETokenizer`.
    """
    if n_merges < 0:
        raise ValueError(f"n_merges must be >= 0, got {n_merges}")
    ids = _as_uint8(byte_array).astype(np.int32)
    merges: list[tuple[int, int]] = []
    for i in range(n_merges):
        if ids.size < 2:
            break
        vocab = BYTE_VOCAB + i
        pair_ids = ids[:-1].astype(np.int64) * vocab + ids[1:]
        if separator is not None:
            pair_ids = pair_ids[(ids[:-1] != separator) & (ids[1:] != separator)]
        if pair_ids.size == 0:
            break
        counts = np.bincount(pair_ids, minlength=vocab * vocab)
        best = int(np.argmax(counts))
        if counts[best] < 2:
            break
        a, b = divmod(best, vocab)
        merges.append((a, b))
        ids = _merge_pair(ids, a, b, vocab)
    return BPETokenizer(merges)


def _merge_pair(ids: np.ndarray, a: int, b: int, new_id: int) -> np.ndarray:
    """Replace non-overlapping occurrences of (a, b), scanning left to right, by `new_id`."""
    hit = (ids[:-1] == a) & (ids[1:] == b)
    if not hit.any():
        return ids
    if a == b:
        # In a run of consecutive hits only every other one (from the run's start) is a match.
        pos = np.flatnonzero(hit)
        run_start = np.ones(pos.size, dtype=bool)
        run_start[1:] = pos[1:] != pos[:-1] + 1
        run_id = np.cumsum(run_start) - 1
        first = pos[run_start][run_id]
        keep = (pos - first) % 2 == 0
        hit = np.zeros_like(hit)
        hit[pos[keep]] = True
    out = ids.copy()
    out[:-1][hit] = new_id
    drop = np.zeros(ids.size, dtype=bool)
    drop[1:] = hit
    return out[~drop]


def _as_uint8(data: bytes | npt.ArrayLike) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), dtype=np.uint8)
    arr = np.asarray(data)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("byte arrays must hold values in [0, 256)")
        arr = arr.astype(np.uint8)
    return arr.reshape(-1)
