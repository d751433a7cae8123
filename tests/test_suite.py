"""Experiment discovery: names read without importing, broken modules listed as broken with the
reason, the CLI working from a folder with its own `experiments/` package, a user's own module."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from superpos_jax import cli, suite

GOOD = '''
"""A small experiment of a user's own suite."""
from dataclasses import dataclass

from . import shared

NAME = "good"
DESCRIPTION = "a good experiment"


@dataclass(frozen=True)
class Config:
    n: int = shared.N


QUICK = {"n": 1}


def run(cfg, out_dir, *, progress, execution):
    return {"n": cfg.n}
'''

BROKEN = {
    "syntax.py": 'NAME = "syntax"\nDESCRIPTION = "x"\ndef run(:\n',
    "noname.py": 'DESCRIPTION = "no name"\n',
    "missing_pkg.py": 'NAME = "missing-pkg"\nDESCRIPTION = "x"\nimport no_such_package_xyz\n',
    "missing_name.py": 'NAME = "missing-name"\nDESCRIPTION = "x"\nfrom superpos_jax.config import no_such_helper\n',
    "missing_local.py": 'NAME = "missing-local"\nDESCRIPTION = "x"\nfrom .shared import NOT_THERE\n',
    "twin_a.py": 'NAME = "twin"\nDESCRIPTION = "one NAME, two modules"\n',
    "twin_b.py": 'NAME = "twin"\nDESCRIPTION = "one NAME, two modules"\n',
}

RAISES = '''
NAME = "raises"
DESCRIPTION = "imports fine on paper, fails when run"
raise RuntimeError("boom at import")
'''

def _readme_experiment() -> str:
    """The README's "Your own experiment" module, verbatim: running it keeps the README true."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("```python\n# my_experiment.py\n") + len("```python\n")
    return text[start:text.index("```", start)]


@pytest.fixture
def user_suite(tmp_path, monkeypatch):
    """A folder of experiments named by SUPERPOS_EXPERIMENTS_PATH: one good, several broken."""
    folder = tmp_path / "my_suite"
    folder.mkdir()
    (folder / "__init__.py").write_text('HELPERS = ("shared",)\n')
    (folder / "shared.py").write_text("N = 3\n")
    (folder / "good.py").write_text(textwrap.dedent(GOOD))
    (folder / "raises.py").write_text(RAISES)
    for name, text in BROKEN.items():
        (folder / name).write_text(text)
    later = tmp_path / "later_suite"  # a second folder: its NAMEs are shadowed by the first's
    later.mkdir()
    (later / "good_again.py").write_text('NAME = "good"\nDESCRIPTION = "the same NAME again"\n')
    monkeypatch.setenv(suite.ENV, os.pathsep.join([str(folder), str(later)]))
    return folder


def test_discover_reads_without_importing(user_suite):
    found = {e.path.name: e for e in suite.discover()}
    assert "shared.py" not in found and "__init__.py" not in found  # helpers are not experiments
    assert found["good.py"].broken is None and found["good.py"].description == "a good experiment"
    assert found["raises.py"].broken is None  # only importing can tell
    assert "SyntaxError" in found["syntax.py"].broken and "line 3" in found["syntax.py"].broken
    assert "no NAME" in found["noname.py"].broken
    assert "No module named 'no_such_package_xyz'" in found["missing_pkg.py"].broken
    assert "cannot import name 'no_such_helper' from 'superpos_jax.config'" in found["missing_name.py"].broken
    assert "cannot import name 'NOT_THERE' from .shared" in found["missing_local.py"].broken
    assert "also defined by" in found["good_again.py"].broken and "good.py" in found["good_again.py"].broken
    assert "defined twice" in found["twin_a.py"].broken and "defined twice" in found["twin_b.py"].broken
    assert not any(e.module in sys.modules for e in found.values() if e.path.parent == user_suite)  # nothing imported
    assert "sparsity" in {e.name for e in found.values()}  # the built-in suite is still there


def test_check_imports_and_reports_runtime_errors(user_suite):
    raises = suite.check(suite.find("raises"))
    assert "RuntimeError: boom at import" in raises.broken
    good = suite.check(suite.find("good"))
    assert good.broken is None
    module = suite.load(good)
    assert module.run(module.Config(), None, progress=False, execution=None) == {"n": 3}  # relative import worked


def test_list_shows_broken_modules_with_their_reason(user_suite, capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "good " in out and "a good experiment" in out
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "BROKEN (missing_pkg.py)" in lines["missing-pkg"] and "no_such_package_xyz" in lines["missing-pkg"]
    assert "BROKEN" in lines["noname"] and "BROKEN" in lines["syntax"]
    assert "BROKEN" not in lines["raises"]
    assert cli.main(["list", "--check"]) == 1
    assert "boom at import" in capsys.readouterr().out


@pytest.mark.parametrize("name, reason", [
    ("missing-pkg", "no_such_package_xyz"), ("raises", "boom at import"), ("noname", "no NAME"),
])
def test_run_of_a_broken_experiment_is_a_clear_error(user_suite, capsys, tmp_path, name, reason):
    assert cli.main(["run", name, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superpos: error: experiment") and reason in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def _cli(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != suite.ENV}
    command = [shutil.which("superpos") or "superpos"] if script else [sys.executable, "-m", "superpos_jax.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", [False, True], ids=["python -m superpos_jax.cli", "superpos"])
def test_list_from_a_folder_with_its_own_experiments_package(tmp_path, script):
    """Research repos have their own `experiments/`; the suite never imports that name."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "__init__.py").write_text("raise ImportError('the user project’s own experiments package')\n")
    (tmp_path / "experiments" / "sparsity.py").write_text("NAME = 'not ours'\n")
    done = _cli("list", cwd=tmp_path, script=script)
    assert done.returncode == 0, done.stderr
    assert "sparsity" in done.stdout and "linear vs ReLU" in done.stdout and "not ours" not in done.stdout


def test_list_imports_no_experiment_and_no_jax(tmp_path):
    code = "import sys; from superpos_jax import cli; cli.main(['list']); " \
           "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('superpos_experiments.')))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_users_own_module_runs_by_its_path_and_resumes(tmp_path, capsys):
    path = tmp_path / "my_experiment.py"
    path.write_text(_readme_experiment())
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--quick", "--out", str(out), "--set", "n_seeds=3"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["experiment"] == "my-toy" and meta["path"] == str(path.resolve())
    assert meta["config"]["n_steps"] == 500 and meta["config"]["n_seeds"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["final_loss"]) == 3 and np.isfinite(summary["final_loss"]).all()
    assert (out / "checkpoints").is_dir() and (out / "metrics.jsonl").stat().st_size > 0
    capsys.readouterr()
    assert cli.main(["resume", str(out)]) == 0  # finds the module again through config.json
    assert json.loads((out / "summary.json").read_text())["final_loss"] == summary["final_loss"]
    assert "resuming my-toy" in capsys.readouterr().out


def test_a_users_module_with_problems_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.py")]) == 2
    assert "no experiment module at" in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text('NAME = "bad"\nDESCRIPTION = "x"\nfrom . import sibling\n')
    assert cli.main(["run", str(bad)]) == 2
    assert "relative import" in capsys.readouterr().err
    bad.write_text('NAME = "bad"\nDESCRIPTION = "x"\n')
    assert cli.main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "breaks the experiment contract" in err and "Config is not a dataclass" in err and "run is not" in err
