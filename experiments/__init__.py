"""The experiment suite: one module per paper figure or study (installed as `superpos_experiments`).

`superpos list` reads the modules of this folder without importing them (`superpos_jax.suite`);
`superpos run NAME` imports the one it runs. Every module here is an experiment except those
starting with "_" and the helpers named in `HELPERS`.

The experiment contract — what a module needs for `superpos run` (here, or your own module
run by its path: `superpos run path/to/my_experiment.py`):

* `NAME`, `DESCRIPTION`: string constants at module level (read without importing the
  module, so they must be plain literals). `NAME` is what `superpos run` takes.
* `Config`: a frozen dataclass whose every field has a default. Constraints are declared in
  the annotations (`n_features: PositiveInt = 20`, `Annotated[float, in_range(0, 1)]`, see
  `superpos_jax.config`); nested dataclasses give dotted keys (`--set model.d_model=64`); an
  optional `check(self)` method raises `config.fail(field, value, allowed)` for constraints
  between fields. Subclass `common.RunConfig` (seed, n_steps, chunk_steps, log_every) or
  `common.TrainingConfig` (plus batch size, optimizer and data generator) to share them.
* `QUICK` (optional): the overrides of `--quick`, a dict of field -> value (dotted keys for
  nested fields); a quick run finishes in under a minute on a 2-core CPU.
* `run(config, out_dir, *, progress, execution) -> dict`: trains and analyses; `out_dir` is a
  `superpos_jax.rundir.RunDir` (train with `common.train(..., out_dir, ...)`, which
  checkpoints into it and logs metrics.jsonl; write figures to `out_dir.figure_path(name)`
  on process 0); the returned dict (JSON-able) becomes summary.json. It may raise
  `superpos_jax.engine.sweep.Preempted`, which the CLI turns into exit status 75.

Modules import each other relatively (`from . import common`). A module run by its path
stands alone: it uses absolute imports (`from superpos_experiments import common`), and its
path is recorded in config.json so that `superpos resume DIR` finds it again. Folders listed
in `SUPERPOS_EXPERIMENTS_PATH` are searched before this one, with the same rules.
"""

HELPERS = ("common", "lm_common", "phase_common")
"""Modules of this folder that are not experiments (shared plumbing and science)."""
