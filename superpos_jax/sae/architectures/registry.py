"""The registry of SAE architectures: one object per name.

    register(arch)        add an `Architecture` instance under `arch.name`
    get(name)             the architecture called `name` (an `Architecture` passes through)
    names()               every registered name, in registration order
    hook_names()          those that read and reconstruct one hook (not transcoders, crosscoders)
    for_saelens(name)     the architecture that loads a SAELens architecture name

A new architecture is one file defining its `Architecture` subclass plus one `register(...)`
line in `superpos_jax/sae/architectures/__init__.py` (or in the user's own code).
"""

from __future__ import annotations

from superpos_jax.sae.architectures.base import Architecture

_REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Register `arch` under `arch.name` (a name can be registered once); returns it."""
    if not isinstance(arch, Architecture):
        raise ValueError(f"register expects an Architecture instance, got {arch!r}")
    if arch.name in _REGISTRY and _REGISTRY[arch.name] != arch:
        raise ValueError(f"SAE architecture {arch.name!r} is already registered as {_REGISTRY[arch.name]!r}")
    _REGISTRY[arch.name] = arch
    return arch


def get(name: str | Architecture) -> Architecture:
    """The registered architecture called `name`; a clear ValueError listing the known names."""
    if isinstance(name, Architecture):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown SAE architecture {name!r}; known architectures: {names()}") from None


def names() -> tuple[str, ...]:
    """The registered architecture names, in registration order."""
    return tuple(_REGISTRY)


def hook_names() -> tuple[str, ...]:
    """The registered architectures that read one hook's activations and reconstruct them
    (`Architecture.one_hook`): what an SAE on one hook point may be."""
    return tuple(name for name, arch in _REGISTRY.items() if arch.one_hook)


def for_saelens(saelens_name: str) -> Architecture:
    """The architecture a SAELens directory of architecture `saelens_name` loads as (the first
    registered one that saves under that name)."""
    for arch in _REGISTRY.values():
        if arch.saelens_architecture == saelens_name:
            return arch
    known = sorted({a.saelens_architecture for a in _REGISTRY.values() if a.saelens_architecture})
    raise ValueError(f"no SAE architecture loads SAELens architecture {saelens_name!r}; known: {known}")
