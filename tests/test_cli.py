"""The `superpos` command: listing, running, resuming, and clear errors before any compile."""

import json

import pytest

from superpos_experiments import sparsity
from superpos_jax import cli

TINY = ["--set", "n_steps=200", "chunk_steps=100", "log_every=10", "n_seeds=1", "feature_probabilities=1,0.05", "batch_size=256"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail loudly if a command gets as far as training (i.e. compiling)."""

    def boom(*args, **kwargs):
        raise AssertionError("reached training: validation should have stopped this first")

    monkeypatch.setattr(sparsity, "run", boom)


def test_list(capsys):
    assert cli.main(["list"]) == 0
    assert "sparsity" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nonexistent"], "unknown experiment 'nonexistent'"),
        (["run", "sparsity", "--set", "feature_probabilities=1,1.5"], "feature_probabilities"),
        (["run", "sparsity", "--set", "feature_probabilities=-0.1"], "[0, 1]"),
        (["run", "sparsity", "--set", "n_features=-3"], "'n_features' = -3"),
        (["run", "sparsity", "--set", "d_hidden=0"], "positive integer"),
        (["run", "sparsity", "--set", "batch_size=lots"], "batch_size"),
        (["run", "sparsity", "--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
        (["run", "sparsity", "--set", "models=linear,tanh"], "models"),
        (["run", "sparsity", "--set", "n_steps=1005"], "multiple of log_every"),
        (["run", "sparsity", "--set", "noequals"], "key=value"),
        (["run", "sparsity", "--set", "optimizer=sgd"], "must be one of ('adam', 'adamw')"),
        (["run", "sparsity", "--memory-fraction", "1.5"], "--memory-fraction = 1.5 is invalid: must lie in (0, 1]"),
        (["run", "sparsity", "--max-instances-per-call", "0"], "--max-instances-per-call = 0 is invalid"),
        (["run", "sparsity", "--devices", "-1"], "--devices = -1 is invalid"),
        (["run", "sparsity", "--devices", "99"], "this job has 8 device(s)"),
        (["run", "sparsity", "--coordinator", "localhost:1234"], "give all three or none"),
        (["run", "sparsity", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"], "--process-id = 2"),
        (["run", "sparsity", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    ],
)
def test_bad_input_errors_before_compile(no_training, capsys, tmp_path, args, message):
    assert cli.main(args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_run_writes_run_directory_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "sparsity", "--out", str(out), *TINY]) == 0
    assert (out / "figures" / "sparsity.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == "sparsity" and config["config"]["n_steps"] == 200
    assert summary["n_instances"] == 4 and len(summary["instances"]) == 4
    first = summary["instances"][0]
    assert set(first["coords"]) == {"model", "feature_probability", "seed"}
    assert len(first["feature_norms"]) == 20 and first["finite"]
    before = (out / "summary.json").read_bytes()
    # A second run into the same directory is refused, and nothing on disk changes.
    assert cli.main(["run", "sparsity", "--out", str(out), *TINY]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before

    # Resuming a finished run restores its last checkpoint and reproduces the same summary numbers.
    assert cli.main(["resume", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert [i["final_loss"] for i in again["instances"]] == [i["final_loss"] for i in summary["instances"]]


def test_resume_errors(tmp_path, capsys, no_training):
    assert cli.main(["resume", str(tmp_path / "missing")]) == 2
    assert "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "sparsity", "config": {"n_features": 20, "bogus": 1}}))
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "sparsity", "config": {"n_features": 20}}))
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_quick_config_is_valid_and_smaller():
    module, cfg = cli._prepare("sparsity", True, [])
    assert cfg.n_steps < sparsity.Config().n_steps
    cfg.validate()
