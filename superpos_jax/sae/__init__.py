"""Sparse autoencoders: the trained `SAE` module, architectures (a registry, one file per
kind), training on the engine, activation sources (in the loop, and streamed from disk shards), metrics, scaling laws and the SAELens layout."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "model": ["SAE"],
    "architectures": ["Architecture", "SAEParams"],
    "training": ["SAETraining", "sae_hparams", "sae_task"],
    "sources": ["ArrayRows", "FedSource", "GroundTruthSource", "ToyHiddenSource"],
    "streaming": ["ShardedActivations", "write_shards"],
    "metrics": [],
    "scaling": [],
    "io": ["load_sae", "save_sae"],
})
