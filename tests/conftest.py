"""Strict test configuration: 8 CPU devices, rank promotion and implicit dtype promotion are errors.

Shapes annotated with jaxtyping are checked at runtime by beartype during tests
(`--jaxtyping-packages` in pyproject.toml).
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def crash_after_chunks(monkeypatch):
    """`crash_after_chunks(trainer, n)`: the next `run_sweep` with `trainer` (on the default
    mesh run_sweep places it on) raises KeyboardInterrupt — a simulated kill — once `n` chunks
    have run. Undo with `monkeypatch.undo()`."""
    def install(trainer, n: int) -> None:
        real_on, calls, patched = trainer.on, [], set()

        def on(mesh):
            sharded = real_on(mesh)
            if id(sharded) not in patched:
                patched.add(id(sharded))
                real_run = sharded.run

                def crashing_run(state, hparams, n_steps, streamed=None):
                    if len(calls) == n:
                        raise KeyboardInterrupt("simulated crash")
                    calls.append(n_steps)
                    return real_run(state, hparams, n_steps, streamed)

                monkeypatch.setattr(sharded, "run", crashing_run)
            return sharded

        monkeypatch.setattr(trainer, "on", on)

    return install
