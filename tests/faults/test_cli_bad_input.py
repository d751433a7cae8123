"""The bad-input table of the `superpos` command: every case ends with exit status 2 and one
`superpos: error:` line naming the field or file, no traceback (an unexpected exception would
escape `cli.main` and fail the test), no run directory left behind and no other file touched.

Config values (non-finite, absurd), `--out` places, runs that fail inside the experiment
before their first checkpoint (their run directory is removed), `resume` of a directory that
no run started, and `superpos steer` requests and broken steerable run directories.
"""

import json
from pathlib import Path

import jax
import pytest

from superpos_experiments import sparsity
from superpos_jax import cli
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.lm.io import save_transformer
from superpos_jax.lm.transformer import TransformerConfig, init_transformer
from superpos_jax.sae.io import save_sae
from superpos_jax.sae.model import SAE

TINY = ["n_steps=200", "chunk_steps=100", "log_every=10", "n_seeds=1", "feature_probabilities=1,0.05", "batch_size=256"]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("superpos: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(sparsity, "run", lambda *a, **k: pytest.fail("reached training: validation should have stopped it"))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A working directory with files of its own, checked unchanged after the case."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("not the run's\n")
    (tmp_path / "afile").write_text("a file, not a directory\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    before = _snapshot(tmp_path)
    yield tmp_path
    assert _snapshot(tmp_path) == before


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize("name, setting, needles", [
    ("sparsity", "learning_rate=inf", ["'learning_rate' = inf", "finite"]),
    ("sparsity", "learning_rate=nan", ["'learning_rate' = nan", "finite"]),
    ("sparsity", "weight_decay=nan", ["'weight_decay' = nan", "finite"]),
    ("sparsity", "weight_decay=inf", ["'weight_decay' = inf", "finite"]),
    ("intro", "importance_base=inf", ["'importance_base' = inf", "finite"]),
    ("intro", "importance_base=1e300", ["'importance_base' = 1e+300", "importance_base**(n_features - 1)", "1e+30"]),
    ("adversarial", "importance_base=2", None),
    ("abs-computation", "importance_base=1e10", ["'importance_base' = 10000000000.0", "largest size"]),
    ("sparsity", "n_features=99999999999999999999999", ["'n_features' = 99999999999999999999999", "64 bits"]),
    ("sparsity", "n_steps=-99999999999999999999", ["'n_steps'", "64 bits"]),
])
def test_bad_config_values_are_refused_before_anything_runs(workspace, capsys, monkeypatch, name, setting, needles):
    module = cli._load(name)
    monkeypatch.setattr(module, "run", lambda *a, **k: pytest.fail("reached the experiment"))
    extra = ["n_features=200"] if name == "adversarial" else []
    assert cli.main(["run", name, "--out", "out", "--set", setting, *extra]) == 2
    _one_error_line(capsys, *(needles or ["'importance_base' = 2.0", "at most 1.41", "importance_base**199"]))
    assert not (workspace / "out").exists()


def test_sane_importance_bases_are_accepted():
    for name, setting in (("intro", "importance_base=1.5"), ("adversarial", "importance_base=1.2"),
                          ("abs-computation", "importance_base=1.5")):
        cli._prepare(name, True, [setting])


# ---------------------------------------------------------------- --out


@pytest.mark.parametrize("out, needles", [
    ("afile", ["output directory afile is a file, not a directory"]),
    ("afile/sub", ["cannot create output directory afile/sub", "afile is not a directory"]),
    ("dangling", ["output directory dangling is a symbolic link to", "which does not exist"]),
    ("/proc/superpos-no-such/run", ["cannot create output directory /proc/superpos-no-such/run"]),
    ("/sys/superpos-run", ["cannot create output directory /sys/superpos-run"]),
])
def test_unusable_out_is_a_clear_error(workspace, capsys, no_training, out, needles):
    assert cli.main(["run", "sparsity", "--out", out, "--set", *TINY]) == 2
    _one_error_line(capsys, *needles)
    assert not Path(out).is_dir()


def test_unwritable_out_is_a_clear_error(workspace, capsys, no_training, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == workspace / "keep" else real_access(p, mode))
    assert cli.main(["run", "sparsity", "--out", "keep/run", "--set", *TINY]) == 2
    _one_error_line(capsys, "cannot create output directory keep/run", "is not writable")


# ---------------------------------------------------------------- failures inside the experiment


@pytest.mark.parametrize("settings, needles", [
    (TINY + ["n_features=1000000000000000"], ["out of memory", "removed the run directory deep/er/run"]),
    (["n_features=100000", "d_hidden=100000"], ["out of memory", "more than the", "removed the run directory deep/er/run"]),
])
def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(workspace, capsys, settings, needles):
    assert cli.main(["run", "sparsity", "--out", "deep/er/run", "--set", *settings]) == 2
    _one_error_line(capsys, *needles)
    assert not (workspace / "deep").exists()  # the parents it made went too


def test_a_failed_run_in_an_existing_empty_directory_empties_it_again(workspace, capsys):
    (workspace / "empty").mkdir()
    assert cli.main(["run", "sparsity", "--out", "empty", "--set", *TINY, "n_features=1000000000000000"]) == 2
    _one_error_line(capsys, "out of memory", "removed the run directory empty")
    assert (workspace / "empty").is_dir() and not any((workspace / "empty").iterdir())
    (workspace / "empty").rmdir()  # the test's own


def test_a_failed_run_can_be_repeated_at_once(workspace, capsys):
    """No dead end: after the failure, the same --out is free for a corrected run."""
    assert cli.main(["run", "sparsity", "--out", "out", "--set", *TINY, "n_features=1000000000000000"]) == 2
    _one_error_line(capsys, "removed the run directory out")
    from superpos_jax.rundir import RunDir

    RunDir(workspace / "out").ensure_empty()


# ---------------------------------------------------------------- resume


def test_resume_of_a_directory_no_run_started(workspace, capsys, no_training):
    (workspace / "fake").mkdir()
    (workspace / "fake" / "config.json").write_text(json.dumps({"experiment": "sparsity", "config": {}}))
    before = _snapshot(workspace / "fake")
    assert cli.main(["resume", "fake"]) == 2
    _one_error_line(capsys, "cannot resume fake", "no checkpoint", "no start marker status.json")
    assert _snapshot(workspace / "fake") == before
    (workspace / "fake" / "config.json").unlink()
    (workspace / "fake").rmdir()


# ---------------------------------------------------------------- steer

MODEL = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=256, act="relu")


@pytest.fixture(scope="module")
def steerable(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("steer") / "run"
    save_transformer(run / "model", init_transformer(MODEL, key=jax.random.key(0)))
    params = sae_lib.get("relu").init(MODEL.d_mlp, 8, key=jax.random.key(1))
    save_sae(SAE("relu", params), run / "sae", hook_name="blocks.0.mlp.post", model_name="tiny")
    return run


def test_the_steerable_fixture_steers(steerable, capsys):
    assert cli.main(["steer", str(steerable), "def ", "--feature", "3", "--value", "2", "--n-new", "2"]) == 0
    assert "feature 3 = 2:" in capsys.readouterr().out


@pytest.mark.parametrize("args, needles", [
    (["--value", "inf"], ["--value inf (for --feature 3) is invalid", "finite"]),
    (["--value", "nan"], ["--value nan (for --feature 3) is invalid"]),
    (["--value", "1e30"], ["--value 1e+30 (for --feature 3) is invalid", "1e+06"]),
    (["--value=-1e7"], ["--value -10000000.0 (for --feature 3) is invalid"]),
    (["--value", "1", "--values", "2", "inf"], ["--values inf (for --feature 3) is invalid"]),
    (["--value", "1", "--n-new", "-5"], ["--n-new = -5 is invalid", "positive integer"]),
    (["--value", "1", "--n-new", "0"], ["--n-new = 0 is invalid"]),
], ids=["inf", "nan", "huge", "huge-negative", "inf-in-values", "n-new-negative", "n-new-zero"])
def test_bad_steer_requests(steerable, capsys, args, needles):
    before = _snapshot(steerable)
    assert cli.main(["steer", str(steerable), "def ", "--feature", "3", *args]) == 2
    _one_error_line(capsys, *needles)
    assert _snapshot(steerable) == before


@pytest.mark.parametrize("feature", ["99999999999999999999", "-1", "8"])
def test_steer_feature_out_of_range(steerable, capsys, feature):
    assert cli.main(["steer", str(steerable), "def ", "--feature", feature, "--value", "1"]) == 2
    _one_error_line(capsys, f"--feature {feature} is out of range", "8 features")


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _set(key, value):
    return lambda d: {**d, key: value}


def _set_hook_name(hook):
    """Set the SAE's hook point where the cfg says it: at top level and in `metadata`."""
    return lambda d: {**d, "hook_name": hook, "metadata": {**d.get("metadata", {}), "hook_name": hook}}


def _drop_hook_name(d):
    metadata = {k: v for k, v in d.get("metadata", {}).items() if k != "hook_name"}
    return {**{k: v for k, v in d.items() if k != "hook_name"}, "metadata": metadata}


BROKEN = {
    "model-config-garbage": (lambda r: (r / "model" / "config.json").write_text("{garbage"),
                             ["model/config.json", "not valid JSON"]),
    "model-config-list": (lambda r: (r / "model" / "config.json").write_text("[1, 2]"), ["model/config.json"]),
    "model-weights-truncated": (lambda r: _truncate(r / "model" / "weights.safetensors", 1000),
                                ["model/weights.safetensors", "truncated"]),
    "model-config-mismatch": (lambda r: _edit_json(r / "model" / "config.json", _set("d_model", 64)),
                              ["model/weights.safetensors"]),
    "sae-weights-truncated": (lambda r: _truncate(r / "sae" / "sae_weights.safetensors", 600),
                              ["sae/sae_weights.safetensors", "truncated"]),
    "sae-cfg-garbage": (lambda r: (r / "sae" / "cfg.json").write_text("nope"), ["sae/cfg.json", "not valid JSON"]),
    "sae-cfg-deep": (lambda r: (r / "sae" / "cfg.json").write_text("[" * 100_000 + "]" * 100_000),
                     ["sae/cfg.json", "levels deep"]),
    "sae-no-hook-name": (lambda r: _edit_json(r / "sae" / "cfg.json", _drop_hook_name),
                         ["sae/cfg.json", "required field 'hook_name' is missing"]),
    "sae-hook-not-in-model": (lambda r: _edit_json(r / "sae" / "cfg.json", _set_hook_name("blocks.7.mlp.post")),
                              ["'blocks.7.mlp.post' is not a hook point of the model"]),
    "sae-d-in-mismatch": (lambda r: _edit_json(r / "sae" / "cfg.json", _set_hook_name("blocks.0.hook_resid_post")),
                          ["the SAE's d_in = 32", "'blocks.0.resid_post' has width 16"]),
    "sae-cfg-d-in-vs-weights": (lambda r: _edit_json(r / "sae" / "cfg.json", _set("d_in", 16)),
                                ["sae/sae_weights.safetensors", "W_enc"]),
}


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_steerable_run_is_a_clear_error(steerable, tmp_path, capsys, case):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(steerable, run)
    damage, needles = BROKEN[case]
    damage(run)
    before = _snapshot(tmp_path)
    assert cli.main(["steer", str(run), "def ", "--feature", "3", "--value", "1"]) == 2
    _one_error_line(capsys, "cannot steer", *needles)
    assert _snapshot(tmp_path) == before
