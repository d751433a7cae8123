"""`superpos run monosemanticity --set corpus_dir=DIR` on unlucky directories, through the real
command line in subprocesses: a directory of .txt files (with binaries among them) trains and the
summary counts the skipped binaries; a directory with nothing readable is refused with
`superpos: error: config field 'corpus_dir' ...`, exit 2, before any run directory exists, and no
file outside the run directory is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

# Small enough to train in well under a minute of CPU; big enough to exercise every stage.
_TINY = ["--quick", "--set", "n_steps=20", "--set", "sae_steps=20", "--set", "chunk_steps=10", "--set", "log_every=10",
         "--set", "harvest_windows=64", "--set", "eval_windows=8", "--set", "browser_units=4"]


def _superpos(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "superpos_jax.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` outside `skip`: relative path → (size, mtime in ns)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and skip not in path.parents:
            stat = path.stat()
            out[path.relative_to(root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return out


def _is_val(name: str) -> bool:  # the corpus's split rule with the default val_fraction
    return zlib.crc32(name.encode()) / 2**32 < 0.05


def _text_dir(root: Path, n_files: int = 30) -> Path:
    """`n_files` .txt files, at least one of them in the validation split."""
    root.mkdir()
    names = [f"note{i:02d}.txt" for i in range(n_files)]
    if not any(_is_val(n) for n in names):
        names[-1] = next(f"extra{i}.txt" for i in range(10_000) if _is_val(f"extra{i}.txt"))
    for i, name in enumerate(names):
        (root / name).write_text(f"entry {i}: the quick brown fox jumps over the lazy dog.\n" * 60, encoding="utf-8")
    return root


def _refused(tmp_path: Path, corpus: Path, *extra: str) -> str:
    """Run on `corpus`; assert the clean refusal; return stderr."""
    out = tmp_path / "run"
    before = _snapshot(tmp_path, out)
    result = _superpos("run", "monosemanticity", *_TINY, "--out", str(out), "--set", f"corpus_dir={corpus}", *extra)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("superpos: error: config field 'corpus_dir'"), result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert _snapshot(tmp_path, out) == before
    return result.stderr


def test_empty_directory_is_refused_before_the_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "0 file(s) matched" in _refused(tmp_path, tmp_path / "empty")


def test_directory_of_binaries_is_refused_before_the_run_directory(tmp_path):
    corpus = tmp_path / "binaries"
    corpus.mkdir()
    (corpus / "blob.bin").write_bytes(bytes(range(256)) * 40)
    (corpus / "text_with_nul.txt").write_bytes(b"looks like text\x00but is not")
    (corpus / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    assert "3 file(s) matched: 3 binary or not UTF-8" in _refused(tmp_path, corpus)


@pytest.mark.slow
def test_directory_of_text_files_trains_and_counts_binaries(tmp_path):
    corpus = _text_dir(tmp_path / "texts")
    (corpus / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(4096))
    (corpus / "sub").mkdir()
    (corpus / "sub" / "data.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes(200))
    out = tmp_path / "run"
    before = _snapshot(tmp_path, out)
    result = _superpos("run", "monosemanticity", *_TINY, "--out", str(out), "--set", f"corpus_dir={corpus}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    report = summary["corpus"]
    assert report["include"] == ["*"] and report["skipped_binary"] == 2 and report["files"] == 30
    assert report["root"] == str(corpus.resolve()) and report["val_bytes"] > 0
    assert _snapshot(tmp_path, out) == before


# ---------------------------------------------------------------- the full set


@pytest.mark.faults_full
def test_glob_matching_nothing_is_refused(tmp_path):
    corpus = _text_dir(tmp_path / "texts", n_files=5)
    assert "matching ['*.rst']" in _refused(tmp_path, corpus, "--set", "corpus_glob=*.rst")


@pytest.mark.faults_full
def test_empty_validation_split_is_refused(tmp_path):
    corpus = tmp_path / "train_only"
    corpus.mkdir()
    name = next(f"t{i}.txt" for i in range(1000) if not _is_val(f"t{i}.txt"))
    (corpus / name).write_text("only training text\n" * 100, encoding="utf-8")
    assert "the val split" in _refused(tmp_path, corpus)


@pytest.mark.faults_full
def test_files_all_over_the_byte_budget_are_refused(tmp_path):
    corpus = _text_dir(tmp_path / "big", n_files=3)
    assert "larger than what is left of the max_bytes=1000 budget" in _refused(
        tmp_path, corpus, "--set", "max_bytes=1000")


@pytest.mark.faults_full
def test_a_missing_or_file_corpus_dir_is_refused(tmp_path):
    (tmp_path / "a_file.txt").write_text("not a directory\n")
    for corpus in (tmp_path / "missing", tmp_path / "a_file.txt"):
        assert "an existing directory of text files" in _refused(tmp_path, corpus)


@pytest.mark.faults_full
def test_huge_sparse_binary_is_skipped_without_reading_it(tmp_path):
    corpus = tmp_path / "sparse"
    corpus.mkdir()
    with open(corpus / "disk.img", "wb") as f:
        f.truncate(8 << 30)  # 8 GiB of NUL bytes, no blocks on disk
    assert "1 file(s) matched: 1 binary or not UTF-8" in _refused(tmp_path, corpus, "--set", "max_bytes=1000000000000")
