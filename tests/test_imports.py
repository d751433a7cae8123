"""Import hygiene: importing the library (or one family) loads neither pyplot nor orbax and
leaves the user's matplotlib backend alone; the public `__all__` lists are sorted and every
name in them resolves; one version. Each import check runs in a fresh interpreter."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys

import pytest

import superpos_jax

FAMILIES = ("engine", "toy", "sae", "lm", "interop", "plots")

_PROBE = """
import json, sys
import matplotlib
matplotlib.use("svg")
before = matplotlib.get_backend()
{body}
print(json.dumps({{
    "pyplot": "matplotlib.pyplot" in sys.modules,
    "orbax": sorted(m for m in sys.modules if m == "orbax" or m.startswith("orbax.")),
    "backend_before": before,
    "backend_after": matplotlib.get_backend(),
    "rc_backend": matplotlib.rcParams["backend"],
}}))
"""


def _probe(body: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(body=body)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["superpos_jax", *(f"superpos_jax.{f}" for f in FAMILIES)])
def test_import_loads_no_pyplot_no_orbax_and_keeps_the_backend(module):
    seen = _probe(f"import {module}")
    assert not seen["pyplot"], f"import {module} loaded matplotlib.pyplot"
    assert seen["orbax"] == [], f"import {module} loaded {seen['orbax'][:3]}"
    assert seen["backend_before"] == seen["backend_after"] == seen["rc_backend"] == "svg"


def test_using_every_public_name_still_loads_no_pyplot_and_keeps_the_backend():
    body = ("import superpos_jax\n"
            "for family in [superpos_jax, *(getattr(superpos_jax, f) for f in %r)]:\n"
            "    for name in family.__all__:\n"
            "        getattr(family, name)\n" % (FAMILIES,))
    seen = _probe(body)
    assert not seen["pyplot"]
    assert seen["backend_before"] == seen["backend_after"] == seen["rc_backend"] == "svg"


def test_the_probe_sees_pyplot_and_a_backend_switch():
    """The check above can fail: a module that imports pyplot and switches to Agg is caught."""
    seen = _probe("import matplotlib.pyplot\nmatplotlib.use('Agg')")
    assert seen["pyplot"] and seen["backend_after"].lower() == "agg" != seen["backend_before"]


@pytest.mark.parametrize("module", ["superpos_jax", *(f"superpos_jax.{f}" for f in FAMILIES)])
def test_all_is_sorted_unique_and_every_name_resolves(module):
    package = importlib.import_module(module)
    names = package.__all__
    assert names == sorted(names) and len(set(names)) == len(names)
    assert names, f"{module} exports nothing"
    missing = [n for n in names if not hasattr(package, n)]
    assert missing == []
    assert set(names) <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        getattr(package, "not_a_name")


def test_families_are_exported_at_the_top_level():
    assert set(FAMILIES) <= set(superpos_jax.__all__)
    for family in FAMILIES:
        assert getattr(superpos_jax, family) is importlib.import_module(f"superpos_jax.{family}")


def test_version_is_the_installed_distributions():
    assert superpos_jax.__version__ == importlib.metadata.version("superpos-jax")
    assert all(part.isdigit() for part in superpos_jax.__version__.split(".")[:2])
