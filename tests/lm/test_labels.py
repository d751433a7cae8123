"""Concept labels from `tokenize`: hand-labelled snippets, file validity, token ends and token labels."""

from __future__ import annotations

import numpy as np
import pytest

from superpos_jax.lm.corpus import SEPARATOR
from superpos_jax.lm.labels import (CONCEPTS, byte_labels, concept_frequencies, corpus_token_ends, token_ends,
                                     token_labels)
from superpos_jax.lm.tokenizers import BPETokenizer, ByteTokenizer, train_bpe


def runs(data: bytes, mask: np.ndarray) -> list[str]:
    """The maximal runs of bytes where `mask` holds, decoded."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [data[a:b].decode("utf-8") for a, b in zip(edges[::2], edges[1::2])]


SNIPPET = '''"""Module doc."""
import os  # a "quoted" comment, it's fine
def classify(x, n=10):
    """Doc."""
    s = "# not a comment"
    if x:
        for i in range(3):
            y = f"{x!r} {{i}} {n + 1}"
          # between
    return len(s) + 0x1F
class Classifier(Base): pass
'''


@pytest.fixture(scope="module")
def snippet():
    data = SNIPPET.encode()
    return data, byte_labels(data)


def test_concepts_list_and_output_keys(snippet):
    _, labels = snippet
    for name in ("string", "comment", "keyword", "identifier", "number", "operator", "indent_1", "indent_2",
                 "indent_3plus", "builtin", "def_name", "docstring"):
        assert name in CONCEPTS
    assert set(labels) == {*CONCEPTS, "indent_depth", "valid"}
    for name in CONCEPTS:
        assert labels[name].dtype == bool and labels[name].shape == (len(SNIPPET),)
    assert labels["indent_depth"].dtype == np.int32 and labels["valid"].all()


def test_token_concepts_by_hand(snippet):
    data, labels = snippet
    assert runs(data, labels["string"]) == ['"""Module doc."""', '"""Doc."""', '"# not a comment"',
                                            'f"{x!r} {{i}} {n + 1}"']
    assert runs(data, labels["docstring"]) == ['"""Module doc."""', '"""Doc."""']
    assert runs(data, labels["comment"]) == ['# a "quoted" comment, it\'s fine', "# between"]
    assert runs(data, labels["keyword"]) == ["import", "def", "if", "for", "in", "return", "class", "pass"]
    # `classify` / `Classifier` contain `class` but are names; names inside the f-string are string only
    assert runs(data, labels["identifier"]) == ["os", "classify", "x", "n", "s", "x", "i", "range", "y", "len", "s",
                                                "Classifier", "Base"]
    assert runs(data, labels["builtin"]) == ["range", "len"]
    assert runs(data, labels["def_name"]) == ["classify", "Classifier"]
    assert runs(data, labels["number"]) == ["10", "3", "0x1F"]
    assert runs(data, labels["operator"]) == ["(", ",", "=", "):", "=", ":", "(", "):", "=", "(", ")", "+", "(", "):"]
    # concepts of tokens never overlap, except the declared implications
    kinds = [labels[n].astype(int) for n in ("string", "comment", "keyword", "identifier", "number", "operator")]
    assert max(np.sum(kinds, axis=0)) == 1
    assert not (labels["docstring"] & ~labels["string"]).any()
    assert not ((labels["builtin"] | labels["def_name"]) & ~labels["identifier"]).any()


def test_indentation_depth_per_line(snippet):
    data, labels = snippet
    line_depth = [0, 0, 0, 1, 1, 1, 2, 3, 2, 1, 0]   # "# between" sits at column 10: inside two blocks
    starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))[:-1] + 1])
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n")) + 1
    for depth, a, b in zip(line_depth, starts, ends, strict=True):
        np.testing.assert_array_equal(labels["indent_depth"][a:b], depth)   # whitespace and newline included
        assert labels["indent_1"][a:b].all() == (depth == 1)
        assert labels["indent_2"][a:b].all() == (depth == 2)
        assert labels["indent_3plus"][a:b].all() == (depth >= 3)
        assert not (labels["indent_1"][a:b] & labels["indent_2"][a:b]).any()


def test_non_ascii_offsets_are_bytes():
    text = 'café = "naïve ü"  # größe\nn = 42\n'
    data = text.encode()
    labels = byte_labels(data)
    assert len(data) > len(text)
    assert runs(data, labels["identifier"]) == ["café", "n"]
    assert runs(data, labels["string"]) == ['"naïve ü"']
    assert runs(data, labels["comment"]) == ["# größe"]
    assert runs(data, labels["number"]) == ["42"]       # after the multi-byte characters, still aligned
    assert runs(data, labels["operator"]) == ["=", "="]


def test_docstrings_only_first_statement_of_module_def_class():
    text = ('x = 1\n"""not a module docstring"""\n'
            'class A:\n    "class doc"\n    "second string"\n'
            '    async def f(self):\n        \'\'\'f doc\'\'\' "implicitly joined"\n        return "value"\n'
            'if x:\n    "if-block string"\n')
    data = text.encode()
    labels = byte_labels(data)
    assert runs(data, labels["docstring"]) == ['"class doc"', "'''f doc'''", '"implicitly joined"']
    assert len(runs(data, labels["string"])) == 7


def test_files_and_separators_invalid_files():
    good = b"a = 1\n"
    bad_eof = b'x = """never closed\n'
    bad_utf8 = b"y = '\xff'\n"
    bad_dedent = b"if x:\n        a\n    b\n"
    data = SEPARATOR.to_bytes(1, "little").join([good, bad_eof, good, bad_utf8, bad_dedent, b"z"]) + b"\0"
    labels = byte_labels(np.frombuffer(data, np.uint8))
    offsets = np.cumsum([0] + [len(p) + 1 for p in (good, bad_eof, good, bad_utf8, bad_dedent, b"z")])
    expect_valid = [True, False, True, False, False, True]
    for ok, a, b in zip(expect_valid, offsets[:-1], offsets[1:]):
        assert labels["valid"][a:b - 1].all() == ok and labels["valid"][a:b - 1].any() == ok
        assert not labels["valid"][b - 1]                          # the separator
        if not ok:
            assert not any(labels[n][a:b].any() for n in CONCEPTS) and not labels["indent_depth"][a:b].any()
    assert runs(data, labels["identifier"]) == ["a", "a", "z"]
    assert runs(data, labels["number"]) == ["1", "1"]


