"""Sparse autoencoders: the trained `SAE` module, architectures (a registry, one file per
kind), training on the engine, activation sources (in the loop, and streamed from disk shards),
structured synthetic ground truth, metrics (absorption, splitting, precision/recall), feature
matching between dictionaries, probing, scaling laws and the SAELens layout."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "model": ["SAE"],
    "architectures": ["Architecture", "SAEParams"],
    "training": ["SAETraining", "firing_observer", "sae_hparams", "sae_task"],
    "sources": ["ArrayRows", "FedSource", "GroundTruthSource", "LinearViews", "ToyHiddenSource"],
    "synthetic": ["SyntheticConfig", "SyntheticSource"],
    "streaming": ["ShardedActivations", "write_shards"],
    "metrics": [],
    "matching": [],
    "probing": ["ProbeResult", "k_sparse_probe"],
    "scaling": [],
    "io": ["load_sae", "save_sae"],
})
