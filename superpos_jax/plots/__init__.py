"""Matplotlib figures in the style of the papers, one module per kind of figure.

Every figure function takes host arrays and returns a `matplotlib.figure.Figure`, built
without pyplot (no backend switch, no global figure list); `save(fig, path)` is the one writer:
`plots.save(plots.sparsity_figure(...), run_dir / "figures" / "sparsity.png")`.

Modules: `base` (`new_figure` for figures of your own, `save`, loss curves), `sparsity` (the
sparsity-sweep figure), `features2d` (2-D feature diagrams: intro, correlated), `phase` (phase
diagrams), `geometry` (dimensions per feature, D_i scatter), `dynamics` (D_i over training),
`neurons` (neuron-by-feature plots, abs-model weights), `adversarial` (vulnerability vs
sparsity), `sae` (Pareto, feature density, scaling laws, ground-truth recovery, probing), `bench` (a metric
against L0 per architecture), `attention` (induction: phase change, head scores, patterns),
`memorization` (double descent in the training-set size, feature vs data-point dimensionality,
W_i vs h_t pictures), `pruning` (lottery tickets: loss and geometry against the weights kept),
`universality`, `splitting`, `completeness` (the SAE studies of their experiments). Each loads
on first use.
"""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "base": ["loss_curves", "new_figure", "save"],
    "adversarial": ["vulnerability_figure"],
    "attention": ["attention_patterns_figure", "phase_change_loss_figure", "score_trajectories_figure"],
    "dynamics": ["dynamics_figure"],
    "features2d": ["feature_diagrams"],
    "geometry": ["geometry_figure"],
    "neurons": ["abs_computation_figure", "privileged_basis_figure"],
    "phase": ["phase_diagram_figure"],
    "sae": [],
    "sparsity": ["sparsity_figure"],
    "bench": ["metric_vs_l0"],
    "memorization": ["dimensionality_figure", "double_descent_figure", "memorization_geometry_figure"],
    "pruning": ["ticket_geometry_figure", "ticket_gram_figure", "ticket_loss_figure"],
    "universality": ["shared_fraction_figure", "similarity_histograms", "toy_universality_figure"],
    "completeness": ["scores_figure", "size_needed_figure"],
    "splitting": ["SplitNode", "criterion_figure", "split_counts_figure", "split_tree_figure"],
})
