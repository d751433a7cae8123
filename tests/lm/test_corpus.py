"""Corpus loading, split, windows and unigram baselines (the tokenizers: test_tokenizers.py)."""

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.lm.corpus import (
    SEPARATOR,
    CorpusError,
    check_corpus,
    discover_files,
    eval_windows,
    load_corpus,
    sample_windows,
    stdlib_source_dir,
    unigram_cross_entropy,
    unigram_entropy,
)
from superpos_jax.lm.tokenizers import ByteTokenizer


def _make_tree(root):
    files = {
        "a.py": "print('a')\n",
        "pkg/b.py": "x = 'héllo wörld 日本'\n",
        "pkg/sub/c.py": "def f():\n    return 1\n" * 3,
        "zz.py": "# last\n",
        "notes.txt": "not python\n",
        "__pycache__/d.py": "cached = 1\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "binary.py").write_bytes(b"abc\x00def")
    (root / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    for i in range(40):
        (root / f"many/m{i:02d}.py").parent.mkdir(exist_ok=True)
        (root / f"many/m{i:02d}.py").write_text(f"value_{i} = {i}\n", encoding="utf-8")
    return files


def _is_val(rel, fraction):
    return zlib.crc32(rel.encode("utf-8")) / 2**32 < fraction


def test_discover_files_sorted_and_filtered(tmp_path):
    _make_tree(tmp_path)
    rels = [p.relative_to(tmp_path).as_posix() for p in discover_files(tmp_path, include=["*.py"])]
    assert rels == sorted(rels)
    assert "a.py" in rels and "pkg/sub/c.py" in rels
    assert "notes.txt" not in rels and "__pycache__/d.py" not in rels
    every = [p.relative_to(tmp_path).as_posix() for p in discover_files(tmp_path)]
    assert "notes.txt" in every and "a.py" in every and "__pycache__/d.py" not in every
    nested = [p.relative_to(tmp_path).as_posix() for p in discover_files(tmp_path, include=["pkg/*.py", "*.txt"])]
    assert nested == ["notes.txt", "pkg/b.py", "pkg/sub/c.py"]  # "/" patterns match the path, `*` crosses "/"
    with pytest.raises(FileNotFoundError, match="not a directory"):
        discover_files(tmp_path / "missing")


def test_load_corpus_contents_split_and_skips(tmp_path):
    _make_tree(tmp_path)
    corpus = load_corpus(tmp_path, include="*.py", val_fraction=0.3)
    assert corpus.n_binary == 2 and corpus.n_skipped == 2  # binary.py (NUL), latin1.py (not UTF-8)
    kept = sorted(corpus.train_files + corpus.val_files)
    assert "binary.py" not in kept and "latin1.py" not in kept and len(kept) == 44
    for split, names in (("train", corpus.train_files), ("val", corpus.val_files)):
        assert list(names) == sorted(names)
        assert all(_is_val(n, 0.3) == (split == "val") for n in names)
        expected = b"".join((tmp_path / n).read_bytes() + bytes([SEPARATOR]) for n in names)
        assert getattr(corpus, split).tobytes() == expected
        assert getattr(corpus, split).dtype == np.uint8
    assert corpus.n_train_bytes + corpus.n_val_bytes == sum((tmp_path / n).stat().st_size + 1 for n in kept)


def test_split_stable_when_files_are_added(tmp_path):
    _make_tree(tmp_path)
    before = load_corpus(tmp_path, include="*.py", val_fraction=0.3)
    (tmp_path / "new_module.py").write_text("added = True\n", encoding="utf-8")
    after = load_corpus(tmp_path, include="*.py", val_fraction=0.3)
    assert set(before.val_files) <= set(after.val_files)
    assert set(before.train_files) <= set(after.train_files)
    assert before.fingerprint != after.fingerprint
    assert load_corpus(tmp_path, include="*.py", val_fraction=0.3).fingerprint == after.fingerprint


def test_load_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match=r"no readable text files matching \['\*'\] .*\(0 file\(s\) matched"):
        load_corpus(tmp_path)
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for load in (load_corpus, check_corpus):
        with pytest.raises(CorpusError, match=r"2 file\(s\) matched: 2 binary or not UTF-8"):
            load(tmp_path)
    with pytest.raises(CorpusError, match="val_fraction"):
        load_corpus(tmp_path, val_fraction=1.0)
    with pytest.raises(CorpusError, match="glob patterns"):
        load_corpus(tmp_path, include=[""])


def _val_and_train_names(n: int, fraction: float) -> tuple[str, str]:
    names = [f"doc{i:03d}.txt" for i in range(n)]
    return next(x for x in names if _is_val(x, fraction)), next(x for x in names if not _is_val(x, fraction))


def test_user_directory_reads_every_text_file_and_counts_binaries(tmp_path):
    val_name, train_name = _val_and_train_names(200, 0.05)
    (tmp_path / val_name).write_text("validation text\n", encoding="utf-8")
    (tmp_path / train_name).write_text("training text\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("# markdown counts as text\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 64)
    (tmp_path / "late_nul.txt").write_bytes(b"a" * 20_000 + b"\x00")  # the NUL is past the first 8 KiB
    corpus = load_corpus(tmp_path)  # default for a user directory: every file
    assert corpus.include == ("*",) and corpus.n_binary == 2 and corpus.n_over_budget == 0
    assert sorted(corpus.train_files + corpus.val_files) == sorted([val_name, train_name, "notes.md"])
    assert corpus.val_files == (val_name,)
    check_corpus(tmp_path)
    only_md = load_corpus(tmp_path, include=["*.md", val_name])
    assert sorted(only_md.train_files + only_md.val_files) == sorted(["notes.md", val_name]) and only_md.n_binary == 0
    with pytest.raises(CorpusError, match="the val split .* is empty"):
        check_corpus(tmp_path, include="*.md")
    with pytest.raises(CorpusError, match="the val split .* is empty"):
        load_corpus(tmp_path, include="*.md")


def test_check_corpus_agrees_with_load_corpus_under_a_budget(tmp_path):
    val_name, train_name = _val_and_train_names(200, 0.05)
    (tmp_path / val_name).write_text("v" * 500, encoding="utf-8")
    (tmp_path / train_name).write_text("t" * 50, encoding="utf-8")
    for max_bytes in (100, 2_000, 20_000):  # the val budget (5%) holds the 500-byte file only at 20 000
        outcomes = []
        for call in (load_corpus, check_corpus):
            try:
                call(tmp_path, max_bytes=max_bytes)
                outcomes.append("ok")
            except CorpusError as e:
                outcomes.append(str(e))
        assert outcomes[0] == outcomes[1], max_bytes
        assert (outcomes[0] == "ok") == (max_bytes == 20_000)


def test_stdlib_capped_load_is_deterministic():
    assert (stdlib_source_dir() / "os.py").is_file()
    a = load_corpus(max_bytes=200_000)
    b = load_corpus(max_bytes=200_000)
    assert a.fingerprint == b.fingerprint
    assert a.n_train_bytes <= 0.95 * 200_000 and a.n_val_bytes <= 0.05 * 200_000
    assert a.n_train_bytes > 100_000 and a.n_val_bytes > 0
    text = ByteTokenizer().decode(a.train[: a.train.size // 2])
    assert "def " in text


def test_sample_windows_contiguous_inside_scan():
    tokens = jnp.arange(1000, dtype=jnp.int32)

    @jax.jit
    def draw(key):
        def body(carry, step):
            return carry, sample_windows(tokens, key=jax.random.fold_in(key, step), batch_size=64, seq_len=17)

        return jax.lax.scan(body, 0, jnp.arange(20))[1]

    windows = np.asarray(draw(jax.random.key(0)))
    assert windows.shape == (20, 64, 17) and windows.dtype == np.int32
    np.testing.assert_array_equal(np.diff(windows, axis=-1), 1)
    starts = windows[..., 0].ravel()
    assert starts.min() >= 0 and starts.max() <= 1000 - 17
    assert starts.min() < 20 and starts.max() > 1000 - 17 - 20  # covers the whole range
    np.testing.assert_array_equal(windows, np.asarray(draw(jax.random.key(0))))
    uint8_windows = sample_windows(np.arange(300, dtype=np.uint8) % 7, key=jax.random.key(1), batch_size=3, seq_len=5)
    assert uint8_windows.dtype == jnp.int32
    with pytest.raises(ValueError, match="shorter than seq_len"):
        sample_windows(jnp.zeros(4, jnp.int32), key=jax.random.key(0), batch_size=1, seq_len=5)


def test_eval_windows_evenly_spaced_non_overlapping():
    tokens = jnp.arange(103, dtype=jnp.int32)
    w = np.asarray(eval_windows(tokens, 5, 20))
    np.testing.assert_array_equal(w[:, 0], np.arange(5) * (103 // 5))
    np.testing.assert_array_equal(w, w[:, :1] + np.arange(20)[None, :])
    assert len(np.unique(w)) == w.size
    with pytest.raises(ValueError, match="non-overlapping"):
        eval_windows(tokens, 6, 20)


def test_unigram_baselines_closed_forms():
    assert unigram_entropy(np.arange(256) % 8, 256) == pytest.approx(math.log(8))
    assert unigram_entropy(np.zeros(10, np.int32), 4) == pytest.approx(0.0)
    train = np.array([0, 0, 0, 1], np.int32)
    val = np.array([0, 1, 2], np.int32)
    q = np.array([4, 2, 1]) / (4 + 3)
    expected = -(np.log(q[0]) + np.log(q[1]) + np.log(q[2])) / 3
    assert unigram_cross_entropy(train, val, 3) == pytest.approx(expected)
    with pytest.raises(ValueError, match="must lie in"):
        unigram_entropy(np.array([5]), 4)
