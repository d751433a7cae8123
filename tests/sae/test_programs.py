"""The activations never enter a compiled program: for every recipe × architecture, with a
multi-MB `ArrayRows` source, the lowered init and run programs stay small and do not grow with
the data (the source is the task's `shared` argument, read by every task function)."""

import jax
import numpy as np
import pytest

from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae.sources import ArrayRows
from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

D_IN, D_SAE = 64, 128
VARIANTS = [("relu", "2023"), ("relu", "2024"), ("topk", "2023"), ("batchtopk", "2023"),
            ("jumprelu", "2023"), ("gated", "2023"), ("gated", "2024")]
MAX_PROGRAM_BYTES = 200_000


def _program_sizes(architecture: str, recipe: str, n_rows: int) -> tuple[int, int]:
    rows = np.random.default_rng(0).normal(size=(n_rows, D_IN)).astype(np.float32)
    training = SAETraining(architecture, D_IN, D_SAE, batch_size=32, recipe=recipe, stats_samples=512,
                           resample_every=0 if architecture in ("topk", "batchtopk") else 5, l1_warmup_steps=5)
    hp = sae_hparams(training, **{training.arch.swept: [2.0, 4.0]})
    trainer = make_trainer(sae_task(training, ArrayRows(rows)), recipe_optim(training, 10, 1e-3))
    keys = instance_keys([0, 1])
    state = jax.eval_shape(trainer.init, hp, keys)
    init_text = trainer.lower_init(hp, keys).as_text()
    run_text = trainer.lower_run(state, hp, 2).as_text()
    return len(init_text), len(run_text)


@pytest.mark.parametrize("architecture,recipe", VARIANTS, ids=[f"{a}-{r}" for a, r in VARIANTS])
def test_programs_stay_small_and_independent_of_the_data(architecture, recipe):
    small = _program_sizes(architecture, recipe, 4_096)  # 1 MiB of float32 rows
    large = _program_sizes(architecture, recipe, 32_768)  # 8 MiB
    for name, s, l in zip(("init", "run"), small, large):
        assert l < MAX_PROGRAM_BYTES, f"{name} program of {architecture}-{recipe}: {l} bytes"
        assert abs(l - s) < 1_000, f"{name} program grows with the data: {s} -> {l} bytes"
