"""Toy models of superposition: models, samplers, metrics, geometry, theory, adversarial attacks."""

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
})
