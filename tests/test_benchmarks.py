"""Every benchmark script imports (its module-level code runs) and builds its argument parser,
so a script broken by a refactor fails here rather than on the next machine that runs it."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(p for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py") if p.name != "__init__.py")


def test_there_are_benchmarks():
    assert len(BENCHMARKS) >= 5


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_script_imports_and_parses_help(path, capsys):
    spec = importlib.util.spec_from_file_location(f"_benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look their module up here
    try:
        spec.loader.exec_module(module)
        main = getattr(module, "main", None)
        assert callable(main), f"{path.name} has no main()"
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0
    finally:
        sys.modules.pop(spec.name, None)
    assert "usage" in capsys.readouterr().out.lower()
