"""Matplotlib figures in the style of the papers, one module per kind of figure.

The toy-model figure functions write a PNG and return its path; the SAE figures (`sae`)
return a Figure to pass to `base.save`, the one place that writes files. Modules: `base`
(saving, loss curves), `sparsity` (the sparsity-sweep figure), `features2d` (2-D feature
diagrams: intro, correlated), `phase` (phase diagrams), `geometry` (dimensions per feature,
D_i scatter), `dynamics` (D_i over training), `neurons` (neuron-by-feature plots, abs-model
weights), `adversarial` (vulnerability vs sparsity), `sae` (Pareto, feature density, scaling
laws, ground-truth recovery), `attention` (induction: phase change, head scores, patterns).
"""

from superpos_jax.plots import attention, sae

from superpos_jax.plots.adversarial import vulnerability_figure
from superpos_jax.plots.base import loss_curves, save
from superpos_jax.plots.dynamics import dynamics_figure
from superpos_jax.plots.features2d import feature_diagrams
from superpos_jax.plots.geometry import geometry_figure
from superpos_jax.plots.neurons import abs_computation_figure, privileged_basis_figure
from superpos_jax.plots.phase import phase_diagram_figure
from superpos_jax.plots.sparsity import sparsity_figure

__all__ = [
    "attention", "sae",
    "abs_computation_figure", "dynamics_figure", "feature_diagrams", "geometry_figure", "loss_curves",
    "phase_diagram_figure", "privileged_basis_figure", "save", "sparsity_figure", "vulnerability_figure",
]
