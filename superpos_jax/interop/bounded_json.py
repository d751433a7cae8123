"""JSON from untrusted files, parsed with bounds: size, nesting depth and integer length.

`json.loads` recurses once per nesting level (a file of 100 000 `[` ends in `RecursionError`) and
Python refuses integers of more than 4300 digits with a bare `ValueError`. `parse` measures the
nesting depth first, without recursion (strings removed by one regular expression, then a running
sum over the bracket bytes), so the parser only ever sees documents it can finish. Every problem
is raised as the caller's own error type (`SafetensorsError`, `SAELensFormatError`, ...), with the
source named.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = ["nesting_depth", "parse", "read", "short"]

_MAX_INT_DIGITS = 40
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class _Refused(Exception):
    pass


class _DuplicateKey(Exception):
    pass


def nesting_depth(data: bytes, *, block: int = 1 << 20) -> int:
    """The deepest nesting of `[`/`{` in JSON text `data`, brackets inside strings not counted.

    Linear time, no recursion, vectorised over blocks of `block` bytes (bounded memory): a quote
    is escaped iff an odd run of backslashes precedes it, the unescaped quotes toggle "inside a
    string", and the brackets outside strings are summed. Text that is not JSON still gets a
    finite count.
    """
    view = memoryview(data).cast("B")
    depth = deepest = 0
    inside = 0  # 1 while inside a string
    backslashes = 0  # length of the run of backslashes that ends the previous block
    for begin in range(0, len(view), block):
        arr = np.frombuffer(view[begin : begin + block], np.uint8)
        index = np.arange(arr.size, dtype=np.int64)
        last_other = np.maximum.accumulate(np.where(arr == ord("\\"), -1 - backslashes, index))
        run_before = np.empty(arr.size, np.int64)  # backslashes right before each byte
        run_before[0] = backslashes
        run_before[1:] = index[:-1] - last_other[:-1]
        quote = (arr == ord('"')) & (run_before % 2 == 0)
        opened = np.cumsum(quote, dtype=np.int64)
        outside = (inside + opened - quote) % 2 == 0  # a string's own quotes count as outside
        running = depth + np.cumsum(np.where(outside, _OPEN[arr], 0), dtype=np.int64)
        deepest = max(deepest, int(running.max()))
        depth, inside = int(running[-1]), int((inside + opened[-1]) % 2)
        backslashes = int(arr.size - 1 - last_other[-1])
    return deepest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(text.lstrip('-'))} digits (at most {_MAX_INT_DIGITS} allowed)")
    return int(text)


def _constant(text: str) -> float:
    raise _Refused(f"the non-standard constant {text} (JSON numbers must be finite)")


def parse(
    data: bytes,
    *,
    source: str,
    error: type[Exception],
    max_depth: int,
    allow_nonfinite: bool = False,
) -> Any:
    """The JSON value of the UTF-8 text `data`.

    Args:
        data: the raw bytes.
        source: the file (or its part) named in error messages.
        error: the exception type raised for every problem.
        max_depth: the deepest `[`/`{` nesting allowed.
        allow_nonfinite: accept `NaN`, `Infinity`, `-Infinity` (Python's json writes them).

    Raises `error` if `data` is not UTF-8, nests deeper than `max_depth`, is not JSON, repeats a key
    in an object, holds an integer of more than 40 digits, or (unless allowed) a non-finite constant.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{source}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    depth = nesting_depth(data)
    if depth > max_depth:
        raise error(f"{source}: JSON nested {depth} levels deep; at most {max_depth} allowed") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_int,
                          parse_constant=(lambda c: float(c)) if allow_nonfinite else _constant)
    except json.JSONDecodeError as e:
        raise error(f"{source}: not valid JSON: {e}") from None
    except _DuplicateKey as e:
        raise error(f"{source}: JSON object repeats the key {e.args[0]!r}") from None
    except _Refused as e:
        raise error(f"{source}: JSON holds {e.args[0]}") from None


def read(
    path: str | os.PathLike[str],
    *,
    error: type[Exception],
    max_bytes: int,
    max_depth: int,
    allow_nonfinite: bool = False,
) -> Any:
    """`parse` the file at `path`, refusing (with `error`) a file larger than `max_bytes` before
    reading it. `FileNotFoundError` (and other `OSError`s) pass through."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{os.fspath(path)}: {size} bytes, larger than the {max_bytes}-byte limit for a JSON file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{os.fspath(path)}: larger than the {max_bytes}-byte limit for a JSON file")
    return parse(data, source=os.fspath(path), error=error, max_depth=max_depth, allow_nonfinite=allow_nonfinite)


def short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters, for naming a value read from a file in an error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
