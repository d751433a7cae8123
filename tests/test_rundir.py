"""The run directory: its layout, refusing to overwrite, reading a run back, its metrics log."""

import json

import pytest

from superpos_jax import rundir
from superpos_jax.rundir import RunDir, RunDirError


def test_layout(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config_path == tmp_path / "r" / "config.json"
    assert run.summary_path.name == "summary.json" and run.metrics_path.name == "metrics.jsonl"
    assert run.figure_path("sparsity") == tmp_path / "r" / "figures" / "sparsity.png"
    assert run.figure_path("a.svg") == run.figures / "a.svg"
    assert run.checkpoint_dir() == tmp_path / "r" / "checkpoints"
    assert run.checkpoint_dir("lm") == tmp_path / "r" / "checkpoints" / "lm"
    assert run.path("browser") == tmp_path / "r" / "browser"
    for bad in ("figures", "config.json", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="cannot be an experiment's output"):
            run.path(bad)
    with pytest.raises(ValueError, match="one folder"):
        run.checkpoint_dir("../x")


def test_create_refuses_a_non_empty_directory_and_reads_back(tmp_path):
    run = RunDir(tmp_path / "r")
    run.ensure_empty()  # missing is fine
    run.create({"experiment": "x", "quick": False, "config": {"a": 1}})
    assert json.loads(run.config_path.read_text())["config"] == {"a": 1}
    assert run.read_config()["experiment"] == "x"
    with pytest.raises(RunDirError, match="is not empty; choose another --out, or continue it with `superpos resume"):
        run.ensure_empty()
    run.write_summary({"n": 1})
    assert json.loads(run.summary_path.read_text()) == {"n": 1}
    assert not list(run.root.glob("*.tmp"))  # atomic writes leave no temporary file
    assert not run.has_checkpoint() and run.figures_written() == []
    (run.checkpoint_dir("sae") / "100").mkdir(parents=True)
    assert run.checkpoint_dirs() == [run.checkpoint_dir(), run.checkpoint_dir("sae")] and run.has_checkpoint()


@pytest.mark.parametrize("content, message", [
    (None, "has no config.json"), ("{bad", "not valid JSON"), ('{"config": {}}', "lacks 'experiment' or 'config'"),
])
def test_read_config_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / rundir.CONFIG).write_text(content)
    with pytest.raises(RunDirError, match=message):
        RunDir(tmp_path).read_config()


def test_metrics_log_writes_into_the_run_directory(tmp_path):
    import numpy as np

    log = RunDir(tmp_path).metrics_log("toy")
    log.open(0)
    log.log(10, 0.5, np.array([1.0, 2.0]), {}, [{"seed": 0}, {"seed": 1}])
    log.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["sweep"] == "toy" and record["step"] == 10 and record["instances"][1]["coords"] == {"seed": 1}


def test_create_writes_the_start_marker_and_discard_removes_only_what_it_made(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    run = RunDir(tmp_path / "a" / "b" / "r")
    made = run.create({"experiment": "x", "quick": False, "config": {}})
    assert made == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "r"]
    assert run.is_started() and json.loads(run.status_path.read_text())["status"] == "started"
    (run.root / "metrics.jsonl").write_text("{}\n")
    run.discard(made)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # parents it made went too


def test_discard_of_a_directory_that_existed_empties_it(tmp_path):
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    made = run.create({"experiment": "x", "quick": False, "config": {}})
    assert made == []
    (run.figures).mkdir()
    run.discard(made)
    assert run.root.is_dir() and not any(run.root.iterdir())


def test_write_summary_marks_the_run_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create({"experiment": "x", "quick": False, "config": {}})
    run.write_summary({"n": 1})
    assert json.loads(run.status_path.read_text())["status"] == "finished"


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "is a file, not a directory"),
    (lambda p: p.symlink_to(p.parent / "missing"), "is a symbolic link to"),
])
def test_ensure_empty_names_what_is_wrong(tmp_path, make, message):
    make(tmp_path / "r")
    with pytest.raises(RunDirError, match=message):
        RunDir(tmp_path / "r").ensure_empty()
    if (tmp_path / "r").is_file():
        with pytest.raises(RunDirError, match="cannot create output directory .*r/sub: .* is not a directory"):
            RunDir(tmp_path / "r" / "sub").ensure_empty()


def test_a_creation_cut_short_is_reused_by_run_and_explained_by_resume(tmp_path):
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    run.mark("started")  # killed between the marker and config.json
    run.ensure_empty()
    with pytest.raises(RunDirError, match="interrupted while being created"):
        run.read_config()
    run.create({"experiment": "x", "quick": False, "config": {}})
    assert run.read_config()["experiment"] == "x"
