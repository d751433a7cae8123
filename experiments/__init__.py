"""The experiment suite: one module per paper figure or study.

Each module defines `NAME`, `DESCRIPTION`, a frozen `Config` dataclass with a `validate()`
method, `QUICK` (the overrides of `--quick`: under a minute on a 2-core CPU), and
`run(config, out_dir, *, progress) -> summary dict`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "sparsity": "experiments.sparsity",
}


def load(name: str) -> ModuleType:
    """The module of experiment `name`; unknown names raise KeyError listing the known ones."""
    if name not in REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])
