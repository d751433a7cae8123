"""Concept labels of a Python source corpus, from the standard library's `tokenize` (host side, NumPy).

`byte_labels` labels every byte of a corpus byte array (files joined by `corpus.SEPARATOR`, see
`superpos_jax.lm.corpus`) with boolean concepts: what kind of Python token the byte belongs to
and how deeply its line is indented. Each file is decoded as UTF-8 and read by
`tokenize.generate_tokens`; the tokenizer's (row, character column) positions are mapped back to
UTF-8 byte offsets, so non-ASCII text lines up with the bytes. A file that is not UTF-8 or that
`tokenize` rejects (an unterminated string, an inconsistent dedent, Python 2 code the tokenizer
cannot read) gets `valid` False and every concept False; so do the separator bytes.

Concepts (`CONCEPTS`), per byte:

* `string`: inside a string literal, quotes and prefix included. An f-string counts as string as
  a whole, its replacement fields too (Python < 3.12 tokenizes it as one STRING token; on 3.12+
  the FSTRING_START..FSTRING_END span is used and the tokens inside it get no other concept, so
  the labels do not depend on the Python version).
* `docstring`: a string literal that is a module's, class's or function's docstring (the first
  statement of the file or of a `def` / `class` body, consisting of string literals only); also
  `string`.
* `comment`: a `#` comment, from `#` to the end of the line (not the newline).
* `keyword`: a hard keyword (`keyword.kwlist`: `def`, `class`, `if`, `True`, ...). Soft
  keywords (`match`, `case`, `type`, `_`) are identifiers.
* `identifier`: any other name (`classify` is an identifier, not the keyword `class`).
* `builtin`: an identifier that names a builtin (`len`, `print`, `ValueError`); also `identifier`.
* `def_name`: the name right after `def` or `class`: the name being defined; also `identifier`
  (never `builtin`).
* `number`: a numeric literal (`0x1F`, `1_000`, `2.5e-3j`).
* `operator`: an OP token: operators and delimiters (`+`, `==`, `(`, `,`, `:`, `->`, ...).
* `indent_1`, `indent_2`, `indent_3plus`: the line the byte lies on (its leading whitespace and
  newline included) is at indentation depth 1, 2, >= 3: the number of enclosing indented blocks
  as the tokenizer counts INDENT / DEDENT. A comment-only line is as deep as the open blocks
  whose indentation its `#` column reaches; a line where no token starts (a blank line, the
  inside of a multi-line string) takes the depth of the line before it.

Also returned: `indent_depth` (int32, 0 outside valid files) and `valid` (bool).

`token_labels` turns byte labels into labels of tokens given each token's end offset (a token
takes the label of its LAST byte, see there), `token_ends` computes those offsets for a token id
array under any of our tokenizers, and `concept_frequencies` is the fraction of valid positions
carrying each concept (the class balance a probe faces).
"""

from __future__ import annotations

import builtins
import io
import keyword
import token as token_module
import tokenize
from typing import Any

import numpy as np
import numpy.typing as npt

from superpos_jax.lm.corpus import SEPARATOR
from superpos_jax.lm.tokenizers import ByteTokenizer

__all__ = ["CONCEPTS", "byte_labels", "concept_frequencies", "corpus_token_ends", "token_ends", "token_labels"]

CONCEPTS: tuple[str, ...] = (
    "string", "docstring", "comment", "keyword", "identifier", "builtin", "def_name", "number",
    "operator", "indent_1", "indent_2", "indent_3plus",
)

# Token kinds: one small integer per labelled span, expanded to concepts through `_KIND_CONCEPTS`.
_NONE, _STRING, _DOCSTRING, _COMMENT, _NUMBER, _OPERATOR, _KEYWORD, _IDENTIFIER, _BUILTIN, _DEF_NAME = range(10)
_KIND_CONCEPTS: dict[str, tuple[int, ...]] = {
    "string": (_STRING, _DOCSTRING),
    "docstring": (_DOCSTRING,),
    "comment": (_COMMENT,),
    "keyword": (_KEYWORD,),
    "identifier": (_IDENTIFIER, _BUILTIN, _DEF_NAME),
    "builtin": (_BUILTIN,),
    "def_name": (_DEF_NAME,),
    "number": (_NUMBER,),
    "operator": (_OPERATOR,),
}
_KEYWORDS = frozenset(keyword.kwlist)
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_")) - _KEYWORDS
_FSTRING_START = getattr(token_module, "FSTRING_START", None)
_FSTRING_END = getattr(token_module, "FSTRING_END", None)
_TSTRING_START = getattr(token_module, "TSTRING_START", None)
_TSTRING_END = getattr(token_module, "TSTRING_END", None)
_STRING_STARTS = frozenset(t for t in (_FSTRING_START, _TSTRING_START) if t is not None)
_STRING_ENDS = frozenset(t for t in (_FSTRING_END, _TSTRING_END) if t is not None)
_LAYOUT = frozenset({tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT,
                     tokenize.ENDMARKER, tokenize.ENCODING})


