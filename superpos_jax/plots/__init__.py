"""Matplotlib figures in the style of the papers, one module per kind of figure.

Every figure function takes host arrays and returns a `matplotlib.figure.Figure`, built
without pyplot (no backend switch, no global figure list); `save(fig, path)` is the one writer:
`plots.save(plots.sparsity_figure(...), run_dir / "figures" / "sparsity.png")`.

Modules: `base` (`new_figure` for figures of your own, `save`, loss curves), `sparsity` (the
sparsity-sweep figure), `features2d` (2-D feature diagrams: intro, correlated), `phase` (phase
diagrams), `geometry` (dimensions per feature, D_i scatter), `dynamics` (D_i over training),
`neurons` (neuron-by-feature plots, abs-model weights), `adversarial` (vulnerability vs
sparsity), `sae` (Pareto, feature density, scaling laws, ground-truth recovery), `attention`
(induction: phase change, head scores, patterns). Each loads on first use.
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
})