def test_frequencies_by_hand():
    labels = byte_labels(b'x = 1\n\0"""open')   # the second "file" is untokenizable: not counted
    freq = concept_frequencies(labels)
    assert freq["identifier"] == pytest.approx(1 / 6) and freq["operator"] == pytest.approx(1 / 6)
    assert freq["number"] == pytest.approx(1 / 6)
    assert all(freq[n] == 0.0 for n in CONCEPTS if n not in ("identifier", "operator", "number"))
    assert concept_frequencies(byte_labels(b"\0\0")) == {n: 0.0 for n in CONCEPTS}


def test_token_ends_bytes_and_bpe():
    data = b's = "#x"\nt = 2\n'
    np.testing.assert_array_equal(token_ends(ByteTokenizer().encode_bytes(data), ByteTokenizer()),
                                  np.arange(1, len(data) + 1))
    q, h, eq, sp = ord('"'), ord("#"), ord("="), ord(" ")
    bpe = BPETokenizer([(q, h), (eq, sp), (sp, 256 + 1)])   # '"#', '= ', ' = '
    ids = bpe.encode_bytes(data)
    pieces = [bpe.token_bytes(i) for i in ids]
    assert pieces[:5] == [b"s", b" = ", b'"#', b"x", b'"']
    ends = token_ends(ids, bpe)
    np.testing.assert_array_equal(ends, np.cumsum([len(p) for p in pieces]))
    assert ends[-1] == len(data)
    tl = token_labels(byte_labels(data), ends)
    # a token takes its LAST byte's label: ' = ' ends in a space (no concept), '"#' ends inside the string
    assert [bool(tl["operator"][i]) for i in range(4)] == [False, False, False, False]
    assert [bool(tl["string"][i]) for i in range(5)] == [False, False, True, True, True]
    assert bool(tl["identifier"][0]) and bool(tl["number"][pieces.index(b"2")])
    assert tl["indent_depth"].shape == ids.shape and tl["valid"].all()


def test_token_ends_trained_bpe_on_corpus_windows():
    data = (SNIPPET * 3).encode()
    bpe = train_bpe(np.frombuffer(data, np.uint8), 40)
    ids = bpe.encode_bytes(data)
    ends = token_ends(ids, bpe)
    assert ids.size < len(data) and ends[-1] == len(data)
    assert all(bpe.decode_bytes(ids[:k]) == data[:ends[k - 1]] for k in (1, 7, ids.size // 2, ids.size))
    labels = byte_labels(data)
    tl = token_labels(labels, ends[None, :].repeat(2, 0))     # any shape
    assert tl["comment"].shape == (2, ids.size)
    np.testing.assert_array_equal(tl["comment"][0], labels["comment"][ends - 1])


def test_token_labels_rejects_out_of_range_ends():
    labels = byte_labels(b"x = 1\n")
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        token_labels(labels, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        token_labels(labels, np.array([7]))


class _WithEOS:
    """A BPE tokenizer with an end-of-text token, as `HFTokenizer` has (`eos_id`)."""

    def __init__(self, bpe: BPETokenizer):
        self.bpe, self.eos_id = bpe, bpe.vocab_size - 1

    def encode(self, text: str) -> np.ndarray:
        return self.bpe.encode(text)

    def token_bytes(self, token_id: int) -> bytes:
        return b"<|endoftext|>" if token_id == self.eos_id else self.bpe.token_bytes(token_id)


def test_corpus_token_ends_file_by_file():
    files = [b"def f():\n    return 'x'\n", b"import os\n", "é = 1\n".encode()]
    data = b"\0".join(files) + b"\0"
    byte_ends = corpus_token_ends(data, ByteTokenizer())
    np.testing.assert_array_equal(byte_ends, np.arange(1, len(data) + 1))
    bpe = train_bpe(np.frombuffer(data, np.uint8), 12)
    ends = corpus_token_ends(np.frombuffer(data, np.uint8), bpe)
    assert ends[-1] == len(data) - 1              # no joiner: the last file's last token ends before its separator
    labels = byte_labels(data)
    tl = token_labels(labels, ends)
    assert tl["valid"].all()                       # every token lies inside a file
    eos = _WithEOS(bpe)
    ends_eos = corpus_token_ends(data, eos)
    assert ends_eos.size == ends.size + 3 and ends_eos[-1] == len(data)
    seps = np.flatnonzero(np.frombuffer(data, np.uint8) == 0) + 1
    assert set(seps) <= set(ends_eos.tolist())     # each joiner ends on its separator byte: not valid
    assert (~token_labels(labels, ends_eos)["valid"]).sum() == 3
    with pytest.raises(ValueError, match="tokenizes to"):
        corpus_token_ends(data, bpe, tokens=np.zeros(3))