class _Untokenizable(Exception):
    """A file `tokenize` cannot read, or whose positions do not map back onto its text."""


def _file_spans(text: str) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Tokenize one file. Returns labelled spans (start_char, end_char, kind) and (row, depth)
    pairs: the indentation depth at the first token starting on a (1-based) row.

    tokenize counts rows by "\n" (StringIO's readline) and columns in characters; every span is
    checked against the token's own text, so a position that does not map back raises."""
    row_start = [0]
    for line in text.split("\n"):
        row_start.append(row_start[-1] + len(line) + 1)

    def chars(tok: tokenize.TokenInfo) -> tuple[int, int]:
        (r0, c0), (r1, c1) = tok.start, tok.end
        if r0 >= len(row_start) or r1 >= len(row_start):
            raise _Untokenizable(f"token {tok.string!r} at row {r1} past the end of the text")
        a, b = row_start[r0 - 1] + c0, row_start[r1 - 1] + c1
        if text[a:b] != tok.string:
            raise _Untokenizable(f"token {tok.string!r} does not match the text at {tok.start}")
        return a, b

    spans: list[tuple[int, int, int]] = []
    row_depth: list[tuple[int, int]] = []
    depth, last_row = 0, 0
    indent_cols: list[int] = []   # the column of each open indented block
    fstring_level, fstring_start = 0, 0
    prev_name = ""           # the previous significant token's string (for def/class names)
    line_tokens: list[int] = []   # indices into `spans` of the current logical line's string spans
    line_only_strings = True
    line_is_first = True     # the logical line is the first statement of the file or of a def/class body
    header_is_def = False    # the previous logical line was a `def` / `class` header ending in ':'
    line_first = ""
    line_last = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = tok.type
            if kind == tokenize.INDENT:
                depth += 1
            elif kind == tokenize.DEDENT:
                depth -= 1
            if kind == tokenize.INDENT:
                indent_cols.append(tok.end[1])
            elif kind == tokenize.DEDENT:
                indent_cols.pop()
            if kind not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER) \
                    and tok.start[0] > last_row:
                if kind == tokenize.COMMENT:   # a comment-only line: the blocks its column lies in
                    row_depth.append((tok.start[0], sum(c <= tok.start[1] for c in indent_cols)))
                else:
                    row_depth.append((tok.start[0], depth))
                last_row = tok.start[0]
            if fstring_level:   # inside an f-string (Python >= 3.12): one string span from start to end
                if kind in _STRING_STARTS:
                    fstring_level += 1
                elif kind in _STRING_ENDS:
                    fstring_level -= 1
                    if not fstring_level:
                        spans.append((fstring_start, chars(tok)[1], _STRING))
                        line_tokens.append(len(spans) - 1)
                continue
            if kind in _STRING_STARTS:
                fstring_level, fstring_start = 1, chars(tok)[0]
                line_first = line_first or "<string>"
                continue
            if kind == tokenize.NEWLINE:
                if line_is_first and line_only_strings and line_tokens:
                    for i in line_tokens:
                        spans[i] = (*spans[i][:2], _DOCSTRING)
                header_is_def = line_first in ("def", "class", "async") and line_last == ":"
                line_is_first = False
                line_tokens, line_only_strings, line_first, line_last = [], True, "", ""
                continue
            if kind == tokenize.INDENT:
                line_is_first = header_is_def
                continue
            if kind in _LAYOUT:
                if kind == tokenize.COMMENT:
                    spans.append((*chars(tok), _COMMENT))
                continue
            line_first = line_first or tok.string
            line_last = tok.string
            if kind == tokenize.STRING:
                spans.append((*chars(tok), _STRING))
                line_tokens.append(len(spans) - 1)
            else:
                line_only_strings = False
                if kind == tokenize.NUMBER:
                    spans.append((*chars(tok), _NUMBER))
                elif kind == tokenize.OP:
                    spans.append((*chars(tok), _OPERATOR))
                elif kind == tokenize.NAME:
                    if tok.string in _KEYWORDS:
                        label = _KEYWORD
                    elif prev_name in ("def", "class"):
                        label = _DEF_NAME
                    elif tok.string in _BUILTINS:
                        label = _BUILTIN
                    else:
                        label = _IDENTIFIER
                    spans.append((*chars(tok), label))
            prev_name = tok.string
    except (tokenize.TokenError, SyntaxError) as e:
        raise _Untokenizable(str(e)) from e
    return spans, row_depth


