"""superpos_jax: the science of superposition as pure, vmapped, compiled JAX functions.

Data flow: grid → per-instance hyperparameters → vmapped init → scan of train steps
(chunked) → final state + loss traces → metrics → figures and summary.json.
"""

from superpos_jax import (
    adversarial,
    checkpoint,
    corpus,
    data,
    distributed,
    erasure,
    execution,
    feature_browser,
    interventions,
    lm_task,
    metrics,
    plots,
    prng,
    sae_data,
    sae_io,
    sae_metrics,
    sae_training,
    scaling_law,
    steering,
    theory,
    tokenizer,
    transformer_io,
)
from superpos_jax.data import (
    PAIR_KINDS,
    check_feature_probability,
    explicit_importance,
    geometric_importance,
    sample_features,
    sample_paired_features,
    uniform_importance,
)
from superpos_jax.metrics import (
    dimensions_per_feature,
    feature_dimensionality,
    feature_norms,
    n_represented,
    superposition,
)
from superpos_jax.models import correlated, sae, toy, transformer
from superpos_jax.models.sae import SAE_KINDS, SAEParams
from superpos_jax.models.transformer import TransformerConfig, TransformerParams, forward, init_transformer
from superpos_jax.sae_training import SAETraining, sae_hparams, sae_task
from superpos_jax.erasure import LeaceEraser, fit_leace
from superpos_jax.lm_task import CorpusWindows, RepeatedTokens, lm_task as make_lm_task
from superpos_jax.models.correlated import correlated_hparams, correlated_task
from superpos_jax.models.toy import (
    MODEL_KINDS,
    AbsParams,
    ToyParams,
    abs_task,
    kind_flags,
    toy_forward,
    toy_hparams,
    toy_loss,
    toy_task,
)
from superpos_jax.distributed import sweep_mesh
from superpos_jax.execution import BlockPlan, Execution
from superpos_jax.sweep import Grid, Preempted, SweepResult, run_sweep
from superpos_jax.train import OptimConfig, Task, Trainer, TrainState, instance_keys, make_trainer

__version__ = "0.1.0"

__all__ = [
    "SAE_KINDS", "SAEParams", "SAETraining", "TransformerConfig", "TransformerParams", "forward", "init_transformer",
    "sae_hparams", "sae_task", "LeaceEraser", "fit_leace", "CorpusWindows", "RepeatedTokens", "make_lm_task",
    "corpus", "erasure", "feature_browser", "interventions", "lm_task", "sae", "sae_data", "sae_io", "sae_metrics",
    "sae_training", "scaling_law", "steering", "tokenizer", "transformer", "transformer_io",
    "MODEL_KINDS", "PAIR_KINDS", "AbsParams", "BlockPlan", "Execution", "Grid", "OptimConfig", "Preempted",
    "SweepResult", "Task", "ToyParams", "TrainState", "Trainer", "abs_task",
    "adversarial", "check_feature_probability", "checkpoint", "correlated", "correlated_hparams",
    "correlated_task", "data", "distributed", "execution",
    "dimensions_per_feature", "explicit_importance", "feature_dimensionality", "feature_norms",
    "geometric_importance", "instance_keys", "kind_flags", "make_trainer", "metrics",
    "n_represented", "plots", "prng", "run_sweep", "sample_features", "sample_paired_features", "superposition", "sweep_mesh", "theory", "toy",
    "toy_forward", "toy_hparams", "toy_loss", "toy_task", "uniform_importance",
]
