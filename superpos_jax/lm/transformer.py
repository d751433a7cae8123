"""A tiny decoder-only transformer whose forward takes hooks and returns a cache.

    forward(params, tokens, hooks={}) -> (logits, cache)

`tokens` is a batch of sequences, int (batch, pos) with pos ≤ n_ctx (one sequence is
`tokens[None]`); the sweep axis (seeds, learning rates) is a `jax.vmap` over `params` at the
call site. The architecture is GPT-2's pre-LayerNorm block (TransformerLens conventions):

    resid_pre  = embed + pos_embed                      (block 0; else the last resid_post)
    attn_out   = Attn(LN₁(resid_pre))                   causal, per-head W_Q W_K W_V W_O
    resid_mid  = resid_pre + attn_out
    mlp_out    = W_out act(W_in LN₂(resid_mid) + b_in) + b_out     act = relu | gelu (tanh approx.)
    resid_post = resid_mid + mlp_out
    logits     = LN_final(resid_post of the last block) W_U + b_U

An attention-only model (`attn_only=True`) has no LN₂/MLP: resid_post = resid_pre + attn_out and
`resid_mid` (which would equal resid_post) is not a hook point. LayerNorm uses ε = 1e-5.

Hook points (`hook_names(cfg)`, shapes in `hook_shapes`) — short TransformerLens names:

=========================  ==================================  ==================================
name                       shape                               what
=========================  ==================================  ==================================
embed, pos_embed           (batch, pos, d_model)               W_E[tokens], W_pos[:pos]
blocks.{i}.resid_pre       (batch, pos, d_model)               residual stream entering block i
blocks.{i}.attn.q/k/v      (batch, pos, n_heads, d_head)       LN₁(x) W + b, per head
blocks.{i}.attn.scores     (batch, n_heads, q_pos, k_pos)      q·k/√d_head, BEFORE the causal mask
blocks.{i}.attn.pattern    (batch, n_heads, q_pos, k_pos)      softmax over k of the masked scores
blocks.{i}.attn.z          (batch, pos, n_heads, d_head)       Σ_k pattern · v
blocks.{i}.attn_out        (batch, pos, d_model)               Σ_h z_h W_O,h + b_O
blocks.{i}.resid_mid       (batch, pos, d_model)               (not in attention-only models)
blocks.{i}.mlp.pre/post    (batch, pos, d_mlp)                 before / after the activation
blocks.{i}.mlp_out         (batch, pos, d_model)
blocks.{i}.resid_post      (batch, pos, d_model)
ln_final.out               (batch, pos, d_model)               input of the unembedding
=========================  ==================================  ==================================

Every hook point passes through one helper: `x ← hooks[name](x)` if `name` is hooked, then `x`
(the hooked value, i.e. what the rest of the network sees) is recorded in the cache. Hooks are
any callables `(activation) -> activation`; the interventions of `superpos_jax.lm.interventions`
are `eqx.Module`s, so their arrays are traced and `jit`/`vmap`/`grad` go through them. The
causal mask is applied *after* the `attn.scores` hook, so no hook on scores can break causality.
TransformerLens spellings (`hook_embed`, `blocks.0.hook_resid_pre`, `blocks.0.attn.hook_pattern`,
`blocks.0.mlp.hook_post`, `ln_final.hook_normalized`, ...) are accepted as aliases; unknown names
raise a `ValueError` before anything is traced.

Initialisation (GPT-2): every weight matrix and embedding ~ N(0, init_std²) with
init_std = 0.02 by default, biases 0, LayerNorm scales 1.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from superpos_jax.config import PositiveFloat, PositiveInt, one_of, validate

Hook = Callable[[Array], Array]
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a tiny transformer (all static: each config is its own compiled program).

    `act` is "relu" or "gelu" (the tanh approximation, GPT-2's gelu_new); `attn_only` drops the
    MLPs; `init_std` is the standard deviation of the GPT-2 initialisation.
    """

    n_layers: PositiveInt = 1
    d_model: PositiveInt = 128
    n_heads: PositiveInt = 4
    d_head: PositiveInt = 32
    d_mlp: PositiveInt = 512
    n_ctx: PositiveInt = 64
    d_vocab: PositiveInt = 256
    act: Annotated[str, one_of(*ACTIVATIONS)] = "relu"
    attn_only: bool = False
    init_std: PositiveFloat = 0.02

    def __post_init__(self) -> None:
        validate(self)


class LayerNormParams(eqx.Module):
    """LayerNorm scale `w` and bias `b`."""

    w: Float[Array, " d_model"]
    b: Float[Array, " d_model"]


