"""kill -9 and SIGTERM at seeded moments of real `superpos run` processes, then `superpos resume`
(or the same `run` again when nothing was written): the final summary must equal, number for
number, that of an uninterrupted run of the same config, and no file outside the run
directory may change.

Moments: "start" (the command has just installed its SIGTERM handler: nothing written yet),
"created" (config.json has just appeared: the experiment is setting up and compiling,
before its first checkpoint) and "random" (a seeded delay after that, anywhere in the run).
The default set has one case per experiment (a sparsity sweep, an SAE sweep, a transformer);
`-m faults_full` runs every experiment x signal x moment. Runs use one CPU device; the
helpers for launching the command come from `tests/engine/test_durability.py`.
"""

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location("_durability", Path(__file__).parents[1] / "engine" / "test_durability.py")
_durability = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_durability)
_env, _command = _durability._env, _durability._command

EXPERIMENTS = {
    "sparsity": ["sparsity", "--quick", "--set", "n_steps=300", "chunk_steps=100", "log_every=10", "n_seeds=1",
                 "feature_probabilities=1,0.05", "batch_size=256"],
    "sae-toy": ["sae-toy", "--quick", "--set", "architectures=relu,topk", "n_features=32", "d_in=16", "d_sae=32",
                "n_steps=200", "chunk_steps=100", "eval_samples=512", "resample_every=0", "dead_steps=50", "batch_size=64"],
    "induction-heads": ["induction-heads", "--quick", "--set", "n_steps=150", "chunk_steps=50", "n_seeds=1",
                        "model.d_model=16", "model.n_heads=2", "model.d_head=8", "model.n_ctx=17", "model.d_vocab=16",
                        "n_eval=4", "batch_size=8", "min_period=3"],
}
SPAN = 8.0
"""Seconds after config.json appeared within which a "random" moment falls (about a run's length)."""
VOLATILE = {"wall_seconds", "train_seconds", "model_steps_per_second"}
DEVICES = 1
TIMEOUT = 300

DEFAULT = [("sparsity", signal.SIGTERM, "created", 0), ("sae-toy", signal.SIGKILL, "created", 0),
           ("induction-heads", signal.SIGTERM, "random", 0)]
FULL = [(e, s, m, seed) for e in EXPERIMENTS for s in (signal.SIGTERM, signal.SIGKILL)
        for m, seed in (("start", 0), ("created", 0), ("random", 1), ("random", 2), ("random", 3))
        if (e, s, m, seed) not in DEFAULT]


def _stable(tree):
    """The summary without its timings."""
    if isinstance(tree, dict):
        return {k: _stable(v) for k, v in tree.items() if k not in VOLATILE}
    if isinstance(tree, list):
        return [_stable(v) for v in tree]
    return tree


def _launch(work: Path, logs: Path, name: str, *args: str) -> subprocess.Popen:
    out, err = (open(logs / f"{name}.{k}", "w") for k in ("out", "err"))
    with out, err:
        return subprocess.Popen(_command(*args), cwd=work, env=_env(DEVICES), stdout=out, stderr=err)


def _complete(proc: subprocess.Popen, logs: Path, name: str) -> tuple[int, str, str]:
    proc.wait(timeout=TIMEOUT)
    return proc.returncode, (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text()


def _run(work: Path, logs: Path, name: str, *args: str) -> tuple[int, str, str]:
    return _complete(_launch(work, logs, name, *args), logs, name)


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _wait_for(moment: str, proc: subprocess.Popen, run: Path, rng: np.random.Generator) -> None:
    t0 = time.monotonic()
    while not (_catches_sigterm(proc.pid) if moment == "start" else (run / "config.json").exists()):
        assert proc.poll() is None, f"the run ended before the moment {moment!r} (exit {proc.returncode})"
        assert time.monotonic() - t0 < TIMEOUT, f"the moment {moment!r} never came"
        time.sleep(0.002)
    if moment == "random":
        time.sleep(rng.uniform(0.0, SPAN))


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` but those under `skip`: (size, mtime)."""
    out = {}
    for p in root.rglob("*"):
        if p != skip and skip not in p.parents:
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def _workspace(tmp: Path) -> tuple[Path, Path]:
    work, logs = tmp / "work", tmp / "logs"
    (work / "keep").mkdir(parents=True)
    (work / "keep" / "notes.txt").write_text("not the run's\n")
    (work / "sibling.json").write_text("{}")
    logs.mkdir()
    return work, logs


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted summary of each experiment, computed on first use."""
    cache: dict[str, dict] = {}

    def get(experiment: str) -> dict:
        if experiment not in cache:
            work, logs = _workspace(tmp_path_factory.mktemp(f"ref-{experiment}"))
            code, _, err = _run(work, logs, "ref", "run", *EXPERIMENTS[experiment], "--out", "run")
            assert code == 0, err
            cache[experiment] = json.loads((work / "run" / "summary.json").read_text())
        return cache[experiment]

    return get


def _interrupt_and_finish(tmp_path: Path, experiment: str, sig: signal.Signals, moment: str, seed: int) -> dict:
    work, logs = _workspace(tmp_path)
    run = work / "run"
    before = _snapshot(tmp_path, run)
    rng = np.random.default_rng([seed, int(sig), len(experiment)])
    command = ("run", *EXPERIMENTS[experiment], "--out", "run")
    proc = _launch(work, logs, "first", *command)
    _wait_for(moment, proc, run, rng)
    os.kill(proc.pid, sig)
    code, out, err = _complete(proc, logs, "first")
    assert "Traceback" not in err, err
    if sig == signal.SIGKILL:
        assert code in (-signal.SIGKILL, 0), err  # 0: the run had already finished
    else:
        assert code in (75, 0), (code, err)
        if moment in ("start", "created"):
            assert code == 75, err  # before the first checkpoint: it stops there, never mid-way
        if code == 75:
            assert "superpos resume run" in err or "nothing was written, repeat the command" in err, err
            assert not (run / "summary.json").exists()
    if moment == "start" and sig == signal.SIGTERM:
        assert not run.exists(), "a SIGTERM before the run directory existed must leave none"
    if code != 0:
        if not (run / "config.json").exists():  # killed before the run was whole: the same command again
            code, out, err = _run(work, logs, "again", *command)
        else:
            from superpos_jax.rundir import RunDir

            restart = not RunDir(run).has_checkpoint()
            code, out, err = _run(work, logs, "resume", "resume", "run")
            assert ("no checkpoint yet: restarting" in out) == restart, out
        assert code == 0, err
        assert "Traceback" not in err, err
    after = _snapshot(tmp_path, run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {"logs", *(f"logs/{f}" for f in os.listdir(logs)), "work"}, sorted(changed)
    return json.loads((run / "summary.json").read_text())


def _check(tmp_path, references, experiment, sig, moment, seed):
    summary = _interrupt_and_finish(tmp_path, experiment, sig, moment, seed)
    assert _stable(summary) == _stable(references(experiment))


@pytest.mark.parametrize("experiment, sig, moment, seed", DEFAULT, ids=lambda v: getattr(v, "name", str(v)))
def test_interrupted_run_resumes_to_the_uninterrupted_summary(tmp_path, references, experiment, sig, moment, seed):
    _check(tmp_path, references, experiment, sig, moment, seed)


@pytest.mark.faults_full
@pytest.mark.parametrize("experiment, sig, moment, seed", FULL, ids=lambda v: getattr(v, "name", str(v)))
def test_every_moment_resumes_to_the_uninterrupted_summary(tmp_path, references, experiment, sig, moment, seed):
    _check(tmp_path, references, experiment, sig, moment, seed)
