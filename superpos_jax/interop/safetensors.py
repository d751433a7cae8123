"""The safetensors file format, read and written with numpy alone (no `safetensors` package).

Layout of a file (https://github.com/huggingface/safetensors, "Format"):

    bytes [0, 8)          N, the header length: unsigned 64-bit little-endian integer
    bytes [8, 8 + N)      UTF-8 JSON object, padded with trailing spaces so 8 + N is a multiple of 8:
                            {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
                             ..., "__metadata__": {"<str>": "<str>"}}   (metadata optional)
    bytes [8 + N, EOF)    the byte buffer: every tensor's raw little-endian, C-order bytes at
                          [begin, end) relative to the start of the buffer

The tensors must tile the buffer exactly: sorted by offset they start at 0, follow one another with
no gap or overlap, and the last ends at the end of the file; `end - begin` equals the element count
times the dtype's size. BF16 and the F8 types are stored as their bit patterns and come back as the
`ml_dtypes` types that JAX uses (`jnp.bfloat16`, `jnp.float8_e4m3fn`, `jnp.float8_e5m2`).

`save_file` writes to a temporary file in the target directory and renames it over the target, so
an existing file is either fully replaced or left untouched. `load_file` validates everything it
reads and raises `SafetensorsError` (a `ValueError`) naming the problem.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from superpos_jax.interop import bounded_json

__all__ = ["DTYPES", "SafetensorsError", "load_file", "read_metadata", "save_file", "tensor_layout"]

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype(jnp.bfloat16),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
}
"""Safetensors dtype code → numpy dtype (little-endian)."""

_METADATA_KEY = "__metadata__"
_MAX_HEADER_BYTES = 100_000_000
_MAX_HEADER_DEPTH = 8  # {"name": {"shape": [..]}} is 3 deep; __metadata__ is 2
_MAX_ARRAY_BYTES = 2**62  # numpy refuses sizes past intp, even with a zero dimension
_MAX_NDIM = 32


class SafetensorsError(ValueError):
    """A safetensors file (or the tensors given to write one) violates the format."""


def _dtype_code(dtype: np.dtype, name: str) -> str:
    for code, known in DTYPES.items():
        if dtype == known or (dtype.byteorder == ">" and dtype.newbyteorder("<") == known):
            return code
    raise SafetensorsError(f"tensor {name!r}: dtype {dtype} has no safetensors code (allowed: {sorted(DTYPES)})")


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SafetensorsError(f"metadata must map str to str; got {key!r}: {value!r}")
    return dict(metadata)


def save_file(
    tensors: Mapping[str, npt.ArrayLike],
    path: str | os.PathLike[str],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `tensors` (name → array of any shape) and optional str → str `metadata` to `path`.

    Tensors are laid out in decreasing order of item size (then by name), so every tensor starts
    at an offset aligned to its item size. The write is atomic: a temporary file in the same
    directory is written, flushed, fsynced and renamed over `path`; if anything fails the
    temporary file is removed and an existing `path` is untouched.

    Returns the path written. Raises `SafetensorsError` for a name that is not a non-empty str or
    is `"__metadata__"`, an unsupported dtype, or non-str metadata.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    codes: dict[str, str] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == _METADATA_KEY:
            raise SafetensorsError(f"invalid tensor name {name!r}")
        array = np.asarray(value)
        codes[name] = _dtype_code(array.dtype, name)
        arrays[name] = np.asarray(array.astype(DTYPES[codes[name]], copy=False), order="C")
    meta = _check_metadata(metadata)

    order = sorted(arrays, key=lambda n: (-arrays[n].dtype.itemsize, n))
    header: dict[str, object] = {}
    if meta is not None:
        header[_METADATA_KEY] = meta
    offset = 0
    for name in order:
        size = arrays[name].nbytes
        shape = list(arrays[name].shape)
        header[name] = {"dtype": codes[name], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-(8 + len(header_bytes)) % 8)

    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [struct.pack("<Q", len(header_bytes)), header_bytes]
    write_atomic(path, parts + [arrays[name].tobytes(order="C") for name in order])
    return path


def write_atomic(path: Path, parts: list[bytes]) -> None:
    """Write `parts` to `path` through a temporary file in the same folder, fsync, then rename:
    `path` holds either its old content or all of the new, never a partial file."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _read_header(f: BinaryIO, size: int, source: str) -> tuple[dict, int]:
    """The header of the open file `f` of `size` bytes and the offset of its data buffer.

    The 8-byte length is checked against the size limit and the file size before the header is
    read, and the JSON's nesting depth before it is parsed; nothing past the header is read."""
    if size < 8:
        raise SafetensorsError(f"{source}: truncated: {size} bytes, fewer than the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER_BYTES:
        raise SafetensorsError(f"{source}: header length {n} exceeds the limit of {_MAX_HEADER_BYTES} bytes")
    if 8 + n > size:
        raise SafetensorsError(f"{source}: truncated: header length {n} runs past the end of the {size}-byte file")
    data = f.read(n)
    if len(data) != n:
        raise SafetensorsError(f"{source}: truncated while reading the {n}-byte header")
    header = bounded_json.parse(data, source=f"{source}: header", error=SafetensorsError, max_depth=_MAX_HEADER_DEPTH)
    if not isinstance(header, dict):
        raise SafetensorsError(f"{source}: header must be a JSON object, got {type(header).__name__}")
    return header, 8 + n


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_Entry = tuple[np.dtype, tuple[int, ...], int, int]


def _parse_entries(header: dict, buffer_size: int, source: str) -> dict[str, _Entry]:
    """Validate the header's tensor entries against a data buffer of `buffer_size` bytes."""
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        if name == _METADATA_KEY:
            continue
        where = f"{source}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{where}: entry must have exactly dtype, shape, data_offsets; got {bounded_json.short(info)}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            raise SafetensorsError(f"{where}: unknown dtype {code!r} (known: {sorted(DTYPES)})")
        if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
            raise SafetensorsError(
                f"{where}: shape must be a list of at most {_MAX_NDIM} non-negative ints, got {bounded_json.short(shape)}")
        if math.prod(d for d in shape if d) * DTYPES[code].itemsize > _MAX_ARRAY_BYTES:
            raise SafetensorsError(f"{where}: shape {bounded_json.short(shape)} is too large for an array "
                                   f"(its non-zero dimensions span more than 2**62 bytes)")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise SafetensorsError(f"{where}: data_offsets must be [begin, end] (ints), got {bounded_json.short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise SafetensorsError(f"{where}: invalid data_offsets [{begin}, {end}]")
        if end > buffer_size:
            raise SafetensorsError(
                f"{source}: truncated: tensor {name!r} ends at byte {end} of a {buffer_size}-byte data buffer"
            )
        dtype = DTYPES[code]
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise SafetensorsError(
                f"{where}: data_offsets span {end - begin} bytes, but {code} shape {shape} needs {expected}"
            )
        entries[name] = (dtype, tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: (item[1][2], item[1][3])):
        if begin != position:
            kind = "gap" if begin > position else "overlap"
            raise SafetensorsError(
                f"{source}: tensor {name!r}: data_offsets not contiguous ({kind} at byte {position})"
            )
        position = end
    if position != buffer_size:
        raise SafetensorsError(
            f"{source}: data buffer has {buffer_size - position} trailing bytes not covered by any tensor"
        )
    return entries


def _metadata(header: dict, source: str) -> dict[str, str] | None:
    meta = header.get(_METADATA_KEY)
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise SafetensorsError(f"{source}: __metadata__ must map str to str, got {bounded_json.short(meta)}")
    return meta


def load_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read every tensor of the safetensors file at `path`, as name → numpy array (native byte order).

    The file is validated before any tensor data is read: its header length against the size
    limit and the file size, the header's JSON (depth, types), then every tensor's dtype, shape
    and offsets against the size of the data buffer. Only then is the file memory-mapped and each
    tensor's declared bytes copied out, so a file whose header does not describe it is refused
    without reading it. The arrays own their memory (writable; the file is closed on return).

    Raises `SafetensorsError` if the file is truncated, its header length or offsets are out of
    bounds, its offsets overlap or leave gaps, a dtype is unknown, a byte count disagrees with a
    shape, BOOL data holds bytes other than 0/1, a header key repeats, or the header or its
    `__metadata__` is malformed; `FileNotFoundError` if there is no file.
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, start = _read_header(f, size, source)
        _metadata(header, source)
        entries = _parse_entries(header, size - start, source)
        if size == start:
            return {name: np.zeros(shape, dtype.newbyteorder("=")) for name, (dtype, shape, _, _) in entries.items()}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return {name: _copy_out(mapped, start, entry, f"{source}: tensor {name!r}") for name, entry in entries.items()}


def _copy_out(mapped: mmap.mmap, start: int, entry: _Entry, where: str) -> np.ndarray:
    """The tensor `entry` of the mapped file as an array of its own (the map can then be closed)."""
    dtype, shape, begin, end = entry
    if end == begin:
        return np.zeros(shape, dtype.newbyteorder("="))
    view = np.frombuffer(mapped, dtype=np.uint8, count=end - begin, offset=start + begin)
    try:
        if dtype == np.bool_ and np.any(view > 1):
            raise SafetensorsError(f"{where}: BOOL data holds bytes other than 0 and 1")
        return view.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    finally:
        del view


def tensor_layout(f: BinaryIO, size: int, source: str) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
    """Where each tensor of the open safetensors file `f` (of `size` bytes) lies, from its
    validated header: name → (dtype, shape, first byte, end byte), offsets from the start of
    the file. Reads only the header; for readers that fetch rows themselves (disk streams)."""
    header, start = _read_header(f, size, source)
    entries = _parse_entries(header, size - start, source)
    return {name: (dtype, shape, start + begin, start + end) for name, (dtype, shape, begin, end) in entries.items()}


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The `__metadata__` (str → str) of the safetensors file at `path`, or None if it has none.

    Reads only the header (and validates it against the file size like `load_file`).
    """
    source = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, start = _read_header(f, size, source)
    _parse_entries(header, size - start, source)
    return _metadata(header, source)
