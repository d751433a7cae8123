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
