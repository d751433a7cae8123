"""Every experiment module keeps the suite's contract: it imports, its default and quick configs
validate, bad values fail before anything compiles, and the CLI lists it."""

import pytest

import superpos_experiments as experiments
from superpos_jax import cli
from superpos_jax.config import ConfigError, apply_overrides

NAMES = sorted(experiments.REGISTRY)


def test_every_experiment_module_imports():
    assert not experiments.BROKEN, experiments.BROKEN
    assert "sparsity" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_module_contract(name):
    module = experiments.load(name)
    assert module.NAME == name and module.DESCRIPTION
    for attr in ("Config", "QUICK", "build", "run"):
        assert hasattr(module, attr), f"{name} lacks {attr}"
    module.Config().validate()
    _, quick = cli._prepare(name, True, [])  # applies QUICK and validates
    assert quick != module.Config()


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_fail_before_compile(name, monkeypatch, tmp_path, capsys):
    module = experiments.load(name)

    def boom(*args, **kwargs):
        raise AssertionError("reached training")

    monkeypatch.setattr(module, "run", boom)
    for setting, field in (("n_steps=0", "n_steps"), ("seed=x", "seed")):
        assert cli.main(["run", name, "--set", setting, "--out", str(tmp_path / "out")]) == 2
        assert f"'{field}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(module.Config(), ["not_a_field=1"])


def test_list_shows_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
