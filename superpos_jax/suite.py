"""Finding experiments without importing them, loading one, and saying why one is broken.

The suite is the installed package `superpos_experiments` (the repository's `experiments/`
folder), plus the folders named in the environment variable `SUPERPOS_EXPERIMENTS_PATH`
(separated by `os.pathsep`), searched first. Every module of such a folder that does not start
with "_" and is not named in the folder's `__init__.py` as a helper (`HELPERS = ("common", ...)`)
is an experiment. A user's own module is run by its path instead: `superpos run my_exp.py`.

`discover()` reads each module's `NAME` and `DESCRIPTION` (module-level string constants)
with `ast`, without executing it, and marks it broken, with the reason, when its file cannot
be parsed, lacks either constant, or has a module-level import that does not resolve: a module
that `importlib.util.find_spec` cannot find, or a name that a first-party module
(`superpos_jax`, or the experiment's own folder) does not define. `check()` imports the
module and checks the experiment contract (see `superpos_experiments`), so it also reports
errors that only running the import reveals.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ENV = "SUPERPOS_EXPERIMENTS_PATH"
BUILTIN = "superpos_experiments"
FIRST_PARTY = ("superpos_jax", BUILTIN)


class ExperimentError(ValueError):
    """An experiment is unknown, broken, or does not keep the experiment contract."""


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment module, as read from its file.

    Attributes:
        name: its `NAME` (the module's file name when NAME cannot be read).
        description: its `DESCRIPTION` ("" when it cannot be read).
        path: the module's file.
        module: the name it is imported under ("superpos_experiments.sparsity"; a private
            name for a folder from `SUPERPOS_EXPERIMENTS_PATH` or a user's file).
        broken: why it cannot run (None when nothing wrong was found).
    """

    name: str
    description: str
    path: Path
    module: str
    broken: str | None = None


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder of experiment modules and the package name its modules import under."""

    path: Path
    package: str


def folders() -> list[Folder]:
    """The folders searched, first wins: `SUPERPOS_EXPERIMENTS_PATH`'s, then the built-in suite."""
    found = []
    for entry in os.environ.get(ENV, "").split(os.pathsep):
        if entry.strip():
            path = Path(entry).expanduser().resolve()
            found.append(Folder(path, _private_name("suite", path)))
    spec = importlib.util.find_spec(BUILTIN)
    if spec is not None and spec.submodule_search_locations:
        found.extend(Folder(Path(p), BUILTIN) for p in spec.submodule_search_locations)
    return found


def _private_name(kind: str, path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"_superpos_{kind}_{stem}_{digest}"


# ---------------------------------------------------------------- reading without importing


def _parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=512)
def _parse_cached(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _string_constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for t in targets:
            if isinstance(t, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                out[t.id] = value.value
    return out


def _helpers(folder: Path) -> frozenset[str]:
    """The names in `HELPERS = (...)` of the folder's `__init__.py` (not experiments)."""
    init = folder / "__init__.py"
    if not init.is_file():
        return frozenset()
    try:
        tree = _parse(init)
    except (SyntaxError, OSError, UnicodeDecodeError):
        return frozenset()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "HELPERS" for t in targets) and node.value is not None:
                try:
                    return frozenset(ast.literal_eval(node.value))
                except ValueError:
                    return frozenset()
    return frozenset()


def _defined_names(tree: ast.Module) -> set[str] | None:
    """Names a module defines at top level (None: cannot tell, e.g. `__getattr__` or `*`)."""
    names: set[str] = set()

    def visit(body: Sequence[ast.stmt]) -> bool:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if any(a.name == "*" for a in node.names):
                    return False
                names.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.If | ast.Try | ast.With):
                blocks = [node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])]
                blocks += [h.body for h in getattr(node, "handlers", [])]
                if not all(visit(b) for b in blocks):
                    return False
        return True

    if not visit(tree.body) or "__getattr__" in names:
        return None
    return names


