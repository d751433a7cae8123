"""Checksummed checkpoints: every array and the meta verified on restore; unusable steps
quarantined with a one-line warning naming the step and what failed; other runs' steps
(fingerprint, array layout) refused and left in place; a failed read is quiet."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from superpos_jax.engine import checkpoint

FINGERPRINT = {"config": {"lr": 0.01, "n": 40}}


def _tree(seed: int) -> dict[str, np.ndarray]:
    """Eight leaves (so that a failed read has several in flight), the big ones stored out of line."""
    rng = np.random.default_rng(seed)
    tree = {f"w{i}": rng.normal(size=(2, 40, 10)).astype(np.float32) for i in range(6)}
    return {**tree, "b": rng.normal(size=(2, 10)).astype(np.float32), "step": np.array([seed, seed], np.int32)}


def _like() -> dict[str, np.ndarray]:
    return {k: np.zeros_like(v) for k, v in _tree(0).items()}


def _write(directory: Path, stepped: dict[int, dict[str, np.ndarray]], fingerprint=FINGERPRINT) -> None:
    mngr = checkpoint.manager(directory)
    for step, tree in stepped.items():
        checkpoint.save(mngr, step, tree, {"fingerprint": fingerprint, "step": step, "non_finite": {}})
        mngr.wait_until_finished()
    mngr.close()


def _assert_tree_equal(a, b) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _largest_data_file(step_dir: Path) -> Path:
    return max((f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"),
               key=lambda f: (f.stat().st_size, f.name))


def _corrupt_dir(directory: Path) -> Path:
    return directory.parent / f"{directory.name}-corrupt"


@pytest.fixture
def two_steps(tmp_path):
    directory = tmp_path / "checkpoints"
    _write(directory, {1: _tree(1), 2: _tree(2)})
    return directory


def test_roundtrip_records_every_array_and_the_meta(two_steps):
    tree, meta, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 2
    _assert_tree_equal(tree, _tree(2))
    assert meta == {"fingerprint": FINGERPRINT, "step": 2, "non_finite": {}}
    on_disk = json.loads((two_steps / "2" / "meta" / "metadata").read_text())
    record = on_disk[checkpoint.INTEGRITY]
    assert sorted(record["leaves"]) == sorted(f"['{k}']" for k in _tree(0))
    assert record["leaves"]["['w0']"]["dtype"] == "float32" and record["leaves"]["['w0']"]["shape"] == [2, 40, 10]
    assert len(record["leaves"]["['w0']"]["sha256"]) == 64 and len(record["meta_sha256"]) == 64


def test_arrays_that_differ_from_their_checksum_are_quarantined(two_steps, tmp_path, capsys):
    """Valid orbax data with other numbers (what a flip inside a zstd chunk can decode to)."""
    other = tmp_path / "other"
    bad = {**_tree(2), "w3": _tree(2)["w3"] + np.float32(1e-3)}
    _write(other, {2: bad})
    shutil.rmtree(two_steps / "2" / "state")
    shutil.copytree(other / "2" / "state", two_steps / "2" / "state")
    tree, _, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 1
    _assert_tree_equal(tree, _tree(1))
    err = capsys.readouterr().err
    assert "checkpoint step 2" in err and "array ['w3'] does not match the SHA-256" in err
    assert (_corrupt_dir(two_steps) / "2" / "state").is_dir() and checkpoint.steps(two_steps) == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_bytes_in_array_data_never_restore_silently(two_steps, seed):
    f = _largest_data_file(two_steps / "2")
    data = bytearray(f.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), 10, replace=False):
        data[i] ^= int(rng.integers(1, 256))
    f.write_bytes(bytes(data))
    tree, _, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    _assert_tree_equal(tree, _tree(step))  # step 2 only if every flipped byte was unused
    assert step == 1  # ten flips in the chunk data always hit something here


def test_meta_without_its_record_is_corrupt_not_another_run(two_steps, capsys):
    (two_steps / "2" / "meta" / "metadata").write_text("{}")
    tree, meta, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 1 and meta["step"] == 1
    _assert_tree_equal(tree, _tree(1))
    err = capsys.readouterr().err
    assert "checkpoint step 2" in err and "no valid 'integrity' record" in err and "different run" not in err


@pytest.mark.parametrize("edit", ["value", "list", "array"])
def test_edited_meta_is_corrupt(two_steps, capsys, edit):
    path = two_steps / "2" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    if edit == "value":
        meta["non_finite"] = {"0": 2}
    elif edit == "list":
        meta[checkpoint.INTEGRITY] = []
    else:
        meta[checkpoint.INTEGRITY]["leaves"]["['w1']"]["sha256"] = "0" * 64
    path.write_text(json.dumps(meta))
    _, _, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 1
    assert "checkpoint step 2" in capsys.readouterr().err


def test_meta_that_is_not_an_object_is_corrupt(two_steps, capsys):
    (two_steps / "2" / "meta" / "metadata").write_text("[1, 2]")
    _, _, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 1 and "JSON list, not an object" in capsys.readouterr().err


def test_unreadable_step_record_is_corrupt_and_quiet(two_steps, capsys, caplog):
    (two_steps / "2" / "_CHECKPOINT_METADATA").write_bytes(b'{"ite')
    with caplog.at_level(logging.WARNING):
        _, _, step = checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert step == 1
    assert "_CHECKPOINT_METADATA is not a JSON object" in capsys.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_other_arrays_are_a_mismatch_and_left_in_place(two_steps):
    like = {**_like(), "w0": np.zeros((2, 40, 12), np.float32)}
    del like["b"]
    like["extra"] = np.zeros(3, np.float32)
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        checkpoint.restore_latest(two_steps, like, fingerprint=FINGERPRINT)
    msg = str(e.value)
    assert "step 2" in msg and "array ['w0']: checkpoint has float32[2, 40, 10], this run has float32[2, 40, 12]" in msg
    assert "array ['b']: in the checkpoint, not in this run" in msg and "array ['extra']: in this run, not in the checkpoint" in msg
    assert checkpoint.steps(two_steps) == [1, 2] and not _corrupt_dir(two_steps).exists()


def test_fingerprint_is_checked_before_any_array_is_read(tmp_path):
    directory = tmp_path / "c"
    _write(directory, {1: _tree(1)}, fingerprint={"config": {"lr": 0.5, "n": 40}})
    f = _largest_data_file(directory / "1")
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"config.lr: checkpoint has 0.5, this run has 0.01"):
        checkpoint.restore_latest(directory, _like(), fingerprint=FINGERPRINT)
    assert checkpoint.steps(directory) == [1] and not _corrupt_dir(directory).exists()


def test_explicit_step_is_verified_and_never_moved(two_steps):
    (two_steps / "2" / "meta" / "metadata").write_text("{}")
    with pytest.raises(checkpoint.CheckpointCorrupt, match=r"checkpoint step 2 in .* is unreadable: its meta has no valid"):
        checkpoint.restore(two_steps, _like(), step=2)
    assert checkpoint.steps(two_steps) == [1, 2]
    tree, step = checkpoint.restore(two_steps, _like(), step=1)
    _assert_tree_equal(tree, _tree(1))


def test_no_verified_step_left_is_a_clear_error(two_steps):
    for step in (1, 2):
        (two_steps / str(step) / "meta" / "metadata").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint .* all 2 step"):
        checkpoint.restore_latest(two_steps, _like(), fingerprint=FINGERPRINT)
    assert sorted(p.name for p in _corrupt_dir(two_steps).iterdir()) == ["1", "2"]


def test_save_refuses_the_reserved_meta_key(tmp_path):
    mngr = checkpoint.manager(tmp_path / "c")
    with pytest.raises(ValueError, match="may not use the key 'integrity'"):
        checkpoint.save(mngr, 1, _tree(1), {checkpoint.INTEGRITY: 1})
    mngr.close()


def test_a_failed_read_leaves_no_read_in_flight(two_steps, tmp_path, monkeypatch, capfd, caplog):
    """Orbax runs a restore in a fresh event loop and closes it at the first failed array read,
    with the other reads still in flight; when they completed, their callbacks printed
    "Event loop is closed" tracebacks, and the other failed reads "Task exception was never
    retrieved". Whether a read is still in flight at that moment is a
    race, so the failure is provoked several times: no loop may ever close with unfinished
    tasks, and nothing but the one-line warnings reaches stderr."""
    abandoned, unraisable = [], []
    real_close = asyncio.BaseEventLoop.close

    def close(loop):
        if not loop.is_running():
            abandoned.extend(t for t in asyncio.all_tasks(loop) if not t.done())
        real_close(loop)

    monkeypatch.setattr(asyncio.BaseEventLoop, "close", close)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    rounds = 8
    caplog.set_level(logging.WARNING)
    for r in range(rounds):
        directory = shutil.copytree(two_steps, tmp_path / f"round{r}" / "checkpoints")
        for f in (directory / "2" / "state" / "d").iterdir():
            f.write_bytes(f.read_bytes()[:3])
        _, _, step = checkpoint.restore_latest(directory, _like(), fingerprint=FINGERPRINT)
        assert step == 1
    gc.collect()  # a task whose exception nobody retrieved is logged when it is collected
    assert not abandoned and not unraisable
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == rounds and all(line.startswith("checkpoint step 2 in ") for line in lines), lines
