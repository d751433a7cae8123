"""Sparse autoencoders: the trained `SAE` module, architectures (a registry, one file per
kind), training on the engine, activation sources, metrics, scaling laws and the SAELens layout."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "model": ["SAE"],
    "architectures": ["Architecture", "SAEParams"],
    "training": ["SAETraining", "sae_hparams", "sae_task"],
    "sources": ["ArrayRows", "GroundTruthSource", "ToyHiddenSource"],
    "metrics": [],
    "scaling": [],
    "io": ["load_sae", "save_sae"],
})
