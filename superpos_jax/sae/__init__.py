"""Sparse autoencoders: architectures, training on the engine, activation sources, metrics,
scaling laws and the SAELens layout."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "architectures": ["SAE_KINDS", "SAEParams"],
    "training": ["SAETraining", "sae_hparams", "sae_task"],
    "sources": [],
    "metrics": [],
    "scaling": [],
    "io": ["load_sae", "save_sae"],
})
