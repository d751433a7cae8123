"""Every experiment module keeps the suite's contract: it imports, its default and quick configs
validate, bad values fail before anything compiles, and the CLI lists it."""

import dataclasses
import typing

import pytest

from superpos_jax import cli, suite
from superpos_jax.config import ConfigError, apply_overrides, fields_of, rules_of, validate

EXPERIMENTS = suite.discover()
NAMES = sorted(e.name for e in EXPERIMENTS)


def test_every_experiment_module_is_readable_and_imports():
    broken = {e.name: e.broken for e in map(suite.check, EXPERIMENTS) if e.broken is not None}
    assert not broken, broken
    assert "sparsity" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_module_contract(name):
    module = suite.load(suite.find(name, EXPERIMENTS))
    assert module.NAME == name and module.DESCRIPTION
    for attr in ("Config", "QUICK", "build", "run"):
        assert hasattr(module, attr), f"{name} lacks {attr}"
    validate(module.Config())
    _, quick = cli._prepare(name, True, [])  # applies QUICK and validates
    assert quick != module.Config()
    assert not hasattr(module.Config, "validate"), "constraints are declared, validate() is config.validate"


@pytest.mark.parametrize("name", NAMES)
def test_bad_values_fail_before_compile(name, monkeypatch, tmp_path, capsys):
    module = suite.load(suite.find(name, EXPERIMENTS))

    def boom(*args, **kwargs):
        raise AssertionError("reached training")

    monkeypatch.setattr(module, "run", boom)
    for setting, field in (("n_steps=0", "n_steps"), ("seed=x", "seed")):
        assert cli.main(["run", name, "--set", setting, "--out", str(tmp_path / "out")]) == 2
        assert f"'{field}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_overrides(module.Config(), ["not_a_field=1"])


@pytest.mark.parametrize("name", NAMES)
def test_overriding_a_default_keeps_the_constraint(name):
    """A Config that redeclares a shared field (to change its default) keeps the base's rules."""
    module = suite.load(suite.find(name, EXPERIMENTS))
    cls = module.Config
    for base in cls.__mro__[1:]:
        if not dataclasses.is_dataclass(base):
            continue
        base_hints = typing.get_type_hints(base, include_extras=True)
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(base):
            def allowed(tp):
                return [r.allowed for r in rules_of(tp)]

            assert allowed(hints[f.name]) == allowed(base_hints[f.name]), (name, f.name)


@pytest.mark.parametrize("name", NAMES)
def test_help_lists_every_field(name, capsys):
    module = suite.load(suite.find(name, EXPERIMENTS))
    assert cli.main(["run", name, "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields_of(module.Config()):
        assert f"  {f.name} " in out or out.rstrip().endswith(f"  {f.name}"), f.name
    if module.QUICK:
        assert "--quick sets: " in out


def test_list_shows_every_experiment(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert "BROKEN" not in out
