"""Interoperability with other libraries' formats: safetensors files (`safetensors`), the
SAELens SAE layout (`saelens`) and activations from Flax NNX models (`flax_nnx`)."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "flax_nnx": [],
    "saelens": [],
    "safetensors": [],
})
