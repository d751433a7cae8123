"""superpos_jax: the science of superposition as pure, vmapped, compiled JAX functions.

Data flow: grid → per-instance hyperparameters → vmapped init → scan of train steps
(chunked) → final state + loss traces → metrics → figures and summary.json.

The families are subpackages: `engine` (model-agnostic training), `toy` (toy models of
superposition), `sae` (sparse autoencoders), `lm` (transformers with hooks), `interop`
(other libraries' formats) and `plots` (figures). Everything is imported on first use.
"""

from superpos_jax._lazy import attach
from superpos_jax._version import __version__

__getattr__, __dir__, __all__ = attach(__name__, {
    "engine": [], "toy": [], "sae": [], "lm": [], "interop": [], "plots": [], "config": [],
    "engine.task": ["Task"],
    "engine.optim": ["OptimConfig"],
    "engine.trainer": ["TrainState", "Trainer", "instance_keys", "make_trainer"],
    "engine.sweep": ["Grid", "Preempted", "SweepResult", "run_sweep"],
    "engine.execution": ["BlockPlan", "Execution"],
    "engine.distributed": ["sweep_mesh"],
    "toy.models": ["MODEL_KINDS", "AbsParams", "ToyParams", "abs_task", "kind_flags", "toy_forward",
                   "toy_hparams", "toy_loss", "toy_task"],
    "toy.correlated": ["correlated_hparams", "correlated_task"],
    "toy.samplers": ["PAIR_KINDS", "check_feature_probability", "explicit_importance", "geometric_importance",
                     "sample_features", "sample_paired_features", "uniform_importance"],
    "toy.metrics": ["REPRESENTED_NORM", "dimensions_per_feature", "feature_dimensionality", "feature_norms",
                    "n_represented", "superposition"],
    "toy.geometry": ["classify_geometry"],
    "sae.model": ["SAE"],
    "sae.training": ["SAETraining", "sae_hparams", "sae_task"],
    "sae.io": ["load_sae", "save_sae"],
    "lm.transformer": ["TransformerConfig", "TransformerParams", "forward", "init_transformer"],
    "lm.task": ["CorpusWindows", "RepeatedTokens", "lm_task"],
    "lm.erasure": ["LeaceEraser", "fit_leace"],
})
