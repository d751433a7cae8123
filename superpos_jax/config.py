"""Declarative configs: constraints in field annotations, dotted overrides, JSON, validation.

A config is a frozen dataclass whose fields declare their constraints once, in the annotation:

    @dataclass(frozen=True)
    class Config:
        n_features: PositiveInt = 20
        feature_probabilities: Probabilities = (1.0, 0.1)
        model: TransformerConfig = field(default_factory=TransformerConfig)

        def check(self) -> None:               # constraints between fields, optional
            if self.n_features < self.model.d_model:
                fail("n_features", self.n_features, f">= model.d_model={self.model.d_model}")

`validate(cfg)` checks types (floats finite, bools are not ints), then the `Rule`s of every
field, nested dataclasses included (named by their dotted path, `model.d_model`), then
`check()`. Overrides address fields by dotted keys (`apply_overrides(cfg, ["model.d_model=64"])`
or a mapping, nested or dotted, e.g. from a JSON file); `fields_of(cfg)` lists every field with
its type, value and constraint (for `superpos run NAME --help`). Every error is a
`ConfigError` naming the field, the value and what is allowed, raised on the host before
anything is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

C = TypeVar("C")


class ConfigError(ValueError):
    """A config field has a value outside its allowed range (or does not exist)."""


def fail(field: str, value: Any, allowed: str) -> typing.NoReturn:
    """Raise the `ConfigError` of field `field` holding `value`, which must be `allowed`."""
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
distinct = Rule("a list without repeats", lambda v: len(set(v)) == len(v))


POWER_LIMIT = 1e30
"""The largest `base**exponent` that `check_power` allows: float32 holds it (up to 3.4e38) with
room for the sums and gradients that it weighs."""


def check_power(field: str, base: float, exponent: int, exponent_text: str, limit: float = POWER_LIMIT) -> None:
    """Fail on `field` unless `base**exponent <= limit` (for `check()` methods: a geometric
    profile `base**i`, i <= exponent, stays finite and sane in float32); `exponent_text` says
    where the exponent comes from ("n_features - 1"). Computed in logs."""
    if base > 1 and exponent > 0 and exponent * math.log(base) > math.log(limit):
        fail(field, base, f"at most {limit ** (1 / exponent):.6g}, so that {field}**({exponent_text}) = "
                          f"{field}**{exponent} <= {limit:g}")


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


# Field types that carry their constraint, so that a subclass overriding a default keeps it.
PositiveInt = Annotated[int, Rule("a positive integer", lambda v: v > 0)]
NonNegativeInt = Annotated[int, Rule("a non-negative integer", lambda v: v >= 0)]
PositiveFloat = Annotated[float, positive]
NonNegativeFloat = Annotated[float, non_negative]
Probability = Annotated[float, probability]
Probabilities = Annotated[tuple[float, ...], non_empty, each(probability)]
"""A non-empty list of feature probabilities 1 − S, each in [0, 1]."""


def _type_error(tp: Any, value: Any) -> str | None:
    """What `value` should be to have type `tp` (None when it has it). Floats must be finite
    unless the annotation carries `allow_infinite`; ints must fit in 64 bits; bools are not ints."""
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
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            return "an integer"
        return None if -(2**63) <= value < 2**63 else "an integer that fits in 64 bits"
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "a number"
        return None if math.isfinite(value) else "a finite number"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if _is_dataclass_type(tp):
        return None if isinstance(value, tp) else f"a {tp.__name__}"
    return None


def rules_of(annotation: Any) -> tuple[Rule, ...]:
    """The `Rule`s declared in an `Annotated[...]` annotation (outermost level)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return tuple(m for m in typing.get_args(annotation)[1:] if isinstance(m, Rule))
    return ()


def _prefixed(error: ConfigError, prefix: str) -> ConfigError:
    """`error` with its field names under `prefix` ('k' -> 'sae.k')."""
    text = str(error)
    for lead in ("config field '", "unknown config key '"):
        text = text.replace(lead, lead + prefix)
    return ConfigError(text)


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
            if prefix:
                raise _prefixed(e, prefix) from None
            raise


@contextlib.contextmanager
def library_errors(field: str) -> Iterator[None]:
    """Turn a library's `ValueError` raised inside the block into a `ConfigError` naming `field`
    (for `check()` methods that build a library object to let it validate itself)."""
    try:
        yield
    except ConfigError as e:
        raise _prefixed(e, f"{field}.") from None
    except ValueError as e:
        raise ConfigError(f"config field {field!r} is invalid: {e}") from None