def _find_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of module `name`, found without executing it (or any parent not yet imported)."""
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None) or importlib.machinery.ModuleSpec(name, None)
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            if spec is None:
                return None
            if spec.submodule_search_locations is None:  # a plain module's attribute (os.path): only an import can tell
                parent = ".".join(parts[:i])
                return importlib.util.find_spec(name) if parent in sys.modules else None
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return None
    return spec


def _missing_names(spec: importlib.machinery.ModuleSpec, module: str, names: Sequence[str]) -> list[str]:
    """Which of `names` a first-party module does not provide (as a submodule or a top-level name)."""
    origin = spec.origin
    if origin is None or not origin.endswith(".py"):
        return []
    try:
        defined = _defined_names(_parse(Path(origin)))
    except (SyntaxError, OSError, UnicodeDecodeError):
        return []
    if defined is None:
        return []
    missing = []
    for n in names:
        if n in defined:
            continue
        if spec.submodule_search_locations is not None and importlib.machinery.PathFinder.find_spec(
            f"{module}.{n}", list(spec.submodule_search_locations)
        ):
            continue
        missing.append(n)
    return missing


def _local_module(folder: Path, dotted: str) -> Path | None:
    """The file of module `dotted` relative to `folder` ("intro" -> folder/intro.py)."""
    base = folder.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_problems(tree: ast.Module, folder: Path | None) -> list[str]:
    """Why the module-level imports of `tree` would fail, read without importing anything.

    Args:
        tree: the module's syntax tree.
        folder: the package folder relative imports resolve in (None: the module stands alone,
            so a relative import is itself a problem).
    """
    problems = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _find_module(alias.name) is None:
                    problems.append(f"No module named {alias.name!r}")
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names if a.name != "*"]
            if node.level:
                if folder is None:
                    problems.append("a relative import in a module run by its path (use absolute imports)")
                    continue
                if node.level > 1:
                    problems.append(f"relative import beyond the experiments folder ({'.' * node.level}{node.module or ''})")
                    continue
                if node.module is None:
                    init = folder / "__init__.py"
                    defined = _defined_names(_parse(init)) if init.is_file() else set()
                    missing = [n for n in names if _local_module(folder, n) is None and (defined is not None and n not in defined)]
                    problems += [f"cannot import name {n!r} from the experiments folder {folder}" for n in missing]
                    continue
                file = _local_module(folder, node.module)
                if file is None:
                    problems.append(f"No module named {node.module!r} in the experiments folder {folder}")
                    continue
                try:
                    defined = _defined_names(_parse(file))
                except (SyntaxError, OSError, UnicodeDecodeError) as e:
                    problems.append(f"{file.name} cannot be parsed: {e}")
                    continue
                missing = [n for n in names if defined is not None and n not in defined and _local_module(folder, f"{node.module}.{n}") is None]
                problems += [f"cannot import name {n!r} from .{node.module}" for n in missing]
                continue
            module = node.module or ""
            spec = _find_module(module)
            if spec is None:
                problems.append(f"No module named {module!r}")
            elif module.split(".")[0] in FIRST_PARTY:
                problems += [f"cannot import name {n!r} from {module!r}" for n in _missing_names(spec, module, names)]
    return problems


def read(path: Path, module: str, folder: Path | None) -> Experiment:
    """What the file of experiment module `module` says about itself, without running it."""
    stem = path.stem
    try:
        tree = _parse(path)
    except SyntaxError as e:
        return Experiment(stem, "", path, module, f"cannot be parsed: SyntaxError: {e.msg} (line {e.lineno})")
    except (OSError, UnicodeDecodeError) as e:
        return Experiment(stem, "", path, module, f"cannot be read: {e}")
    constants = _string_constants(tree)
    name, description = constants.get("NAME"), constants.get("DESCRIPTION")
    problems = []
    if name is None or not name.strip():
        problems.append("defines no NAME string constant")
    if description is None:
        problems.append("defines no DESCRIPTION string constant")
    problems += import_problems(tree, folder)
    return Experiment(name or stem, description or "", path, module, "; ".join(problems) or None)


def discover(search: Sequence[Folder] | None = None) -> list[Experiment]:
    """Every experiment in the suite's folders (default `folders()`), sorted by name. A NAME
    defined twice in one folder marks both modules broken; a NAME an earlier folder already
    has marks the later folder's module broken (so a user's folder shadows the built-in suite)."""
    found: dict[str, Experiment] = {}
    shadowed: list[Experiment] = []
    for folder in folders() if search is None else search:
        if not folder.path.is_dir():
            continue
        helpers = _helpers(folder.path)
        here: dict[str, list[Experiment]] = {}
        for file in sorted(folder.path.glob("*.py")):
            if not (file.stem.startswith("_") or file.stem in helpers):
                exp = read(file, f"{folder.package}.{file.stem}", folder.path)
                here.setdefault(exp.name, []).append(exp)
        for name, exps in here.items():
            if len(exps) > 1:
                files = ", ".join(e.path.name for e in exps)
                exps = [dataclasses.replace(e, broken=f"NAME {name!r} is defined twice in {folder.path} ({files})")
                        for e in exps]
            if name in found:
                shadowed += [dataclasses.replace(e, broken=f"NAME {name!r} is also defined by {found[name].path}")
                             for e in exps]
            else:
                found[name] = exps[0]
                shadowed += exps[1:]
    return sorted([*found.values(), *shadowed], key=lambda e: (e.name, str(e.path)))


def find(name: str, experiments: Sequence[Experiment] | None = None) -> Experiment:
    """The experiment called `name` (its NAME, or the file name of a module without one).

    Raises:
        ExperimentError: no experiment has that name (the message lists the known ones).
    """
    experiments = discover() if experiments is None else experiments
    matches = [e for e in experiments if e.name == name] or [
        e for e in experiments if e.path.stem == name.replace("-", "_")]
    if matches:
        return next((e for e in matches if e.broken is None), matches[0])
    known = ", ".join(sorted({e.name for e in experiments if e.broken is None}))
    raise ExperimentError(f"unknown experiment {name!r}; available: {known} (or give the path of your own module)")


# ---------------------------------------------------------------- importing


def _package(folder: Path, package: str) -> None:
    """Make the private package of a folder from SUPERPOS_EXPERIMENTS_PATH importable."""
    if package in sys.modules:
        return
    init = folder / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(folder)])
    else:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[package]
        raise


def contract_problems(module: ModuleType) -> list[str]:
    """How an imported module breaks the experiment contract (empty when it keeps it)."""
    problems = []
    for attr in ("NAME", "DESCRIPTION"):
        if not isinstance(getattr(module, attr, None), str):
            problems.append(f"{attr} is not a string")
    cfg_cls = getattr(module, "Config", None)
    if not (isinstance(cfg_cls, type) and dataclasses.is_dataclass(cfg_cls)):
        problems.append("Config is not a dataclass")
    else:
        try:
            cfg_cls()
        except Exception as e:  # noqa: BLE001 - reported, not raised
            problems.append(f"Config() fails: {type(e).__name__}: {e}")
    if not isinstance(getattr(module, "QUICK", {}), Mapping):
        problems.append("QUICK is not a mapping of field -> value")
    if not callable(getattr(module, "run", None)):
        problems.append("run is not a function")
    return problems


def load(exp: Experiment) -> ModuleType:
    """Import experiment `exp` and check its contract.

    Raises:
        ExperimentError: it is broken, its import fails, or it breaks the contract.
    """
    if exp.broken is not None:
        raise ExperimentError(f"experiment {exp.name!r} ({exp.path}) is broken: {exp.broken}")
    try:
        package = exp.module.rpartition(".")[0]
        if package and package != BUILTIN:
            _package(exp.path.parent, package)
        module = importlib.import_module(exp.module)
    except Exception as e:  # noqa: BLE001 - any import error means the module is broken
        raise ExperimentError(f"experiment {exp.name!r} ({exp.path}) failed to import: {type(e).__name__}: {e}") from e
    problems = contract_problems(module)
    if problems:
        raise ExperimentError(f"experiment {exp.name!r} ({exp.path}) breaks the experiment contract: {'; '.join(problems)}")
    return module


def is_path(name: str) -> bool:
    """Whether a `run` argument names a module file rather than an experiment."""
    return name.endswith(".py") or os.sep in name or (os.altsep is not None and os.altsep in name)


def load_file(path: str | Path) -> ModuleType:
    """Import a user's experiment module from its file, under a private module name (so that
    it cannot shadow or be shadowed by another `experiments` package), checking first, without
    running it, that its imports resolve, then the contract.

    Raises:
        ExperimentError: the file is missing, broken, fails to import or breaks the contract.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ExperimentError(f"no experiment module at {path}")
    name = _private_name("user", path)
    exp = read(path, name, None)
    if exp.broken is not None:
        raise ExperimentError(f"experiment module {path} is broken: {exp.broken}")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ExperimentError(f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any import error means the module is broken
        del sys.modules[name]
        raise ExperimentError(f"experiment module {path} failed to import: {type(e).__name__}: {e}") from e
    problems = contract_problems(module)
    if problems:
        del sys.modules[name]
        raise ExperimentError(f"experiment module {path} breaks the experiment contract: {'; '.join(problems)}")
    return module


def resolve(name_or_path: str) -> ModuleType:
    """The module of experiment `name_or_path`: a NAME from the suite, or a module's path."""
    return load_file(name_or_path) if is_path(name_or_path) else load(find(name_or_path))


def check(exp: Experiment) -> Experiment:
    """`exp` after importing it: broken, with the reason, if the import or the contract fails,
    or if its default or `QUICK` config does not validate."""
    if exp.broken is not None:
        return exp
    from superpos_jax import config

    try:
        module = load(exp)
        cfg = module.Config()
        config.validate(cfg)
        config.validate(config.apply_overrides(cfg, getattr(module, "QUICK", {})))
    except ExperimentError as e:
        reason = str(e).split(": ", 1)[1] if ": " in str(e) else str(e)
        return dataclasses.replace(exp, broken=reason)
    except config.ConfigError as e:
        return dataclasses.replace(exp, broken=f"its default or --quick config is invalid: {e}")
    if module.NAME != exp.name:
        return dataclasses.replace(exp, broken=f"NAME is {module.NAME!r} once imported, not {exp.name!r}")
    return exp


def source_of(module: ModuleType) -> dict[str, Any]:
    """What config.json records so that `resume` finds the module again: its path, for a
    module that is not in the suite (a user's file)."""
    name = module.__name__
    if name.startswith(f"{BUILTIN}.") or name.startswith("_superpos_suite_"):
        return {}
    return {"path": str(Path(module.__file__).resolve())} if getattr(module, "__file__", None) else {}
