"""Declarative configs: rules in annotations, nested dataclasses with dotted keys, overrides
from text and JSON, and errors that name the field exactly once."""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest

from superpos_jax import config
from superpos_jax.config import (
    ConfigError, PositiveFloat, PositiveInt, Probabilities, apply_overrides, each, fail, fields_of, from_dict,
    library_errors, one_of, to_dict, validate,
)


@dataclass(frozen=True)
class Inner:
    k: PositiveInt = 4
    kind: Annotated[str, one_of("a", "b")] = "a"

    def __post_init__(self):
        validate(self)

    def check(self):
        if self.kind == "b" and self.k > 8:
            fail("k", self.k, "<= 8 for kind 'b'")


@dataclass(frozen=True)
class Legacy:
    """A library dataclass that validates with a plain ValueError."""

    width: int = 2

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


@dataclass(frozen=True)
class Outer:
    seed: PositiveInt = 1
    rate: PositiveFloat = 0.5
    probs: Probabilities = (1.0, 0.1)
    names: Annotated[tuple[str, ...], each(one_of("x", "y"))] = ("x",)
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None
    flag: bool = False
    inner: Inner = Inner()
    legacy: Legacy = field(default_factory=Legacy)

    def check(self):
        if self.inner.k > 10 * self.seed:
            fail("inner.k", self.inner.k, f"<= 10 × seed = {10 * self.seed}")


def test_defaults_validate_and_fields_are_dotted():
    cfg = Outer()
    validate(cfg)
    names = [f.name for f in fields_of(cfg)]
    assert names == ["seed", "rate", "probs", "names", "mode", "limit", "flag", "inner.k", "inner.kind", "legacy.width"]
    info = {f.name: f for f in fields_of(cfg)}
    assert info["seed"].constraint == "a positive integer" and info["inner.kind"].constraint == "one of ('a', 'b')"
    assert config.type_name(info["probs"].type) == "list of float"
    assert config.type_name(info["limit"].type) == "int or None"
    assert config.type_name(info["mode"].type) == "'fast' | 'slow'"


def test_text_overrides_parse_by_annotation():
    cfg = apply_overrides(Outer(), ["seed=3", "rate=2", "probs=1,0.5,0.25", "names=x,y", "mode=slow",
                                    "limit=none", "flag=yes", "inner.k=6", "legacy.width=3"])
    validate(cfg)
    assert cfg.seed == 3 and cfg.rate == 2.0 and isinstance(cfg.rate, float)
    assert cfg.probs == (1.0, 0.5, 0.25) and cfg.names == ("x", "y") and cfg.mode == "slow"
    assert cfg.limit is None and cfg.flag is True and cfg.inner == Inner(k=6) and cfg.legacy.width == 3
    assert apply_overrides(Outer(), ["limit=7"]).limit == 7
    assert apply_overrides(Outer(), ["probs=[1, 0.5]"]).probs == (1.0, 0.5)  # wandb writes lists like this


def test_mapping_overrides_nested_or_dotted_and_json_round_trip():
    nested = apply_overrides(Outer(), {"inner": {"k": 7}, "probs": [1, 0.5], "rate": 1})
    dotted = apply_overrides(Outer(), {"inner.k": 7, "probs": [1.0, 0.5], "rate": 1.0})
    assert nested == dotted and nested.probs == (1.0, 0.5) and isinstance(nested.rate, float)
    text = json.dumps(to_dict(nested))
    assert json.loads(text)["inner"] == {"k": 7, "kind": "a"}
    back = from_dict(Outer, json.loads(text))
    assert back == nested
    validate(back)


@pytest.mark.parametrize("overrides, message", [
    (["seed=0"], "config field 'seed' = 0 is invalid: must be a positive integer"),
    (["seed=x"], "config field 'seed' = 'x' is invalid: must be an integer"),
    (["rate=inf"], "'rate' = inf is invalid: must be a finite number"),
    (["probs=1,2"], "'probs' = (1.0, 2.0) is invalid: must be a list of values in [0, 1]"),
    (["probs="], "'probs' = () is invalid: must be non-empty"),
    (["names=x,z"], "'names'"),
    (["mode=medium"], "must be one of ('fast', 'slow')"),
    (["flag=maybe"], "'flag' = 'maybe' is invalid: must be true or false"),
    (["inner.k=0"], "config field 'inner.k' = 0 is invalid: must be a positive integer"),
    (["inner.kind=c"], "config field 'inner.kind' = 'c' is invalid"),
    (["inner.kind=b", "inner.k=9"], "config field 'inner.k' = 9 is invalid: must be <= 8 for kind 'b'"),
    (["inner.k=11"], "config field 'inner.k' = 11 is invalid: must be <= 10 × seed = 10"),
    (["legacy.width=0"], "config field 'legacy' is invalid: width must be >= 1, got 0"),
    (["nope=1"], "unknown config key 'nope' for Outer; valid keys: seed, rate, probs"),
    (["inner.nope=1"], "unknown config key 'inner.nope'"),
    (["seed.x=1"], "unknown config key 'seed.x'"),
    (["inner=3"], "config key 'inner' is a group of fields; set them one by one: inner.k, inner.kind"),
    (["noequals"], "--set expects key=value"),
])
def test_errors_name_the_dotted_field_once(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(apply_overrides(Outer(), overrides))
    text = str(info.value)
    assert message in text, text
    assert text.count("config field") <= 1 and text.count("unknown config key") <= 1, text


def test_type_checks_bools_are_not_ints_and_floats_are_finite():
    with pytest.raises(ConfigError, match="'seed' = True is invalid: must be an integer"):
        validate(dataclasses.replace(Outer(), seed=True))
    with pytest.raises(ConfigError, match="'rate' = nan"):
        validate(dataclasses.replace(Outer(), rate=float("nan")))
    with pytest.raises(ConfigError, match="'probs' = 'abc' is invalid: must be a list"):
        validate(dataclasses.replace(Outer(), probs="abc"))


def test_library_errors_name_the_field():
    with pytest.raises(ConfigError, match="config field 'legacy' is invalid: width must be >= 1, got 0"):
        with library_errors("legacy"):
            Legacy(width=0)
    with pytest.raises(ConfigError, match="config field 'inner.k' = 0"):
        with library_errors("inner"):
            Inner(k=0)


def test_json_files_and_reading(tmp_path):
    path = tmp_path / "c.json"
    config.write_json(path, {"a": [1, 2]})
    assert config.read_json(path) == {"a": [1, 2]} and not (tmp_path / "c.json.tmp").exists()
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        config.read_json(path)
    with pytest.raises(ConfigError, match="JSON object"):
        from_dict(Outer, [1, 2])
