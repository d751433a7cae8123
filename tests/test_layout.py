"""The package layout, read from the source (ast, nothing imported): the direction of imports
between the families, no pyplot and no backend switch in the library, and packaging
(every package installed, one version source, the license file).

Direction (an arrow is "may import"):

    engine  <-  toy, sae, lm, interop  <-  plots (analysis helpers only)  <-  experiments, cli

`engine` imports no family; no family imports `plots`, `cli` or the experiment suite; `plots`
draws what the analysis modules compute (`ALLOWED_IN_PLOTS`: superposition, feature geometry,
density histograms, fitted laws), so it may import those and nothing else of the families —
a copy of that math inside plots would be a second implementation of the science.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "superpos_jax"
SUITE = "superpos_experiments"
FAMILIES = ("toy", "sae", "lm", "interop")
ALLOWED_IN_PLOTS = (
    "superpos_jax.toy.metrics",
    "superpos_jax.toy.geometry",
    "superpos_jax.sae.metrics",
    "superpos_jax.sae.scaling",
)


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, anywhere in the file (function-level imports included),
    as absolute dotted names; `from a import b` yields both `a` and `a.b`."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def _library() -> dict[str, set[str]]:
    return {_module_name(p, PACKAGE, "superpos_jax"): _imports(p, _module_name(p, PACKAGE, "superpos_jax"))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(modules: dict[str, set[str]], owner: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imports in modules.items() if _within(m, owner)
                  for i in imports if any(_within(i, f) for f in forbidden))


def test_import_parser_resolves_relative_and_from_imports(tmp_path):
    pkg = tmp_path / "superpos_jax" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import metrics\nfrom .geometry import x\n")
    (pkg / "mod.py").write_text("def f():\n    from ..plots import base\n    import superpos_experiments.intro\n")
    init = _imports(pkg / "__init__.py", "superpos_jax.toy")
    assert {"superpos_jax.toy", "superpos_jax.toy.metrics", "superpos_jax.toy.geometry"} <= init
    mod = _imports(pkg / "mod.py", "superpos_jax.toy.mod")
    assert {"superpos_jax.plots", "superpos_jax.plots.base", "superpos_experiments.intro"} <= mod
    bad = _violations({"superpos_jax.toy.mod": mod}, "superpos_jax.toy", ("superpos_jax.plots", SUITE))
    assert bad == ["superpos_jax.toy.mod imports superpos_experiments.intro",
                   "superpos_jax.toy.mod imports superpos_jax.plots",
                   "superpos_jax.toy.mod imports superpos_jax.plots.base"]


def test_the_families_are_where_the_layout_says():
    modules = _library()
    for family in ("engine", *FAMILIES, "plots"):
        assert f"superpos_jax.{family}" in modules, family


def test_engine_imports_no_family():
    forbidden = tuple(f"superpos_jax.{f}" for f in (*FAMILIES, "plots", "cli")) + (SUITE,)
    assert _violations(_library(), "superpos_jax.engine", forbidden) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_families_import_neither_plots_nor_cli_nor_the_suite(family):
    forbidden = ("superpos_jax.plots", "superpos_jax.cli", SUITE)
    assert _violations(_library(), f"superpos_jax.{family}", forbidden) == []


def test_plots_import_only_analysis_helpers_of_the_families():
    modules = _library()
    bad = []
    for m, imports in modules.items():
        if not _within(m, "superpos_jax.plots"):
            continue
        for i in imports:
            parent_only = any(j.startswith(i + ".") for j in imports)  # `from a import b` also yields `a`
            if parent_only or not _within(i, "superpos_jax") or _within(i, "superpos_jax.plots"):
                continue
            if not _within(i, "superpos_jax._lazy") and not any(_within(i, allowed) for allowed in ALLOWED_IN_PLOTS):
                bad.append(f"{m} imports {i}")
    assert sorted(bad) == []


def _calls_matplotlib_use(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use":
            target = node.func.value
            if isinstance(target, ast.Name) and target.id in ("matplotlib", "mpl"):
                return True
    return False


def test_no_pyplot_and_no_backend_switch_outside_the_cli():
    files = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
    pyplot = [str(p.relative_to(ROOT)) for p in files
              if any(_within(i, "matplotlib.pyplot") or i == "pylab" for i in _imports(p, "superpos_jax.x"))]
    assert pyplot == [], "figures are built as matplotlib.figure.Figure; pyplot is global state"
    switches = [str(p.relative_to(ROOT)) for p in files if _calls_matplotlib_use(p) and p.name != "cli.py"]
    assert switches == [], "only the CLI may choose a matplotlib backend"


def test_experiments_import_only_the_shared_helpers_of_the_suite():
    shared = {"common", "lm_common", "phase_common"}
    bad = []
    for path in sorted((ROOT / "experiments").glob("*.py")):
        module = _module_name(path, ROOT / "experiments", SUITE)
        for i in _imports(path, module):
            if _within(i, SUITE) and i not in (SUITE, module):
                name = i.split(".")[1]
                if name not in shared:
                    bad.append(f"{module} imports {i}")
    assert bad == [], "library logic an experiment shares belongs in superpos_jax"


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_directory_is_installed():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {_module_name(p.parent / "__init__.py", PACKAGE, "superpos_jax") for p in PACKAGE.rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert {p for p in listed if p.startswith("superpos_jax")} - on_disk == set(), "stale package entries"
    assert SUITE in listed and setuptools["package-dir"] == {SUITE: "experiments"}
    assert (ROOT / "experiments" / "__init__.py").exists()
    assert not (ROOT / "experiments" / "experiments").exists()


def test_one_version_source():
    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "superpos_jax._version.__version__"}
    tree = ast.parse((PACKAGE / "_version.py").read_text())
    versions = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
                and [t.id for t in n.targets if isinstance(t, ast.Name)] == ["__version__"]]
    assert len(versions) == 1 and isinstance(versions[0], str)
    init = (PACKAGE / "__init__.py").read_text()
    assert "from superpos_jax._version import __version__" in init


def test_license_file_matches_the_declared_license():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[:3] == ["Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    sections = [s for s in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                            "4. Redistribution.", "5. Submission of Contributions.", "6. Trademarks.",
                            "7. Disclaimer of Warranty.", "8. Limitation of Liability.",
                            "9. Accepting Warranty or Additional Liability.") if s in text]
    assert len(sections) == 9