class AttentionParams(eqx.Module):
    """Per-head attention weights (TransformerLens shapes)."""

    W_Q: Float[Array, "head d_model d_head"]
    W_K: Float[Array, "head d_model d_head"]
    W_V: Float[Array, "head d_model d_head"]
    b_Q: Float[Array, "head d_head"]
    b_K: Float[Array, "head d_head"]
    b_V: Float[Array, "head d_head"]
    W_O: Float[Array, "head d_head d_model"]
    b_O: Float[Array, " d_model"]


class MLPParams(eqx.Module):
    """MLP weights: pre = x W_in + b_in, out = act(pre) W_out + b_out."""

    W_in: Float[Array, "d_model d_mlp"]
    b_in: Float[Array, " d_mlp"]
    W_out: Float[Array, "d_mlp d_model"]
    b_out: Float[Array, " d_model"]


class BlockParams(eqx.Module):
    """One pre-LN block; `ln2` and `mlp` are None in attention-only models."""

    ln1: LayerNormParams
    attn: AttentionParams
    ln2: LayerNormParams | None
    mlp: MLPParams | None


class TransformerParams(eqx.Module):
    """All parameters of one transformer; `cfg` is static (part of the pytree structure)."""

    cfg: TransformerConfig = eqx.field(static=True)
    W_E: Float[Array, "d_vocab d_model"]
    W_pos: Float[Array, "n_ctx d_model"]
    blocks: tuple[BlockParams, ...]
    ln_final: LayerNormParams
    W_U: Float[Array, "d_model d_vocab"]
    b_U: Float[Array, " d_vocab"]


def init_transformer(cfg: TransformerConfig, *, key: PRNGKeyArray) -> TransformerParams:
    """GPT-2 initialisation: weights and embeddings ~ N(0, cfg.init_std²), biases 0, LN scales 1.

    `jax.vmap(lambda k: init_transformer(cfg, key=k))(keys)` gives a stack of seeds.
    """
    std = float(cfg.init_std)
    H, D, E, M = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
    n_weights = (cfg.d_vocab + cfg.n_ctx + cfg.d_vocab) * D + cfg.n_layers * (4 * H * D * E + 2 * D * M)
    # one draw sliced into every matrix: a single threefry call compiles far faster than ~6L+3
    noise = std * jax.random.normal(key, (n_weights,), jnp.float32)
    offset = 0

    def normal(*shape: int) -> Array:
        nonlocal offset
        size = int(np.prod(shape))
        out = noise[offset : offset + size].reshape(shape)
        offset += size
        return out

    def zeros(*shape: int) -> Array:
        return jnp.zeros(shape, jnp.float32)

    def layer_norm() -> LayerNormParams:
        return LayerNormParams(w=jnp.ones(cfg.d_model, jnp.float32), b=zeros(cfg.d_model))

    W_E, W_pos, W_U = normal(cfg.d_vocab, D), normal(cfg.n_ctx, D), normal(D, cfg.d_vocab)
    blocks = []
    for _ in range(cfg.n_layers):
        attn = AttentionParams(
            W_Q=normal(H, D, E), W_K=normal(H, D, E), W_V=normal(H, D, E),
            b_Q=zeros(H, E), b_K=zeros(H, E), b_V=zeros(H, E),
            W_O=normal(H, E, D), b_O=zeros(D),
        )
        W_in, W_out = normal(D, M), normal(M, D)  # drawn (and unused) for attn_only too
        if cfg.attn_only:
            blocks.append(BlockParams(ln1=layer_norm(), attn=attn, ln2=None, mlp=None))
        else:
            mlp = MLPParams(W_in=W_in, b_in=zeros(M), W_out=W_out, b_out=zeros(D))
            blocks.append(BlockParams(ln1=layer_norm(), attn=attn, ln2=layer_norm(), mlp=mlp))
    assert offset == n_weights
    return TransformerParams(
        cfg=cfg, W_E=W_E, W_pos=W_pos, blocks=tuple(blocks), ln_final=layer_norm(), W_U=W_U,
        b_U=zeros(cfg.d_vocab),
    )


_BLOCK_NAMES: tuple[str, ...] = (
    "resid_pre", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z", "attn_out",
)
_MLP_NAMES: tuple[str, ...] = ("resid_mid", "mlp.pre", "mlp.post", "mlp_out")


def hook_names(cfg: TransformerConfig) -> tuple[str, ...]:
    """Every hook point of a model of config `cfg`, in the order the forward pass visits them."""
    names = ["embed", "pos_embed"]
    for i in range(cfg.n_layers):
        block = _BLOCK_NAMES + (() if cfg.attn_only else _MLP_NAMES) + ("resid_post",)
        names += [f"blocks.{i}.{n}" for n in block]
    names.append("ln_final.out")
    return tuple(names)


