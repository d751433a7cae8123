r"""Byte-level tokenizers for the tiny-transformer corpus (host side, NumPy; nothing downloads).

* `ByteTokenizer`: one token per UTF-8 byte, vocabulary 256. `decode(encode(s)) == s` for every
  Python string that is valid Unicode (any UTF-8 text, including non-ASCII).
* `BPETokenizer`: byte-level byte-pair encoding. `train_bpe(byte_array, n_merges)` learns merges
  offline from a corpus the caller supplies (e.g. `superpos_jax.lm.corpus.load_corpus().train`);
  token ids 0..255 are the bytes and id 256 + i is merge i. Merges are saved to and loaded from
  JSON. Encoding replays the merges in training order over the whole sequence, so any byte
  sequence round-trips exactly (`decode_bytes(encode_bytes(b)) == b`).
* `HFTokenizer`: a Hugging Face `tokenizer.json` (GPT-2 byte-level BPE, SentencePiece-style
  `▁` + byte-fallback vocabularies, WordPiece, ...) for real models, through the `tokenizers`
  package, which is imported only when a file is read (`pip install tokenizers`); the rest of
  the library does not need it.

All three share `encode(text) -> int32 ids`, `decode(ids) -> str`, `vocab_size`, and, for
display (the feature browser), `token_bytes(id)` (the token's raw bytes) and `token_str(id)`
(`display_text(token_bytes(id))`): the token as readable text. A byte-level BPE token reads as
its text (GPT-2's `Ġthe` is " the", a merged id ≥ 256 is its string, never `\x100`); a SentencePiece
`▁` is a space and `<0x0A>` the byte it stands for; characters that would not show are escapes:
`\n`, `\t`, `\r`, `\xNN` for other control characters, for DEL and for bytes that are not
valid UTF-8 on their own (a lone byte ≥ 0x80, a character cut between tokens), and `\uNNNN`
for other non-printable code points (zero-width, non-breaking spaces). A literal backslash is
left as it is, so a display string is for reading; the ids are the exact record.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["TOKENIZER_FILE", "BPETokenizer", "ByteTokenizer", "HFTokenizer", "display_text", "train_bpe"]

BYTE_VOCAB: int = 256
TOKENIZER_FILE: str = "tokenizer.json"
"""The file name of a Hugging Face tokenizer in a checkpoint or saved-model directory."""


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

    def token_bytes(self, token_id: int | np.integer) -> bytes:
        """The one byte that token `token_id` stands for."""
        return self.decode_bytes([token_id])

    def token_str(self, token_id: int | np.integer) -> str:
        """Display text of one token (`display_text` of its byte: "A", " ", "\\n", "\\x80")."""
        return display_text(self.token_bytes(token_id))


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

    def token_bytes(self, token_id: int | np.integer) -> bytes:
        """The bytes token `token_id` stands for (one byte below 256, a merged string above)."""
        if not 0 <= int(token_id) < self.vocab_size:
            raise ValueError(f"token id {token_id} outside [0, {self.vocab_size})")
        return self._pieces[int(token_id)]

    def token_str(self, token_id: int | np.integer) -> str:
        """Display text of one token: a merge reads as its string ("def", " self")."""
        return display_text(self.token_bytes(token_id))

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


_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def display_text(data: bytes) -> str:
    """Bytes as readable text (module docstring): valid UTF-8 decodes, spaces stay spaces,
    `\\n` `\\t` `\\r` and other invisible characters become escapes, and every byte that is not
    part of a valid UTF-8 character becomes `\\xNN`."""
    out = []
    for c in bytes(data).decode("utf-8", errors="backslashreplace"):
        if c.isprintable():
            out.append(c)
        elif c in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[c])
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte: the printable Latin-1 bytes stand for
    themselves and the other 68 bytes, in order, for U+0100 onwards (so a space is `Ġ`, a newline `Ċ`)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = dict.fromkeys(kept, 0)
    extra = 0
    table = {}
    for b in range(BYTE_VOCAB):
        if b in chars:
            table[chr(b)] = b
        else:
            table[chr(BYTE_VOCAB + extra)] = b
            extra += 1
    return table


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (a `tokenizer.json`) behind the interface of
    `ByteTokenizer` / `BPETokenizer`.

    Build it with `HFTokenizer.from_file("tokenizer.json")` (or `from_str`), or wrap a loaded
    `tokenizers.Tokenizer` (a `transformers` fast tokenizer's `.backend_tokenizer`). Only
    `from_file` / `from_str` import `tokenizers`.

    `token_bytes` undoes the vocabulary's storage convention, read from the tokenizer's own
    decoder / pre-tokenizer / model configuration: a ByteLevel decoder or pre-tokenizer (GPT-2,
    Llama 3, ...) maps each character back through `gpt2_byte_alphabet`; a Metaspace decoder or
    a `Replace("▁", " ")` decoder (SentencePiece: Llama 2, T5, ...) makes `▁` a space; byte
    fallback reads `<0xNN>` as byte NN. Added and special tokens are their literal content
    (`<|endoftext|>`), other vocabularies (WordPiece `##ing`) the token string itself.

    Args:
        tokenizer: a `tokenizers.Tokenizer`.
        add_special_tokens: passed to `encode` (default False: no BOS/CLS added, the caller
            decides where documents start).
        eos_token: the end-of-text token's content; None: the first special token named like
            one (`<|endoftext|>`, `<|end_of_text|>`, `</s>`, `<eos>`), if any. Its id is `eos_id`.
    """

    def __init__(self, tokenizer: Any, *, add_special_tokens: bool = False, eos_token: str | None = None):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        spec = json.loads(tokenizer.to_str())
        components = [*_walk(spec.get("decoder")), *_walk(spec.get("pre_tokenizer"))]
        self._byte_level = any(c.get("type") == "ByteLevel" for c in components)
        self._byte_fallback = bool((spec.get("model") or {}).get("byte_fallback")) or any(
            c.get("type") == "ByteFallback" for c in components)
        self._space_marks = sorted({c["replacement"] for c in components if c.get("type") == "Metaspace" and c.get("replacement")}
                                   | {c["pattern"]["String"] for c in components if c.get("type") == "Replace"
                                      and c.get("content") == " " and "String" in (c.get("pattern") or {})})
        added = tokenizer.get_added_tokens_decoder()
        self._added = {int(i): t.content for i, t in added.items()}
        if eos_token is None:
            specials = {t.content: int(i) for i, t in added.items() if t.special}
            self.eos_id: int | None = next((specials[n] for n in _EOS_NAMES if n in specials), None)
        else:
            eos = tokenizer.token_to_id(eos_token)
            if eos is None:
                raise ValueError(f"eos_token {eos_token!r} is not in the vocabulary")
            self.eos_id = int(eos)
        self._alphabet = gpt2_byte_alphabet()
        self._cache: dict[int, bytes] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> HFTokenizer:
        """Read a `tokenizer.json` (needs the `tokenizers` package); the end-of-text token is
        the `eos_token` of a `tokenizer_config.json` beside it, if there is one (else as in the
        class docstring). `kwargs` go to the constructor."""
        backend = _tokenizers_module().Tokenizer.from_file(os.fspath(path))
        config = os.path.join(os.path.dirname(os.fspath(path)), "tokenizer_config.json")
        if "eos_token" not in kwargs and os.path.isfile(config):
            with open(config, encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str) and backend.token_to_id(eos) is not None:
                kwargs["eos_token"] = eos
        return cls(backend, **kwargs)

    @classmethod
    def from_str(cls, text: str, **kwargs: Any) -> HFTokenizer:
        """Parse the JSON text of a `tokenizer.json` (needs the `tokenizers` package)."""
        return cls(_tokenizers_module().Tokenizer.from_str(text), **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write the `tokenizer.json`."""
        self.tokenizer.save(os.fspath(path))

    @property
    def vocab_size(self) -> int:
        """The vocabulary including added tokens (ids are in [0, vocab_size))."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> np.ndarray:
        """`text` to an int32 id array of shape (n_tokens,)."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids, dtype=np.int32)

    def decode(self, ids: npt.ArrayLike) -> str:
        """Ids back to text with the tokenizer's decoder (special tokens kept; a character cut
        between tokens → U+FFFD)."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        self._check(arr)
        return self.tokenizer.decode(arr.tolist(), skip_special_tokens=False)

    def token_bytes(self, token_id: int | np.integer) -> bytes:
        """The bytes one token stands for (class docstring)."""
        i = int(token_id)
        if i not in self._cache:
            self._check(np.asarray([i]))
            self._cache[i] = self._piece(i)
        return self._cache[i]

    def token_str(self, token_id: int | np.integer) -> str:
        """Display text of one token: `Ġthe` → " the", `▁the` → " the", `<0x0A>` → "\\\\n"."""
        return display_text(self.token_bytes(token_id))

    def _piece(self, i: int) -> bytes:
        if i in self._added:
            return self._added[i].encode("utf-8")
        raw = self.tokenizer.id_to_token(i)
        if raw is None:
            raise ValueError(f"token id {i} has no entry in the vocabulary")
        if self._byte_fallback and (m := _BYTE_FALLBACK.fullmatch(raw)):
            return bytes([int(m.group(1), 16)])
        if self._byte_level and all(c in self._alphabet for c in raw):
            return bytes(self._alphabet[c] for c in raw)
        for mark in self._space_marks:
            raw = raw.replace(mark, " ")
        return raw.encode("utf-8")

    def _check(self, arr: np.ndarray) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{arr.min()}, {arr.max()}]")


def _walk(component: Any) -> list[dict]:
    """A tokenizer.json component and, for a Sequence, its parts (flattened)."""
    if not isinstance(component, dict):
        return []
    parts = component.get("decoders") or component.get("pretokenizers") or []
    return [component, *(c for p in parts for c in _walk(p))]


def _tokenizers_module() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("HFTokenizer reads tokenizer.json files with the `tokenizers` package: "
                          "pip install tokenizers") from e
    return tokenizers
