"""Phase diagram of an extra feature, n = 3 features in m = 2 dimensions (Toy Models of
Superposition, "Phase changes"): features 1 and 2 have importance 1, the extra feature
importance r (0.1 … 10, log spaced); every feature has density 1 − S (0.01 … 1, log spaced);
ReLU-output model.

The theory compares five arrangements of three features in two dimensions
(`theory.candidates_3x2`), each with its optimal norms and biases: two dedicated and the extra
dropped; the extra and feature 1 dedicated, feature 2 dropped; features 1 and 2 an antipodal
pair with the extra dedicated; the extra antipodal to feature 1 with feature 2 dedicated; a
triangle (starting at 120°, angles free). The sparse extra feature goes into superposition
(antipodal to feature 1) when r < 1, and keeps a dedicated dimension when r > 1 while
features 1 and 2 share the other one as an antipodal pair.

The default grid is 20 × 20 cells × 5 seeds (2,000 instances, one sweep: about three minutes
on 2 CPU cores); the paper's is `--set n_importances=50 n_densities=50 n_seeds=10` (25,000
instances, roughly 25 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import phase_common
from superpos_jax.toy import theory
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir

NAME = "phase-3x2"
DESCRIPTION = "n=3, m=2: is the extra feature dropped, dedicated or superposed? trained vs theoretical phase diagram"
N_FEATURES, D_HIDDEN = 3, 2


@dataclass(frozen=True)
class Config(phase_common.PhaseConfig):
    pass


QUICK = phase_common.QUICK


def build(cfg: Config):
    """The grid, per-instance hparams, keys and trainer of this experiment."""
    return phase_common.build(cfg, N_FEATURES, D_HIDDEN)


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train the sweep, compute the theory, write the figure (process 0), return the summary."""
    return phase_common.run(
        NAME, cfg, out_dir, n_features=N_FEATURES, d_hidden=D_HIDDEN,
        candidates=theory.candidates_3x2(), progress=progress, execution=execution,
    )
