"""Phase diagram of an extra feature, n = 2 features in m = 1 dimension (Toy Models of
Superposition, "Phase changes"): feature 1 has importance 1, the extra feature importance r
(0.1 … 10, log spaced); every feature has density 1 − S (0.01 … 1, log spaced); ReLU-output
model. The extra feature ends up not represented, in a dedicated dimension, or in
superposition (an antipodal pair with feature 1, W ≈ [1, −1]).

Beside the trained diagram, the theory: the lowest expected loss of the paper's candidates
W = [1, 0], [0, 1], [1, −1], each with its optimal norms and biases (`superpos_jax.toy.theory`).
The default grid is 30 × 30 cells × 5 seeds (4,500 instances, one sweep: about two minutes on
2 CPU cores); the paper's is `--set n_importances=50 n_densities=50 n_seeds=10` (25,000
instances, about 10 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import phase_common
from superpos_jax.config import PositiveInt
from superpos_jax.toy import theory
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir

NAME = "phase-2x1"
DESCRIPTION = "n=2, m=1: is the extra feature dropped, dedicated or superposed? trained vs theoretical phase diagram"
N_FEATURES, D_HIDDEN = 2, 1


@dataclass(frozen=True)
class Config(phase_common.PhaseConfig):
    n_importances: PositiveInt = 30
    n_densities: PositiveInt = 30
    theory_nodes: PositiveInt = 64


QUICK = phase_common.QUICK


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    return phase_common.build(cfg, N_FEATURES, D_HIDDEN)


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, compute the theory, write the figure (process 0), return the summary."""
    return phase_common.run(
        NAME, cfg, out_dir, n_features=N_FEATURES, d_hidden=D_HIDDEN,
        candidates=theory.candidates_2x1(), progress=progress, execution=execution,
    )
