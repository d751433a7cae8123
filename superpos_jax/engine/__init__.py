"""The model-agnostic engine: a `Task` becomes a vmapped init and a scanned, donated, sharded
training loop; sweeps, execution plans, processes, checkpoints, the metrics log and the
data-path generator.

Imports no model family.
"""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "task": ["Task"],
    "optim": ["OptimConfig", "make_optimizer"],
    "trainer": ["TrainState", "Trainer", "instance_keys", "make_trainer", "step_key"],
    "sweep": ["Grid", "Preempted", "SweepResult", "run_sweep"],
    "execution": ["BlockPlan", "Execution"],
    "distributed": ["sweep_mesh"],
    "metrics_log": ["MetricsLog"],
    "checkpoint": [],
    "prng": [],
})
