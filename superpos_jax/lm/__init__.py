"""Language models with hooks: the transformer (GPT-2 family; Hugging Face and TransformerLens
checkpoints in `pretrained`), its Task, corpus and tokenizers, interventions,
steering, activations (harvest, loss under hooks, CE loss recovered; computed inside an SAE's
training loop by `feed.LMActivations`), induction heads, concept
erasure, the feature browser, and concept labels of Python source from `tokenize` (`labels`)."""

from superpos_jax._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "transformer": ["TransformerConfig", "TransformerParams", "forward", "init_transformer"],
    "task": ["CorpusWindows", "RepeatedTokens", "lm_task"],
    "activations": ["ce_loss_recovered", "harvest", "loss_under_hooks"],
    "feed": ["LMActivations", "transformer_cache"],
    "interventions": ["AddDirection", "ClampFeature", "ClampFeatures", "Compose", "MeanAblate", "Replace", "SpliceSAE", "ZeroAblate"],
    "erasure": ["LeaceEraser", "fit_leace"],
    "corpus": ["Corpus", "load_corpus"],
    "tokenizers": ["BPETokenizer", "ByteTokenizer", "HFTokenizer"],
    "steering": [],
    "induction": [],
    "browser": [],
    "labels": ["CONCEPTS", "byte_labels", "concept_frequencies", "corpus_token_ends", "token_ends", "token_labels"],
    "io": ["load_transformer", "save_transformer"],
    "pretrained": ["from_tl_state_dict", "load_hf_gpt2", "save_hf_gpt2", "to_tl_state_dict"],
})