def hook_shapes(cfg: TransformerConfig, batch: int, pos: int) -> dict[str, tuple[int, ...]]:
    """Shape of every hook point's activation for a (batch, pos) batch of tokens."""
    heads = (batch, pos, cfg.n_heads, cfg.d_head)
    by_suffix = {
        "attn.q": heads, "attn.k": heads, "attn.v": heads, "attn.z": heads,
        "attn.scores": (batch, cfg.n_heads, pos, pos), "attn.pattern": (batch, cfg.n_heads, pos, pos),
        "mlp.pre": (batch, pos, cfg.d_mlp), "mlp.post": (batch, pos, cfg.d_mlp),
    }
    out = {}
    for name in hook_names(cfg):
        suffix = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        out[name] = by_suffix.get(suffix, (batch, pos, cfg.d_model))
    return out


_TL_RENAMES = {"attn.attn_scores": "attn.scores", "ln_final.normalized": "ln_final.out"}


def canonical_name(name: str) -> str:
    """The short hook name of a TransformerLens spelling (`blocks.0.attn.hook_pattern` ->
    `blocks.0.attn.pattern`); short names are returned unchanged."""
    parts = name.split(".")
    if parts[-1].startswith("hook_"):
        parts[-1] = parts[-1][len("hook_"):]
    out = ".".join(parts)
    for old, new in _TL_RENAMES.items():
        if out.endswith(old):
            out = out[: -len(old)] + new
    return out


def _check_names(cfg: TransformerConfig, names: Sequence[str], what: str) -> list[str]:
    valid = hook_names(cfg)
    out = []
    for name in names:
        short = canonical_name(name)
        if short not in valid:
            close = difflib.get_close_matches(short, valid, n=3)
            hint = f"; did you mean {close}?" if close else f"; valid names: {valid}"
            raise ValueError(f"unknown {what} name {name!r} for this model{hint}")
        out.append(short)
    return out


def _layer_norm(ln: LayerNormParams, x: Array) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * ln.w[None, None, :] + ln.b[None, None, :]


def _act(name: str, x: Array) -> Array:
    return jax.nn.relu(x) if name == "relu" else jax.nn.gelu(x, approximate=True)