# ---------------------------------------------------------------- fields, types, help text


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One (leaf) field of a config: dotted `name`, annotation `type`, current `value`, `rules`."""

    name: str
    type: Any
    value: Any
    rules: tuple[Rule, ...]

    @property
    def constraint(self) -> str:
        """The declared constraints in words ("" when none)."""
        return "; ".join(r.allowed for r in self.rules)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def fields_of(cfg: Any, prefix: str = "") -> list[FieldInfo]:
    """Every leaf field of config instance `cfg`, nested dataclasses flattened to dotted names,
    in declaration order."""
    out = []
    for name, tp in _hints(type(cfg)).items():
        value = getattr(cfg, name)
        if _is_dataclass_type(_strip(tp)) and dataclasses.is_dataclass(value):
            out.extend(fields_of(value, prefix=f"{prefix}{name}."))
        else:
            out.append(FieldInfo(prefix + name, tp, value, rules_of(tp)))
    return out


def type_name(tp: Any) -> str:
    """`tp` in the words of `--help`: "int", "list of float", "str or None", "'a' | 'b'"."""
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        return f"list of {type_name(args[0]) if args else 'values'}"
    return getattr(tp, "__name__", str(tp))


def format_value(value: Any) -> str:
    """A value as `--set` would take it: lists comma-separated, None as "none"."""
    if isinstance(value, tuple | list):
        return ",".join(format_value(v) for v in value)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------- overrides


def _parse(field: str, text: str, tp: Any) -> Any:
    """The value of `--set field=text` for a field of type `tp`."""
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        for a in candidates[:-1]:
            with contextlib.suppress(ConfigError):
                return _parse(field, text, a)
        return _parse(field, text, candidates[-1])
    if origin is tuple:
        item = args[0] if args else str
        parts = [p.strip() for p in text.strip().strip("[]()").split(",")]
        return tuple(_parse(field, p, item) for p in parts if p)
    if origin is typing.Literal:
        for a in args:
            if str(a) == text:
                return a
        fail(field, text, f"one of {args}")
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        fail(field, text, "true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            fail(field, text, "an integer")
    if tp is float:
        try:
            return float(text)
        except ValueError:
            fail(field, text, "a number")
    if tp is str:
        return text
    raise ConfigError(f"config field {field!r} has a type ({tp}) that --set cannot parse")


def _coerce(field: str, value: Any, tp: Any) -> Any:
    """A JSON/Python value for a field of type `tp`: text is parsed as by `--set`, lists become
    tuples and integers become floats where a float is declared; the rest is left to `validate`."""
    if isinstance(value, str):
        return value if _accepts_str(tp) else _parse(field, value, tp)
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next((a for a in args if a is not type(None)), tp)
        origin, args = typing.get_origin(_strip(tp)), typing.get_args(_strip(tp))
        tp = _strip(tp)
    if origin is tuple and isinstance(value, list | tuple):
        item = args[0] if args else Any
        return tuple(_coerce(field, v, item) for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _accepts_str(tp: Any) -> bool:
    tp = _strip(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts_str(a) for a in args)
    if origin is typing.Literal:
        return any(isinstance(a, str) for a in args)
    return tp is str


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 64}} -> {"model.d_model": 64} (dotted keys kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys are strings, got {key!r}")
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix=f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def parse_assignments(items: Iterable[str], *, flag: str = "--set") -> dict[str, str]:
    """`["a.b=1", "c=x,y"]` -> {"a.b": "1", "c": "x,y"} (later assignments win)."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        out[key.strip()] = text.strip()
    return out


def apply_overrides(cfg: C, overrides: Mapping[str, Any] | Iterable[str]) -> C:
    """`cfg` with overrides applied: `key=value` strings (types follow the annotations; lists
    are comma-separated: `feature_probabilities=1,0.1,0.01`) or a mapping of values, nested
    or with dotted keys (`{"model": {"d_model": 64}}` or `{"model.d_model": 64}`).

    Unknown keys raise a `ConfigError` listing the valid ones; a nested library dataclass
    that rejects its new values in `__post_init__` raises a `ConfigError` naming the dotted
    field. The result is not yet validated: call `validate`.
    """
    if isinstance(overrides, Mapping):
        changes = _flatten(overrides)
    else:
        changes = parse_assignments(overrides)
    return _replace(cfg, changes, prefix="", root=cfg)


def _replace(cfg: Any, changes: Mapping[str, Any], *, prefix: str, root: Any) -> Any:
    hints = _hints(type(cfg))
    own: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, dot, rest = key.partition(".")
        if head not in hints:
            _unknown(prefix + key, root)
        is_group = _is_dataclass_type(_strip(hints[head]))
        if dot and not is_group:
            _unknown(prefix + key, root)
        if is_group and not dot:
            if dataclasses.is_dataclass(value) and isinstance(value, _strip(hints[head])):
                own[head] = value
                continue
            inner = ", ".join(f.name for f in fields_of(getattr(cfg, head), prefix=f"{prefix}{head}."))
            raise ConfigError(f"config key {prefix + head!r} is a group of fields; set them one by one: {inner}")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = _coerce(prefix + head, value, hints[head])
    for head, sub in nested.items():
        own[head] = _replace(getattr(cfg, head), sub, prefix=f"{prefix}{head}.", root=root)
    if not own:
        return cfg
    try:
        return dataclasses.replace(cfg, **own)
    except ConfigError as e:
        raise _prefixed(e, prefix) if prefix else e from None
    except (ValueError, TypeError) as e:
        where = prefix.rstrip(".") or type(cfg).__name__
        raise ConfigError(f"config field {where!r} is invalid: {e}") from None


def _unknown(key: str, root: Any) -> typing.NoReturn:
    valid = ", ".join(f.name for f in fields_of(root))
    raise ConfigError(f"unknown config key {key!r} for {type(root).__name__}; valid keys: {valid}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as JSON-able nested dicts (lists for tuples)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(cls: type[C], data: Any) -> C:
    """Rebuild a config from `to_dict` output (or any nested/dotted mapping of its fields) on
    top of the defaults of `cls`; unknown keys raise a `ConfigError`. Not yet validated."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a JSON object of fields, got {type(data).__name__}")
    return apply_overrides(cls(), data)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as JSON atomically (a temporary file renamed over `path`)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True))
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    """The JSON in `path`; invalid JSON raises a `ConfigError` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