def _label_file(raw: np.ndarray, kind_out: np.ndarray, depth_out: np.ndarray) -> bool:
    """Label one file's bytes `raw` (uint8, no separator) into the views `kind_out`, `depth_out`.
    Returns False (leaving them untouched) if the file is not readable Python."""
    try:
        text = raw.tobytes().decode("utf-8")
        spans, row_depth = _file_spans(text)
    except (UnicodeDecodeError, _Untokenizable):
        return False
    n = raw.size
    char_to_byte = np.append(np.flatnonzero((raw & 0xC0) != 0x80), n)
    row_start_byte = np.concatenate([[0], np.flatnonzero(raw == ord("\n")) + 1])
    if spans:
        s = np.asarray(spans, dtype=np.int64)
        start, end = char_to_byte[s[:, 0]], char_to_byte[s[:, 1]]
        lengths = end - start
        index = np.repeat(start - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        kind_out[index] = np.repeat(s[:, 2], lengths).astype(kind_out.dtype)
    n_rows = row_start_byte.size
    per_row = np.full(n_rows, -1, dtype=np.int32)
    if row_depth:
        rd = np.asarray(row_depth, dtype=np.int64)
        rd = rd[rd[:, 0] <= n_rows]
        per_row[rd[:, 0] - 1] = rd[:, 1]
    per_row[0] = max(per_row[0], 0)
    filled = np.maximum.accumulate(np.where(per_row >= 0, np.arange(n_rows), 0))
    per_row = per_row[filled]
    row_of_byte = np.searchsorted(row_start_byte, np.arange(n), side="right") - 1
    depth_out[:] = per_row[row_of_byte]
    return True


def byte_labels(data: bytes | npt.ArrayLike) -> dict[str, np.ndarray]:
    """Concept labels of every byte of a corpus byte array.

    Args:
        data: the corpus bytes (`bytes` or a uint8 array of shape (n_bytes,)): files joined by
            `SEPARATOR`, as in `Corpus.train` / `Corpus.val`; one file without a separator works too.

    Returns:
        A dict with one bool array of shape (n_bytes,) per name in `CONCEPTS` (module docstring),
        `indent_depth` (int32, (n_bytes,)) and `valid` (bool, (n_bytes,): the byte belongs to a
        file that decoded as UTF-8 and that `tokenize` read; separator bytes and every byte of an
        unreadable file are False in every array, depth 0).
    """
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, dtype=np.uint8)
    raw = raw.reshape(-1)
    n = raw.size
    kind = np.zeros(n, dtype=np.int8)
    depth = np.zeros(n, dtype=np.int32)
    valid = np.zeros(n, dtype=bool)
    bounds = np.concatenate([[-1], np.flatnonzero(raw == SEPARATOR), [n]])
    for a, b in zip(bounds[:-1] + 1, bounds[1:]):
        if b > a and _label_file(raw[a:b], kind[a:b], depth[a:b]):
            valid[a:b] = True
    out = {name: np.isin(kind, codes) for name, codes in _KIND_CONCEPTS.items()}
    out["indent_1"] = valid & (depth == 1)
    out["indent_2"] = valid & (depth == 2)
    out["indent_3plus"] = valid & (depth >= 3)
    labels = {name: out[name] for name in CONCEPTS}
    labels["indent_depth"] = depth
    labels["valid"] = valid
    return labels


