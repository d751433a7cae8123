"""Byte flips and truncations of every kind of file in a checkpoint step directory.

A tiny toy sweep (2 instances, 3 chunks) is checkpointed once; each case copies it, damages
one file of the newest step (or of every step), and runs the sweep again on the copy. The
resumed run must either restore a good step and end bit-identical to an uninterrupted run, or
say clearly that nothing readable remains: never a silent corrupt restore, never a traceback
or a stray log line, and no file outside the run directory touched. One case goes through
the real `superpos run` / `superpos resume` command line.

The reduced set (one flip and one truncation per file kind, the largest file of the kind)
runs by default; `-m faults_full` adds several seeds per kind, each picking a file of the
kind and the positions (or the length) at random, and the same damage to every step.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from superpos_jax import OptimConfig, geometric_importance, instance_keys, make_trainer, run_sweep, toy_hparams, toy_task
from superpos_jax.engine import checkpoint

N_FEATURES, D_HIDDEN, STEPS, CHUNK = 40, 10, 30, 10  # big enough that array chunks are stored out of line

# Every file orbax writes in a step directory, by kind (relative glob patterns).
FILE_KINDS = {
    "step-record": ["_CHECKPOINT_METADATA"],
    "commit-markers": ["commit_success.txt", "meta/commit_success.txt", "state/commit_success.txt"],
    "meta-json": ["meta/metadata"],
    "tree-metadata": ["state/_METADATA"],
    "ocdbt-manifest": ["state/manifest.ocdbt"],
    "ocdbt-btree": ["state/d/*"],
    "process-manifest": ["state/ocdbt.process_*/manifest.ocdbt"],
    "array-data": ["state/ocdbt.process_*/d/*"],
}
FULL_SEEDS = range(1, 6)


def _kind_of(relative: str) -> str | None:
    for kind, patterns in FILE_KINDS.items():
        if any(fnmatch.fnmatchcase(relative, p) for p in patterns):
            return kind
    return None


def _files_of(step_dir: Path, kind: str) -> list[Path]:
    """The files of `kind` in a step directory, largest first (ties by name)."""
    found = [f for f in step_dir.rglob("*") if f.is_file() and _kind_of(f.relative_to(step_dir).as_posix()) == kind]
    return sorted(found, key=lambda f: (-f.stat().st_size, f.as_posix()))


def _damage(path: Path, how: str, rng: np.random.Generator) -> None:
    """Flip up to 10 bytes at seeded positions (XOR a nonzero byte), or truncate at a seeded length."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        for i in rng.choice(len(data), min(10, len(data)), replace=False):
            data[i] ^= int(rng.integers(1, 256))
    else:
        data = data[: int(rng.integers(0, len(data)))]
    path.write_bytes(bytes(data))


