"""Experiment configs: frozen dataclasses, `--set key=value` overrides, JSON, validation.

Every error names the field, the value and what is allowed, and is raised on the host
before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import types
import math
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A config field has a value outside its allowed range (or does not exist)."""


def fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"config field {field!r} = {value!r} is invalid: must be {allowed}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A constraint on one field, declared in its annotation: `x: Annotated[float, positive]`.

    `test(value) -> bool`; `allowed` says what is allowed, in the words of the error message.
    """

    allowed: str
    test: Callable[[Any], bool]


positive = Rule("> 0", lambda v: v > 0)
non_negative = Rule(">= 0", lambda v: v >= 0)
probability = Rule("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
unit_open = Rule("in (0, 1)", lambda v: 0.0 < v < 1.0)
non_empty = Rule("non-empty", lambda v: len(v) > 0)


def at_least(lo: float) -> Rule:
    return Rule(f">= {lo}", lambda v: v >= lo)


def in_range(lo: float, hi: float, *, closed: str = "[]") -> Rule:
    """`lo <= v <= hi`; `closed` is "[]", "[)", "(]" or "()"."""
    left = (lambda v: v >= lo) if closed[0] == "[" else (lambda v: v > lo)
    right = (lambda v: v <= hi) if closed[1] == "]" else (lambda v: v < hi)
    return Rule(f"in {closed[0]}{lo}, {hi}{closed[1]}", lambda v: left(v) and right(v))


def one_of(*choices: Any) -> Rule:
    return Rule(f"one of {choices}", lambda v: v in choices)


def each(rule: Rule) -> Rule:
    """Every element of a tuple field satisfies `rule`."""
    return Rule(f"a list of values {rule.allowed}", lambda v: all(rule.test(x) for x in v))


def _type_error(tp: Any, value: Any) -> str | None:
    """What `value` should be to have type `tp` (None when it has it). Floats must be finite
    unless the annotation carries `allow_infinite`; bools are not ints."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_error(args[0], value)
    if origin in (typing.Union, types.UnionType):
        errors = [_type_error(a, value) for a in args]
        return None if any(e is None for e in errors) else " or ".join(e for e in errors if e)
    if tp is type(None):
        return None if value is None else "None"
    if origin is typing.Literal:
        return None if value in args else f"one of {args}"
    if origin is tuple:
        if not isinstance(value, tuple):
            return "a list"
        item = args[0] if args else Any
        for v in value:
            err = _type_error(item, v)
            if err is not None:
                return f"a list of {err}"
        return None
    if tp is bool:
        return None if isinstance(value, bool) else "true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if dataclasses.is_dataclass(tp):
        return None if isinstance(value, tp) else f"a {tp.__name__}"
    return None


def rules_of(annotation: Any) -> tuple[Rule, ...]:
    """The `Rule`s declared in an `Annotated[...]` annotation (outermost level)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return tuple(m for m in typing.get_args(annotation)[1:] if isinstance(m, Rule))
    return ()


def validate(obj: Any, prefix: str = "") -> None:
    """Check every field of dataclass `obj` against its annotation: its type (floats finite,
    no bool for int), then its declared `Rule`s, recursing into nested dataclasses (errors
    name the dotted path, e.g. 'sae.k'); then `obj.check()`, when defined, for constraints
    between fields (it raises through `fail`). Raises `ConfigError` on the first violation."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        name, value, tp = prefix + f.name, getattr(obj, f.name), hints[f.name]
        error = _type_error(tp, value)
        if error is not None:
            fail(name, value, error)
        if value is not None:
            for rule in rules_of(tp):
                if not rule.test(value):
                    fail(name, value, rule.allowed)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, prefix=f"{name}.")
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            if prefix and "config field '" in str(e):
                raise ConfigError(str(e).replace("config field '", f"config field '{prefix}", 1)) from None
            raise


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse(field: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin is tuple:
            item = args[0]
            parts = [p for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
            return tuple(_parse(field, p.strip(), item) for p in parts)
        if origin is typing.Literal:
            if text not in args:
                fail(field, text, f"one of {args}")
            return text
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ConfigError:
        raise
    except ValueError:
        fail(field, text, f"of type {getattr(tp, '__name__', tp)}")
    raise ConfigError(f"config field {field!r} has a type ({tp}) that --set cannot parse")


def apply_overrides(cfg: C, overrides: Iterable[str]) -> C:
    """Return `cfg` with `key=value` overrides applied (types follow the field annotations).

    Lists are comma-separated: `feature_probabilities=1,0.1,0.01`.
    """
    types_ = _field_types(type(cfg))
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in types_:
            raise ConfigError(
                f"unknown config key {key!r} for {type(cfg).__name__}; valid keys: {', '.join(types_)}"
            )
        changes[key] = _parse(key, text.strip(), types_[key])
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config from `to_dict` output; unknown or mistyped fields raise ConfigError."""
    types_ = _field_types(cls)
    unknown = set(data) - set(types_)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)} for {cls.__name__}")
    values = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"corrupt config for {cls.__name__}: {e}") from e


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