def token_labels(labels: dict[str, np.ndarray], token_end: npt.ArrayLike) -> dict[str, np.ndarray]:
    """Labels of tokens from labels of bytes: token t takes the labels of its LAST byte.

    The last byte, because the residual stream at a token's position has read the whole token
    (and nothing after it): the concept the model can know there is the one the token ends in.
    A BPE token `"x = '` that opens a string therefore counts as string, one like `'\\n` that
    closes it and runs on into code counts as what follows.

    Args:
        labels: the output of `byte_labels` (or any dict of arrays of shape (n_bytes,)).
        token_end: int array of any shape: one past the offset of each token's last byte in the
            labelled byte array (`token_ends`); values in [1, n_bytes]. A token with no bytes
            (end 0 or an end equal to the previous token's) reads the byte before it; the caller
            decides whether such positions count (e.g. mask with `valid`).

    Returns:
        The same keys, each an array of `token_end`'s shape.
    """
    end = np.asarray(token_end, dtype=np.int64)
    n = next(iter(labels.values())).shape[0]
    if end.size and (end.min() < 1 or end.max() > n):
        raise ValueError(f"token_end values must lie in [1, {n}] (the labelled byte count), got "
                         f"[{end.min()}, {end.max()}]")
    return {name: np.asarray(v)[end - 1] for name, v in labels.items()}


def token_ends(tokens: npt.ArrayLike, tokenizer: Any) -> np.ndarray:
    """One past each token's last byte offset in the byte string the tokens decode to.

    Args:
        tokens: int array of token ids of shape (n_tokens,), a contiguous stretch of a tokenized
            corpus starting at byte 0 of the labelled array.
        tokenizer: any of our tokenizers (`ByteTokenizer`, `BPETokenizer`, `HFTokenizer`); uses
            `token_bytes(id)`. For an `HFTokenizer` whose pieces are not the corpus bytes (a
            SentencePiece leading space, a special token standing for the separator), the
            offsets follow the pieces, so align its corpus accordingly.

    Returns:
        int64 array of shape (n_tokens,): the cumulative sum of `len(tokenizer.token_bytes(id))`.
    """
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(ids, return_inverse=True)
    lengths = np.asarray([len(tokenizer.token_bytes(int(i))) for i in unique], dtype=np.int64)
    return np.cumsum(lengths[inverse.reshape(-1)])


def corpus_token_ends(data: bytes | npt.ArrayLike, tokenizer: Any, tokens: npt.ArrayLike | None = None) -> np.ndarray:
    """Token end offsets into a corpus byte array for its tokens as the experiments tokenize it
    (`experiments.lm_common.tokenize_corpus`): byte tokens one per byte; other tokenizers each
    file's text on its own, files joined by the tokenizer's `eos_id` (when it has one).

    Offsets are clipped to the file's end (a SentencePiece leading space, a character replaced
    on decoding), and a joining end-of-text token ends on the file's separator byte, which is
    never `valid`.

    Args:
        data: the corpus bytes (n_bytes,), files joined by `SEPARATOR`.
        tokenizer: `ByteTokenizer`, `BPETokenizer` or `HFTokenizer`.
        tokens: the tokenized corpus, if already at hand: byte tokens need nothing else, and for
            others its length is checked against the re-tokenization.

    Returns:
        int64 array (n_tokens,) of ends in [1, n_bytes].

    Raises:
        ValueError: `tokens` is given and does not have the length this tokenization gives.
    """
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, dtype=np.uint8)
    raw = raw.reshape(-1)
    if isinstance(tokenizer, ByteTokenizer):
        ends = np.arange(1, raw.size + 1, dtype=np.int64)
    else:
        joiner = getattr(tokenizer, "eos_id", None)
        bounds = np.concatenate([[-1], np.flatnonzero(raw == SEPARATOR), [raw.size]])
        pieces: list[np.ndarray] = []
        for a, b in zip(bounds[:-1] + 1, bounds[1:]):
            if b <= a:
                continue
            ids = tokenizer.encode(raw[a:b].tobytes().decode("utf-8", errors="replace"))
            pieces.append(np.minimum(a + token_ends(ids, tokenizer), b))
            if joiner is not None:
                pieces.append(np.asarray([min(b + 1, raw.size)], np.int64))
        ends = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    if tokens is not None and np.asarray(tokens).size != ends.size:
        raise ValueError(f"the corpus tokenizes to {ends.size} tokens here but {np.asarray(tokens).size} were given")
    return ends


def concept_frequencies(labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Fraction of valid positions (bytes or tokens) that carry each concept.

    Args:
        labels: `byte_labels` or `token_labels` output (needs `valid` and the `CONCEPTS` keys).

    Returns:
        {concept: fraction in [0, 1]} for every name in `CONCEPTS`; 0.0 for all if nothing is valid.
    """
    valid = np.asarray(labels["valid"], dtype=bool)
    total = int(valid.sum())
    return {name: (float(np.asarray(labels[name], dtype=bool)[valid].sum()) / total if total else 0.0)
            for name in CONCEPTS}