def forward(
    params: TransformerParams,
    tokens: Int[Array | np.ndarray, "batch pos"],
    hooks: Mapping[str, Hook] | None = None,
    *,
    cache_names: Sequence[str] | None = None,
) -> tuple[Float[Array, "batch pos d_vocab"], dict[str, Array]]:
    """Logits of every position and the cache of hook-point activations.

    Args:
        params: one model (vmap over a stack of them at the call site).
        tokens: int (batch, pos), pos ≤ n_ctx.
        hooks: hook-point name -> callable applied to that activation (see the module table).
        cache_names: record only these hook points (None: all of them).

    Returns:
        logits (batch, pos, d_vocab) and the cache, a dict name -> hooked activation.
    """
    cfg = params.cfg
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    n_pos = tokens.shape[1]
    if n_pos > cfg.n_ctx:
        raise ValueError(f"sequence length {n_pos} exceeds n_ctx={cfg.n_ctx}")
    hooks = dict(zip(_check_names(cfg, list(hooks or {}), "hook"), (hooks or {}).values(), strict=True))
    record = set(hook_names(cfg) if cache_names is None else _check_names(cfg, cache_names, "cache"))
    cache: dict[str, Array] = {}

    def hook(name: str, x: Array) -> Array:
        if name in hooks:
            x = hooks[name](x)
        if name in record:
            cache[name] = x
        return x

    pos_embed = jnp.broadcast_to(params.W_pos[None, :n_pos, :], (tokens.shape[0], n_pos, cfg.d_model))
    resid = hook("embed", params.W_E[tokens]) + hook("pos_embed", pos_embed)
    causal = jnp.tril(jnp.ones((n_pos, n_pos), bool))[None, None, :, :]
    for i, block in enumerate(params.blocks):
        p = f"blocks.{i}."
        resid = hook(p + "resid_pre", resid)
        a = block.attn
        x = _layer_norm(block.ln1, resid)
        q = hook(p + "attn.q", jnp.einsum("bpd,hde->bphe", x, a.W_Q) + a.b_Q[None, None, :, :])
        k = hook(p + "attn.k", jnp.einsum("bpd,hde->bphe", x, a.W_K) + a.b_K[None, None, :, :])
        v = hook(p + "attn.v", jnp.einsum("bpd,hde->bphe", x, a.W_V) + a.b_V[None, None, :, :])
        scores = hook(p + "attn.scores", jnp.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(cfg.d_head))
        pattern = hook(p + "attn.pattern", jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1))
        z = hook(p + "attn.z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v))
        attn_out = hook(p + "attn_out", jnp.einsum("bqhe,hed->bqd", z, a.W_O) + a.b_O[None, None, :])
        if block.mlp is None or block.ln2 is None:
            resid = hook(p + "resid_post", resid + attn_out)
            continue
        resid = hook(p + "resid_mid", resid + attn_out)
        m = block.mlp
        pre = hook(p + "mlp.pre", _layer_norm(block.ln2, resid) @ m.W_in + m.b_in[None, None, :])
        post = hook(p + "mlp.post", _act(cfg.act, pre))
        mlp_out = hook(p + "mlp_out", post @ m.W_out + m.b_out[None, None, :])
        resid = hook(p + "resid_post", resid + mlp_out)
    final = hook("ln_final.out", _layer_norm(params.ln_final, resid))
    logits = final @ params.W_U + params.b_U[None, None, :]
    return logits, cache


def per_token_loss(
    params: TransformerParams,
    tokens: Int[Array | np.ndarray, "batch pos"],
    hooks: Mapping[str, Hook] | None = None,
) -> Float[Array, "batch pos_minus_1"]:
    """Cross-entropy of predicting tokens[:, t+1] from tokens[:, ≤ t], shape (batch, pos − 1)."""
    tokens = jnp.asarray(tokens)
    logits, _ = forward(params, tokens, hooks, cache_names=())
    logp = jax.nn.log_softmax(logits[:, :-1, :], axis=-1)
    target = tokens[:, 1:, None].astype(jnp.int32)
    return -jnp.take_along_axis(logp, target, axis=-1)[:, :, 0]


def next_token_loss(
    params: TransformerParams,
    tokens: Int[Array | np.ndarray, "batch pos"],
    hooks: Mapping[str, Hook] | None = None,
) -> Scalar:
    """Mean next-token cross-entropy (nats) over the batch and the pos − 1 predicted positions."""
    return jnp.mean(per_token_loss(params, tokens, hooks))


@eqx.filter_jit
def _generate_buffer(
    params: TransformerParams,
    buffer: Array,
    start: Array,
    stop: Array,
    hooks: Mapping[str, Hook],
    key: Array | None,
    temperature: Array,
) -> Array:
    def body(t: Array, buf: Array) -> Array:
        logits, _ = forward(params, buf, hooks, cache_names=())
        last = jax.lax.dynamic_index_in_dim(logits, t - 1, axis=1, keepdims=False)
        if key is None:
            nxt = jnp.argmax(last, axis=-1)
        else:
            nxt = jax.random.categorical(jax.random.fold_in(key, t), last / temperature, axis=-1)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(buf.dtype)[:, None], t, axis=1)

    return jax.lax.fori_loop(start, stop, body, buffer)


def generate(
    params: TransformerParams,
    prompt_tokens: Int[Array | np.ndarray, "batch n_prompt"],
    n_new: int,
    hooks: Mapping[str, Hook] | None = None,
    *,
    key: PRNGKeyArray | None = None,
    temperature: float | int = 1.0,
) -> Int[Array, "batch n_total"]:
    """Continue each prompt by `n_new` tokens, greedily (`key=None`) or by sampling at `temperature`.

    The sequences live in a fixed (batch, n_ctx) buffer and every step runs the full causal
    forward on it (positions past the current one are ignored by the mask), inside one
    `lax.fori_loop` whose bounds are traced: all prompt lengths and `n_new` share one compiled
    program per batch size. Hooks are active at every step and see activations with
    pos = n_ctx. Returns int32 (batch, n_prompt + n_new); requires n_prompt + n_new ≤ n_ctx.
    """
    cfg = params.cfg
    prompt = jnp.asarray(prompt_tokens).astype(jnp.int32)
    batch, n_prompt = prompt.shape
    if n_prompt < 1 or n_new < 0 or n_prompt + n_new > cfg.n_ctx:
        raise ValueError(f"need 1 <= n_prompt and n_prompt + n_new <= n_ctx={cfg.n_ctx}, "
                         f"got n_prompt={n_prompt}, n_new={n_new}")
    hooks = dict(hooks or {})
    _check_names(cfg, list(hooks), "hook")
    buffer = jnp.zeros((batch, cfg.n_ctx), jnp.int32).at[:, :n_prompt].set(prompt)
    out = _generate_buffer(
        params, buffer, jnp.asarray(n_prompt, jnp.int32), jnp.asarray(n_prompt + n_new, jnp.int32),
        hooks, key, jnp.asarray(temperature, jnp.float32),
    )
    return out[:, : n_prompt + n_new]