class _Sweep:
    """The tiny sweep, its uninterrupted result and a pristine checkpoint of it."""

    def __init__(self, root: Path):
        self.trainer = make_trainer(toy_task(N_FEATURES, D_HIDDEN, 32), OptimConfig(name="adamw"), log_every=5)
        self.hparams = toy_hparams(np.array([1.0, 0.1]), geometric_importance(N_FEATURES, 0.9), ["relu", "relu"], 1e-2)
        self.keys = instance_keys([0, 1])
        self.reference = self.run()
        self.pristine = root / "pristine"
        self.run(checkpoint_dir=self.pristine)
        assert checkpoint.steps(self.pristine) == [10, 20, 30]

    def run(self, **kw):
        return run_sweep(self.trainer, self.hparams, self.keys, n_steps=STEPS, chunk_steps=CHUNK, progress=False,
                         fingerprint={"config": {"case": "faults"}}, **kw)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> _Sweep:
    return _Sweep(tmp_path_factory.mktemp("sweep"))


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` outside `skip`: relative path → (size, mtime in ns)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and skip not in p.parents}


def _assert_identical(result, reference) -> None:
    np.testing.assert_array_equal(result.losses, reference.losses)
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(reference.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_file_in_a_step_has_a_kind(sweep):
    """The kinds below are all the files orbax writes (a new kind fails here, not silently)."""
    step_dir = sweep.pristine / "30"
    files = [f.relative_to(step_dir).as_posix() for f in step_dir.rglob("*") if f.is_file()]
    assert [f for f in files if _kind_of(f) is None] == []
    assert {_kind_of(f) for f in files} == set(FILE_KINDS)
    assert len(_files_of(step_dir, "array-data")) >= 1


def _check_case(sweep: _Sweep, tmp_path: Path, capfd, caplog, kind: str, how: str, seed: int, every_step: bool) -> None:
    run_dir = tmp_path / "run"
    ckpt = run_dir / "checkpoints"
    shutil.copytree(sweep.pristine, ckpt)
    (tmp_path / "outside.txt").write_text("not part of the run")
    rng = np.random.default_rng(seed)
    damaged = checkpoint.steps(ckpt) if every_step else [STEPS]
    for step in damaged:
        files = _files_of(ckpt / str(step), kind)
        target = files[0] if seed == 0 else files[int(rng.integers(len(files)))]
        _damage(target, how, rng)
    before = _snapshot(tmp_path, run_dir)
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        try:
            result = sweep.run(checkpoint_dir=ckpt)
        except checkpoint.CheckpointError as e:
            result, error = None, str(e)
    err = capfd.readouterr().err
    assert _snapshot(tmp_path, run_dir) == before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    warnings = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("checkpoint step ") and " is unreadable" in line for line in warnings), err
    quarantined = sorted(int(p.name) for p in (run_dir / "checkpoints-corrupt").iterdir()) if warnings else []
    assert len(quarantined) == len(warnings) and set(quarantined) <= set(damaged)
    if result is None:  # nothing readable remains: said clearly, and every step kept aside
        assert every_step and "no readable checkpoint" in error and quarantined == damaged
        assert checkpoint.steps(ckpt) == []
        return
    _assert_identical(result, sweep.reference)
    assert result.start_step == max(set(checkpoint.steps(sweep.pristine)) - set(quarantined))
    assert checkpoint.steps(ckpt) == [10, 20, 30]


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_damaged_newest_step(sweep, tmp_path, capfd, caplog, kind, how):
    _check_case(sweep, tmp_path, capfd, caplog, kind, how, seed=0, every_step=False)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("kind", ["array-data", "meta-json", "ocdbt-btree"])
def test_damage_in_every_step_is_a_clear_error(sweep, tmp_path, capfd, caplog, kind, how):
    _check_case(sweep, tmp_path, capfd, caplog, kind, how, seed=0, every_step=True)


@pytest.mark.faults_full
@pytest.mark.parametrize("every_step", [False, True], ids=["newest", "every"])
@pytest.mark.parametrize("seed", FULL_SEEDS)
@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_damage_full(sweep, tmp_path, capfd, caplog, kind, how, seed, every_step):
    _check_case(sweep, tmp_path, capfd, caplog, kind, how, seed=seed, every_step=every_step)


def _superpos(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "superpos_jax.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_resume_after_bit_rot_in_the_newest_step(tmp_path):
    """`superpos run sparsity --quick`, then flips in the newest step's array data, then
    `superpos resume`: one warning naming the step, and the same summary and final state
    as the uninterrupted run."""
    settings = ["--set", "n_steps=300", "chunk_steps=100", "batch_size=64", "log_every=10"]
    done = tmp_path / "done"
    result = _superpos("run", "sparsity", "--quick", *settings, "--out", str(done))
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "damaged"
    shutil.copytree(done, run_dir)
    ckpt = run_dir / "checkpoints"
    assert checkpoint.steps(ckpt) == [100, 200, 300]
    _damage(_files_of(ckpt / "300", "array-data")[0], "flip", np.random.default_rng(0))
    before = _snapshot(tmp_path, run_dir)
    resumed = _superpos("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "Event loop" not in resumed.stderr
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("checkpoint step")]
    # A flip is caught by our SHA-256 ("array ...") or, where it breaks the zstd stream (which
    # depends on the bytes this machine's XLA computed), by orbax's own read: both quarantine.
    prefix = f"checkpoint step 300 in {ckpt} is unreadable: "
    assert len(warnings) == 1 and warnings[0].startswith((prefix + "array ", prefix + "its arrays cannot be read")), resumed.stderr
    assert f"moved to {run_dir / 'checkpoints-corrupt' / '300'}" in warnings[0]
    assert "resumed from step 200" in resumed.stderr
    assert _snapshot(tmp_path, run_dir) == before
    a, b = (json.loads((d / "summary.json").read_text()) for d in (done, run_dir))
    assert [i["final_loss"] for i in a["instances"]] == [i["final_loss"] for i in b["instances"]]
    assert [i["feature_norms"] for i in a["instances"]] == [i["feature_norms"] for i in b["instances"]]
    record = [json.loads((d / "checkpoints" / "300" / "meta" / "metadata").read_text())[checkpoint.INTEGRITY]["leaves"]
              for d in (done, run_dir)]
    assert record[0] == record[1]  # every array of the rewritten step has the uninterrupted run's SHA-256

    # The same damage in every step: nothing readable remains, said in one line, exit 2.
    hopeless = tmp_path / "hopeless"
    shutil.copytree(done, hopeless)
    for step in (100, 200, 300):
        _damage(_files_of(hopeless / "checkpoints" / str(step), "array-data")[0], "flip", np.random.default_rng(0))
    failed = _superpos("resume", str(hopeless))
    assert failed.returncode == 2, failed.stderr
    assert "Traceback" not in failed.stderr and "Event loop" not in failed.stderr
    assert f"superpos: error: no readable checkpoint in {hopeless / 'checkpoints'}" in failed.stderr
    assert sorted(p.name for p in (hopeless / "checkpoints-corrupt").iterdir()) == ["100", "200", "300"]
