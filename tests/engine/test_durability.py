"""Durability through the real command line, in subprocesses: kill -9 then resume, SIGTERM,
mismatched configs, and a 2-process `jax.distributed` run on loopback.

Every run here uses 4 CPU devices in total (one process with 4, or two with 2 each), so each
device holds the same instances and the results must agree bit for bit.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from superpos_experiments import sparsity
from superpos_jax.engine import checkpoint
from superpos_jax.config import apply_overrides

SETTINGS = ["n_steps=3000", "chunk_steps=100", "log_every=10", "n_seeds=2", "feature_probabilities=1,0.1,0.01", "batch_size=256"]
STEPS = 3000


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices), PYTHONUNBUFFERED="1")
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "superpos_jax.cli", *args]


def _start_run(out: Path, *extra: str, devices: int = 4) -> subprocess.Popen:
    cmd = _command("run", "sparsity", "--out", str(out), "--set", *SETTINGS, *extra)
    return subprocess.Popen(cmd, env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _resume(out: Path, devices: int = 4) -> subprocess.CompletedProcess:
    return subprocess.run(_command("resume", str(out)), env=_env(devices), capture_output=True, text=True, timeout=240)


def _wait_for_checkpoint(ckpt: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not checkpoint.steps(ckpt):
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.005)


def _final_state(run_dir: Path):
    cfg = apply_overrides(sparsity.Config(), SETTINGS)
    grid, hparams, keys, trainer = sparsity.build(cfg)
    shapes = jax.eval_shape(trainer.init, hparams, keys)
    like = (jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), np.zeros((grid.size, STEPS // 10), np.float32), None)
    tree, step = checkpoint.restore(run_dir / "checkpoints", like, step=STEPS)
    return tree


def _assert_bit_identical(a: Path, b: Path) -> None:
    for x, y in zip(jax.tree.leaves(_final_state(a)), jax.tree.leaves(_final_state(b)), strict=True):
        np.testing.assert_array_equal(x, y)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert [i["final_loss"] for i in sa["instances"]] == [i["final_loss"] for i in sb["instances"]]
    assert [i["feature_norms"] for i in sa["instances"]] == [i["feature_norms"] for i in sb["instances"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    code, _, err = _finish(_start_run(out))
    assert code == 0, err
    assert checkpoint.latest_step(out / "checkpoints") == STEPS
    return out


def test_kill_9_then_resume_is_bit_identical(reference, tmp_path):
    out = tmp_path / "run"
    proc = _start_run(out)
    _wait_for_checkpoint(out / "checkpoints", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = checkpoint.latest_step(out / "checkpoints")
    assert done is not None and done < STEPS and not (out / "summary.json").exists()
    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr
    _assert_bit_identical(out, reference)


def test_sigterm_checkpoints_and_exits_cleanly(reference, tmp_path):
    out = tmp_path / "run"
    proc = _start_run(out)
    _wait_for_checkpoint(out / "checkpoints", proc)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 75, err
    assert "SIGTERM" in err and f"superpos resume {out}" in err
    stopped = checkpoint.latest_step(out / "checkpoints")
    assert stopped is not None and stopped < STEPS
    assert not (out / "summary.json").exists()
    resumed = _resume(out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {stopped}" in resumed.stderr
    _assert_bit_identical(out, reference)


def test_resume_with_edited_config_is_refused(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["learning_rate"] = 0.5
    (out / "config.json").write_text(json.dumps(meta))
    before = sorted(str(p) for p in out.rglob("*"))
    result = _resume(out)
    assert result.returncode == 2
    assert "belongs to a different run" in result.stderr
    assert "config.learning_rate: checkpoint has 0.001, this run has 0.5" in result.stderr
    assert sorted(str(p) for p in out.rglob("*")) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_equal_one_process(reference, tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    procs = [
        _start_run(out, "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i), devices=2)
        for i in range(2)
    ]
    results = [_finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err
    assert "wrote" in results[0][1] and "wrote" not in results[1][1]  # only process 0 writes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["execution"]["n_devices"] == 4
    _assert_bit_identical(out, reference)
