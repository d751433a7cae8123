"""The `superpos` command: listing, running, resuming, and clear errors before any compile."""

import json

import pytest

from superpos_experiments import sparsity
from superpos_jax import cli
from superpos_jax.config import validate

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
    validate(cfg)


def test_run_logs_metrics_and_tensorboard(tmp_path):
    out, tb = tmp_path / "run", tmp_path / "tb"
    assert cli.main(["run", "sparsity", "--out", str(out), "--tensorboard", str(tb), *TINY]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [100, 200]  # one line per chunk
    assert len(lines[-1]["instances"]) == 4 and set(lines[-1]["instances"][0]["coords"]) == {"model", "feature_probability", "seed"}
    assert any(tb.rglob("events.out.tfevents.*"))
    assert json.loads((out / "config.json").read_text())["tensorboard"] == str(tb.resolve())


def test_config_sources_and_their_precedence(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"n_seeds": 3, "n_steps": 500, "d_hidden": 4}))
    flags = cli._flag_overrides(["--n_steps=700", "--d_hidden=3"])
    _, cfg = cli._prepare("sparsity", True, ["d_hidden=2"], str(path), flags)
    assert cfg.n_seeds == 3  # the file wins over --quick (2)
    assert cfg.n_steps == 700  # --KEY=VALUE wins over the file
    assert cfg.d_hidden == 2  # --set wins over everything
    assert cfg.chunk_steps == 1_000  # --quick still applies where nothing else says
    _, cfg = cli._prepare("induction-heads", False, [], None, cli._flag_overrides(["--model.d_model=32"]))
    assert cfg.model.d_model == 32


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n_steps=1005"], "multiple of log_every"),
        (["--no_such_key=1"], "unknown config key 'no_such_key'"),
        (["--n_steps"], "unrecognized argument '--n_steps'"),
        (["stray"], "unrecognized argument 'stray'"),
        (["--config", "/no/such/file.json"], "--config /no/such/file.json: no such file"),
    ],
)
def test_flag_errors_before_compile(no_training, capsys, tmp_path, args, message):
    assert cli.main(["run", "sparsity", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_config_file_errors_name_the_file(no_training, capsys, tmp_path):
    path = tmp_path / "cfg.json"
    for text, message in (("[1, 2]", "must hold a JSON object"), ("{oops", "is not valid JSON"),
                          ('{"n_seeds": 0}', "'n_seeds' = 0"), ('{"bogus": 1}', "unknown config key 'bogus'")):
        path.write_text(text)
        assert cli.main(["run", "sparsity", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("superpos: error:") and message in err, err


@pytest.mark.parametrize(
    "setting, message",
    [
        ("model.d_model=0", "config field 'model.d_model' = 0 is invalid: must be a positive integer"),
        ("model.act=tanh", "config field 'model.act' = 'tanh' is invalid: must be one of ('relu', 'gelu', 'gelu_exact')"),
        ("model.n_layers=1", "config field 'model.n_layers' = 1 is invalid: must be >= 2"),
        ("model.n_ctx=32", "'model.n_ctx' = 32 is invalid: must be odd"),
        ("model.nope=1", "unknown config key 'model.nope'"),
        ("model=3", "is a group of fields"),
    ],
)
def test_nested_library_config_errors_are_dotted_and_once(capsys, tmp_path, monkeypatch, setting, message):
    from superpos_experiments import induction_heads

    monkeypatch.setattr(induction_heads, "run", lambda *a, **k: pytest.fail("reached training"))
    assert cli.main(["run", "induction-heads", "--set", setting, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("superpos: error: ") and message in err, err
    assert err.count("config field") + err.count("config key") == 1, err


def test_preemption_exits_75_naming_the_run_directory(monkeypatch, capsys, tmp_path):
    from superpos_jax.engine.sweep import Preempted

    def preempted(cfg, out_dir, **kwargs):
        raise Preempted(100, out_dir.checkpoint_dir("some-tag"))

    monkeypatch.setattr(sparsity, "run", preempted)
    out = tmp_path / "run"
    assert cli.main(["run", "sparsity", "--out", str(out), *TINY]) == cli.EXIT_PREEMPTED
    assert f"continue with `superpos resume {out}`" in capsys.readouterr().err


def test_a_bug_is_a_traceback_not_an_error_line(monkeypatch, tmp_path):
    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(sparsity, "run", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["run", "sparsity", "--out", str(tmp_path / "run"), *TINY])


def test_run_help_without_a_name_lists_experiments(capsys):
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "experiments:" in out and "sparsity" in out


def test_resume_without_a_checkpoint_restarts_from_step_0(tmp_path, capsys):
    """A run killed before its first checkpoint (config.json and the start marker only) is no
    dead end: resume trains the same config from step 0."""
    from superpos_jax.config import to_dict
    from superpos_jax.rundir import RunDir

    out = tmp_path / "run"
    _, cfg = cli._prepare("sparsity", False, TINY[1:])
    RunDir(out).create({"experiment": "sparsity", "quick": False, "config": to_dict(cfg)})
    assert cli.main(["resume", str(out)]) == 0
    assert "no checkpoint yet: restarting sparsity" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["n_instances"] == 4


def test_sigterm_before_the_run_directory_exists_exits_75_writing_nothing(monkeypatch, capsys, tmp_path):
    import os
    import signal

    real = cli._execution_options

    def options_then_sigterm(args):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by main's handler: only a flag is set
        return real(args)

    monkeypatch.setattr(cli, "_execution_options", options_then_sigterm)
    monkeypatch.setattr(sparsity, "run", lambda *a, **k: pytest.fail("reached training"))
    assert cli.main(["run", "sparsity", "--out", str(tmp_path / "run"), *TINY]) == cli.EXIT_PREEMPTED
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or not hasattr(signal.getsignal(signal.SIGTERM), "requested")
