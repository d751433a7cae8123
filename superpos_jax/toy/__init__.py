"""Toy models of superposition: models, samplers, metrics, geometry, theory, adversarial attacks,
finite data sets and memorisation, magnitude pruning (lottery tickets)."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "models": ["MODEL_KINDS", "AbsParams", "ToyParams", "abs_task", "kind_flags", "toy_forward",
               "toy_hparams", "toy_loss", "toy_task"],
    "correlated": ["correlated_hparams", "correlated_task"],
    "samplers": ["PAIR_KINDS", "check_feature_probability", "explicit_importance", "geometric_importance",
                 "sample_features", "sample_paired_features", "uniform_importance"],
    "metrics": ["REPRESENTED_NORM", "dimensions_per_feature", "feature_dimensionality", "feature_norms",
                "n_represented", "represented_dimensionality", "superposition"],
    "geometry": ["classify_geometry", "fraction_counts", "fraction_label", "nearest_fraction", "project_to_plane"],
    "theory": ["theoretical_phases"],
    "adversarial": ["attack_toy"],
    "datasets": ["batch_indices", "gather_batch", "sample_pool", "train_mask"],
    "memorization": ["datapoint_dimensionality", "hidden_mask", "init_masked", "masked_forward",
                     "memorization_hparams", "memorization_task", "pool_loss"],
    "pruning": ["keep_count", "magnitude_mask", "masked_toy_task", "masked_updates"],
})
