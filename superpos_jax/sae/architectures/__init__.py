"""Sparse-autoencoder architectures, registered by name (`get`, `names`, `register`).

Each architecture is one file with one `Architecture` object (see `base` for the interface and
the shared pieces: pre-activations, decoding, the unit-norm decoder; `ksparse` holds exact
top-k, AuxK and the k-sparse base):

====================  ==========================================  ========================================
name                  f                                           loss (+ hp keys)
====================  ==========================================  ========================================
relu                  ReLU(z),  z = x̄ W_encᵀ + b_enc               recon + λ Σ_i f_i w_i, w_i = 1 (2023) or
                                                                  ‖W_dec,i‖ (2024, `decoder_norm_l1` = 1)
topk                  ReLU(z) on each row's k largest z           recon + α·AuxK (`k`, `dead`, `k_aux`, α)
batchtopk             ReLU(z) on the batch's k·batch largest z    recon + α·AuxK (as topk); a JumpReLU at a
                                                                  running threshold at inference
jumprelu              z · H(z − θ),  θ = exp(log_threshold)       recon + λ Σ_i H(z_i − θ_i) (`bandwidth`)
gated                 H(π) ⊙ ReLU(exp(r_mag) ⊙ x̄W_encᵀ + b_mag),   recon + λ Σ_i ReLU(π_i) w_i
                      π = x̄ W_encᵀ + b_enc                          + ‖x − x̂_frozen(ReLU(π))‖²
matryoshka_batchtopk  as batchtopk                                Σ_j recon of the prefix [0, m_j) of the
                                                                  latents (`prefix_fractions`, static) +
                                                                  α·AuxK; JumpReLU at inference
transcoder            ReLU(x W_encᵀ + b_enc) of the input x       ‖y − ŷ‖² + λ Σ_i f_i w_i on rows [x | y],
                                                                  ŷ = f W_decᵀ + b_dec (`d_out`, static)
skip_transcoder       as transcoder                               as transcoder, ŷ += x W_skipᵀ
crosscoder            ReLU(x W_encᵀ + b_enc), x = [x¹|...|x^L]    Σ_l ‖x^l − x̂^l‖² + λ Σ_i f_i Σ_l ‖W_dec,i^l‖
                                                                  (`n_layers`, static)
====================  ==========================================  ========================================

Adding an architecture: one new file with its `Architecture` subclass, and one `register(...)`
line below.
"""

from superpos_jax.sae.architectures.base import (
    RECIPES,
    Architecture,
    L1Architecture,
    SAEParams,
    pre_activations,
    project_decoder,
    unit_norm_decoder,
)
from superpos_jax.sae.architectures.ksparse import KSparseArchitecture, auxk_loss, rank_mask
from superpos_jax.sae.architectures.batchtopk import BatchTopK
from superpos_jax.sae.architectures.crosscoder import Crosscoder, layer_norms
from superpos_jax.sae.architectures.gated import Gated, GatedParams
from superpos_jax.sae.architectures.jumprelu import JumpReLU, JumpReLUParams
from superpos_jax.sae.architectures.matryoshka import MatryoshkaBatchTopK, prefix_sizes
from superpos_jax.sae.architectures.registry import for_saelens, get, hook_names, names, register
from superpos_jax.sae.architectures.relu import ReLU
from superpos_jax.sae.architectures.topk import TopK
from superpos_jax.sae.architectures.transcoder import (
    SkipTranscoder,
    SkipTranscoderParams,
    Transcoder,
    TranscoderParams,
)

register(ReLU())
register(TopK())
register(BatchTopK())
register(JumpReLU())
register(Gated())
register(MatryoshkaBatchTopK())
register(Transcoder())
register(SkipTranscoder())
register(Crosscoder())

__all__ = [
    "RECIPES",
    "Architecture",
    "BatchTopK",
    "Crosscoder",
    "Gated",
    "GatedParams",
    "JumpReLU",
    "JumpReLUParams",
    "KSparseArchitecture",
    "L1Architecture",
    "MatryoshkaBatchTopK",
    "ReLU",
    "SAEParams",
    "SkipTranscoder",
    "SkipTranscoderParams",
    "TopK",
    "Transcoder",
    "TranscoderParams",
    "auxk_loss",
    "for_saelens",
    "get",
    "hook_names",
    "layer_norms",
    "names",
    "pre_activations",
    "prefix_sizes",
    "project_decoder",
    "rank_mask",
    "register",
    "unit_norm_decoder",
]
