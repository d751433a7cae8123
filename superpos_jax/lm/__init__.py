"""Language models with hooks: the transformer, its Task, corpus and tokenizers, interventions,
steering, induction heads, concept erasure and the feature browser."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "transformer": ["TransformerConfig", "TransformerParams", "forward", "init_transformer"],
    "task": ["CorpusWindows", "RepeatedTokens", "lm_task"],
    "erasure": ["LeaceEraser", "fit_leace"],
    "corpus": [],
    "tokenizers": [],
    "interventions": [],
    "steering": [],
    "induction": [],
    "browser": [],
    "io": [],
})
