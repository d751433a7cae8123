"""docs/make_gallery.py's training line: N models × S steps only for a run of one kind of
sweep, the total time alone for runs of a language model and its SAEs or of several sweeps,
and nothing rather than "nan s" or "? models"."""

import importlib.util
import sys
from pathlib import Path


def _gallery():
    path = Path(__file__).parents[1] / "docs" / "make_gallery.py"
    spec = importlib.util.spec_from_file_location("_make_gallery", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_training_line_names_only_what_the_summary_holds():
    line = _gallery().training_line
    assert line({"config": {"n_steps": 10_000}, "n_instances": 56, "train_seconds": 22.04}) == \
        "56 models × 10,000 steps, trained in 22.0 s."
    lm_and_saes = {"config": {"n_steps": 2_000, "sae_steps": 500}, "n_instances": 6, "train_seconds": 1193.3}
    assert line(lm_and_saes) == "Training (every sweep of the run) took 1,193.3 s."
    assert line({"config": {"n_steps": 3_000}, "train_seconds": 168.5}) == "Training (every sweep of the run) took 168.5 s."
    assert line({"config": {"n_steps": 3_000}, "n_instances": 4, "train_seconds": float("nan")}) is None
    assert line({"config": {}}) is None
