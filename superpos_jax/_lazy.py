"""Lazy re-exports for package `__init__` modules: a submodule is imported on first use.

`import superpos_jax` (or one family) then costs only what it names, and heavy dependencies
(jax, matplotlib, orbax, tensorstore) load when the code that needs them runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def attach(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for `package`.

    Args:
        package: the package's `__name__`.
        exports: submodule (relative, dotted) -> the names it provides at package level. Each
            undotted submodule is exported under its own name as well.

    Returns:
        The module-level `__getattr__` (imports the providing submodule on first access and
        caches the value on the package), `__dir__`, and the sorted `__all__`.

    Raises:
        ValueError: a name is exported twice.
    """
    where: dict[str, tuple[str, str | None]] = {}

    def add(name: str, source: tuple[str, str | None]) -> None:
        if name in where:
            raise ValueError(f"{package}: {name!r} is exported by both {where[name][0]!r} and {source[0]!r}")
        where[name] = source

    for sub, names in exports.items():
        if "." not in sub:
            add(sub, (sub, None))
        for name in names:
            add(name, (sub, name))

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        sub, attr = where[name]
        module = importlib.import_module(f"{package}.{sub}")
        value = module if attr is None else getattr(module, attr)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__, sorted(where)
