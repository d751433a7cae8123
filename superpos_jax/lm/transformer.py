"""A decoder-only transformer (GPT-2 family) whose forward takes hooks and returns a cache.

    forward(params, tokens, hooks={}) -> (logits, cache)

`tokens` is a batch of sequences, int (batch, pos) with pos ≤ n_ctx (one sequence is
`tokens[None]`); the sweep axis (seeds, learning rates) is a `jax.vmap` over `params` at the
call site. The architecture is GPT-2's pre-LayerNorm block (TransformerLens conventions):

    resid_pre  = embed + pos_embed                      (block 0; else the last resid_post)
    attn_out   = Attn(LN₁(resid_pre))                   causal, per-head W_Q W_K W_V W_O
    resid_mid  = resid_pre + attn_out
    mlp_out    = W_out act(W_in LN₂(resid_mid) + b_in) + b_out
    resid_post = resid_mid + mlp_out
    logits     = LN_final(resid_post of the last block) W_U + b_U

    LN(x)      = (x − mean(x)) / scale · w + b,   scale = √(var(x) + ln_eps)

`act` is relu, gelu (the tanh approximation: GPT-2's and TransformerLens's "gelu_new") or
gelu_exact (the erf form: "gelu"). An attention-only model (`attn_only=True`) has no LN₂/MLP:
resid_post = resid_pre + attn_out, and `resid_mid` (which would equal resid_post) is not a hook
point. A real GPT-2 checkpoint is `TransformerConfig(act="gelu", tied_unembed=True, ...)` with
b_U = 0 (`superpos_jax.lm.pretrained` reads and writes Hugging Face and TransformerLens files).

Hook points (`hook_names(cfg)`, shapes in `hook_shapes`), short names with their
TransformerLens (`run_with_cache`) spellings; {i} is the block:

==========================  =================================  =====================================
short name                  TransformerLens name               shape: what
==========================  =================================  =====================================
embed, pos_embed            hook_embed, hook_pos_embed         (batch, pos, d_model): W_E[tokens], W_pos[:pos]
blocks.{i}.resid_pre        blocks.{i}.hook_resid_pre          (batch, pos, d_model): entering block i
blocks.{i}.ln1.scale        blocks.{i}.ln1.hook_scale          (batch, pos, 1): √(var + ln_eps) of LN₁
blocks.{i}.ln1.normalized   blocks.{i}.ln1.hook_normalized     (batch, pos, d_model): (x − mean)/scale, before w, b
blocks.{i}.attn.q/k/v       blocks.{i}.attn.hook_q/k/v         (batch, pos, n_heads, d_head): LN₁(x) W + b
blocks.{i}.attn.scores      blocks.{i}.attn.hook_attn_scores   (batch, n_heads, q_pos, k_pos): q·k/√d_head,
                                                               AFTER the causal mask (−inf where k > q)
blocks.{i}.attn.pattern     blocks.{i}.attn.hook_pattern       (batch, n_heads, q_pos, k_pos): softmax over k
blocks.{i}.attn.z           blocks.{i}.attn.hook_z             (batch, pos, n_heads, d_head): Σ_k pattern · v
blocks.{i}.attn_out         blocks.{i}.hook_attn_out           (batch, pos, d_model): Σ_h z_h W_O,h + b_O
blocks.{i}.resid_mid        blocks.{i}.hook_resid_mid          (batch, pos, d_model)   (not attention-only)
blocks.{i}.ln2.scale        blocks.{i}.ln2.hook_scale          (batch, pos, 1)          (not attention-only)
blocks.{i}.ln2.normalized   blocks.{i}.ln2.hook_normalized     (batch, pos, d_model)    (not attention-only)
blocks.{i}.mlp.pre/post     blocks.{i}.mlp.hook_pre/post       (batch, pos, d_mlp): before / after act
blocks.{i}.mlp_out          blocks.{i}.hook_mlp_out            (batch, pos, d_model)
blocks.{i}.resid_post       blocks.{i}.hook_resid_post         (batch, pos, d_model)
ln_final.scale              ln_final.hook_scale                (batch, pos, 1)
ln_final.normalized         ln_final.hook_normalized           (batch, pos, d_model): before w, b
ln_final.out                unembed.hook_in                    (batch, pos, d_model): LN_final output
unembed.out                 unembed.hook_out                   (batch, pos, d_vocab): the logits
==========================  =================================  =====================================

Optional hook points (`hook_names(cfg, optional=True)`) are computed only when hooked or named in
`cache_names`, never recorded by default; they are the hooks TransformerLens adds under a config
flag (`OPTIONAL_HOOKS` maps each to its flag), with its semantics:

==========================  =================================  =====================================
blocks.{i}.attn.result      blocks.{i}.attn.hook_result        (batch, pos, n_heads, d_model): z_h W_O,h
                                                               per head; attn_out = Σ_h result + b_O
                                                               (use_attn_result)
blocks.{i}.attn_in          blocks.{i}.hook_attn_in            (batch, pos, n_heads, d_model): resid_pre
                                                               copied per head (use_attn_in)
blocks.{i}.q/k/v_input      blocks.{i}.hook_q/k/v_input        (batch, pos, n_heads, d_model): the per-head
                                                               inputs of Q, K, V (use_split_qkv_input)
blocks.{i}.mlp_in           blocks.{i}.hook_mlp_in             (batch, pos, d_model): input of LN₂ (use_hook_mlp_in)
==========================  =================================  =====================================

When any of attn_in, q_input, k_input, v_input is active, LN₁ runs on the per-head copies (its
hooks then have a head axis, (batch, pos, n_heads, ·), and see the query, key, then value input,
the cache keeping the last), as in TransformerLens; attn_in then feeds the three inputs (with both
of TransformerLens's flags set, its q/k/v inputs bypass hook_attn_in).

TransformerLens hooks of other architectures or flags (hook_tokens, rotary hook_rot_q/k,
shortformer attn.hook_attn_input) do not exist here.

Every hook point passes through one helper: `x ← hooks[name](x)` if `name` is hooked, then `x`
(the hooked value, i.e. what the rest of the network sees) is recorded in the cache. Hooks are
any callables `(activation) -> activation`; the interventions of `superpos_jax.lm.interventions`
are `eqx.Module`s, so their arrays are traced and `jit`/`vmap`/`grad` go through them. Hooks and
`cache_names` accept either spelling (short or TransformerLens) and the cache answers each name
in the spelling asked for; `cache_names=None` records every default hook point under its short
name. Unknown names raise a `ValueError` before anything is traced.

Attention scores are hooked after the causal mask, as TransformerLens's hook_attn_scores: masked
entries hold −inf (compare the finite entries). Unlike TransformerLens, the mask is applied again
after the hook, so no hook on scores can break causality (a hook writing finite values above the
diagonal has no effect there).

Initialisation (GPT-2): every weight matrix and embedding ~ N(0, init_std²) with
init_std = 0.02 by default, biases 0, LayerNorm scales 1; with `tied_unembed`, W_U = W_Eᵀ.
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
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_exact")
LN_EPS = 1e-5
"""The default `TransformerConfig.ln_eps` (GPT-2's layer_norm_epsilon)."""

OPTIONAL_HOOKS: Mapping[str, str] = {
    "attn_in": "use_attn_in",
    "q_input": "use_split_qkv_input",
    "k_input": "use_split_qkv_input",
    "v_input": "use_split_qkv_input",
    "attn.result": "use_attn_result",
    "mlp_in": "use_hook_mlp_in",
}
"""Block-level suffix of each optional hook point -> the TransformerLens config flag that adds it."""


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of a transformer (all static: each config is its own compiled program).

    `act` is "relu", "gelu" (the tanh approximation, GPT-2's gelu_new) or "gelu_exact" (erf);
    `attn_only` drops the MLPs; `init_std` is the standard deviation of the GPT-2 initialisation;
    `ln_eps` is the LayerNorm ε. `tied_unembed` records that the unembedding is the embedding's
    transpose (GPT-2): `init_transformer` then sets W_U = W_Eᵀ, and `pretrained.save_hf_gpt2`
    writes one matrix for both while they are still equal. The params always hold W_U as its own
    array (as TransformerLens does), so training unties them.
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
    ln_eps: PositiveFloat = LN_EPS
    tied_unembed: bool = False

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
    """GPT-2 initialisation: weights and embeddings ~ N(0, cfg.init_std²), biases 0, LN scales 1
    (W_U = W_Eᵀ if `cfg.tied_unembed`).

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
        cfg=cfg, W_E=W_E, W_pos=W_pos, blocks=tuple(blocks), ln_final=layer_norm(),
        W_U=W_E.T if cfg.tied_unembed else W_U, b_U=zeros(cfg.d_vocab),
    )


_QKV_INPUTS: tuple[str, ...] = ("q_input", "k_input", "v_input")
_FINAL_NAMES: tuple[str, ...] = ("ln_final.scale", "ln_final.normalized", "ln_final.out", "unembed.out")


def _block_names(cfg: TransformerConfig, optional: bool) -> tuple[str, ...]:
    names = ["resid_pre"]
    names += ["attn_in", *_QKV_INPUTS] if optional else []
    names += ["ln1.scale", "ln1.normalized", "attn.q", "attn.k", "attn.v", "attn.scores", "attn.pattern", "attn.z"]
    names += ["attn.result"] if optional else []
    names.append("attn_out")
    if not cfg.attn_only:
        names.append("resid_mid")
        names += ["mlp_in"] if optional else []
        names += ["ln2.scale", "ln2.normalized", "mlp.pre", "mlp.post", "mlp_out"]
    names.append("resid_post")
    return tuple(names)


def hook_names(cfg: TransformerConfig, *, optional: bool = False) -> tuple[str, ...]:
    """Every hook point of a model of config `cfg` (short names), in the order the forward pass
    visits them; with `optional=True` also the optional ones (`OPTIONAL_HOOKS`)."""
    names = ["embed", "pos_embed"]
    for i in range(cfg.n_layers):
        names += [f"blocks.{i}.{n}" for n in _block_names(cfg, optional)]
    names += _FINAL_NAMES
    return tuple(names)


def hook_shapes(cfg: TransformerConfig, batch: int, pos: int, *, optional: bool = False) -> dict[str, tuple[int, ...]]:
    """Shape of every hook point's activation for a (batch, pos) batch of tokens (LN₁'s hooks
    gain a head axis when a per-head input hook is active; see the module docstring)."""
    heads = (batch, pos, cfg.n_heads, cfg.d_head)
    per_head = (batch, pos, cfg.n_heads, cfg.d_model)
    square = (batch, cfg.n_heads, pos, pos)
    by_suffix = {
        "attn.q": heads, "attn.k": heads, "attn.v": heads, "attn.z": heads,
        "attn.scores": square, "attn.pattern": square,
        "attn.result": per_head, "attn_in": per_head, "q_input": per_head, "k_input": per_head, "v_input": per_head,
        "mlp.pre": (batch, pos, cfg.d_mlp), "mlp.post": (batch, pos, cfg.d_mlp),
        "ln1.scale": (batch, pos, 1), "ln2.scale": (batch, pos, 1), "ln_final.scale": (batch, pos, 1),
        "unembed.out": (batch, pos, cfg.d_vocab),
    }
    out = {}
    for name in hook_names(cfg, optional=optional):
        suffix = name.split(".", 2)[-1] if name.startswith("blocks.") else name
        out[name] = by_suffix.get(suffix, (batch, pos, cfg.d_model))
    return out


def canonical_name(name: str) -> str:
    """The short hook name of a TransformerLens spelling (`blocks.0.attn.hook_pattern` ->
    `blocks.0.attn.pattern`, `blocks.0.attn.hook_attn_scores` -> `blocks.0.attn.scores`,
    `unembed.hook_in` -> `ln_final.out`); short names are returned unchanged."""
    parts = name.split(".")
    if parts[-1].startswith("hook_"):
        parts[-1] = parts[-1][len("hook_"):]
    out = ".".join(parts)
    if out.endswith(".attn.attn_scores"):
        out = out[: -len("attn_scores")] + "scores"
    return "ln_final.out" if out == "unembed.in" else out


def _check_names(cfg: TransformerConfig, names: Sequence[str], what: str) -> list[str]:
    valid = hook_names(cfg, optional=True)
    out = []
    for name in names:
        short = canonical_name(name)
        if short not in valid:
            close = difflib.get_close_matches(short, valid, n=3)
            hint = f"; did you mean {close}?" if close else f"; valid names: {valid}"
            raise ValueError(f"unknown {what} name {name!r} for this model{hint}")
        out.append(short)
    return out


def _resolve_hooks(cfg: TransformerConfig, hooks: Mapping[str, Hook] | None) -> dict[str, Hook]:
    """`hooks` keyed by short names; two spellings of one hook point are refused."""
    out: dict[str, Hook] = {}
    given: dict[str, str] = {}
    for name, short in zip(hooks or {}, _check_names(cfg, list(hooks or {}), "hook"), strict=True):
        if short in out:
            raise ValueError(f"hooks {given[short]!r} and {name!r} name the same hook point {short!r}")
        out[short], given[short] = (hooks or {})[name], name
    return out


def _act(name: str, x: Array) -> Array:
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=name == "gelu")


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
        hooks: hook-point name (short or TransformerLens spelling) -> callable applied to that
            activation (see the module table).
        cache_names: record only these hook points, each under the name as given (either
            spelling; optional hook points allowed). None: every default hook point, under its
            short name.

    Returns:
        logits (batch, pos, d_vocab) and the cache, a dict name -> hooked activation.
    """
    cfg = params.cfg
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    n_batch, n_pos = tokens.shape
    if n_pos > cfg.n_ctx:
        raise ValueError(f"sequence length {n_pos} exceeds n_ctx={cfg.n_ctx}")
    hook_fns = _resolve_hooks(cfg, hooks)
    record: dict[str, list[str]] = {}
    if cache_names is None:
        record = {n: [n] for n in hook_names(cfg)}
    else:
        for name, short in zip(cache_names, _check_names(cfg, list(cache_names), "cache"), strict=True):
            record.setdefault(short, []).append(name)
    cache: dict[str, Array] = {}

    def hook(name: str, x: Array) -> Array:
        if name in hook_fns:
            x = hook_fns[name](x)
        for key in record.get(name, ()):
            cache[key] = x
        return x

    def active(name: str) -> bool:
        return name in hook_fns or name in record

    def layer_norm(ln: LayerNormParams, x: Array, prefix: str) -> Array:
        centred = x - jnp.mean(x, axis=-1, keepdims=True)
        scale = hook(prefix + "scale", jnp.sqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + cfg.ln_eps))
        normalized = hook(prefix + "normalized", centred / scale)
        lead = (1,) * (x.ndim - 1)
        return normalized * ln.w.reshape(lead + (-1,)) + ln.b.reshape(lead + (-1,))

    pos_embed = jnp.broadcast_to(params.W_pos[None, :n_pos, :], (n_batch, n_pos, cfg.d_model))
    resid = hook("embed", params.W_E[tokens]) + hook("pos_embed", pos_embed)
    causal = jnp.tril(jnp.ones((n_pos, n_pos), bool))[None, None, :, :]
    for i, block in enumerate(params.blocks):
        p = f"blocks.{i}."
        resid = hook(p + "resid_pre", resid)
        a = block.attn
        if any(active(p + n) for n in ("attn_in", *_QKV_INPUTS)):
            per_head = jnp.broadcast_to(resid[:, :, None, :], (n_batch, n_pos, cfg.n_heads, cfg.d_model))
            attn_in = hook(p + "attn_in", per_head)
            xq, xk, xv = (layer_norm(block.ln1, hook(p + n, attn_in), p + "ln1.") for n in _QKV_INPUTS)
            project = "bphd,hde->bphe"
        else:
            xq = xk = xv = layer_norm(block.ln1, resid, p + "ln1.")
            project = "bpd,hde->bphe"
        q = hook(p + "attn.q", jnp.einsum(project, xq, a.W_Q) + a.b_Q[None, None, :, :])
        k = hook(p + "attn.k", jnp.einsum(project, xk, a.W_K) + a.b_K[None, None, :, :])
        v = hook(p + "attn.v", jnp.einsum(project, xv, a.W_V) + a.b_V[None, None, :, :])
        raw = jnp.einsum("bqhe,bkhe->bhqk", q, k) / float(np.sqrt(cfg.d_head))
        scores = hook(p + "attn.scores", jnp.where(causal, raw, -jnp.inf))
        pattern = hook(p + "attn.pattern", jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1))
        z = hook(p + "attn.z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v))
        if active(p + "attn.result"):
            result = hook(p + "attn.result", jnp.einsum("bqhe,hed->bqhd", z, a.W_O))
            attn_out = jnp.sum(result, axis=2)
        else:
            attn_out = jnp.einsum("bqhe,hed->bqd", z, a.W_O)
        attn_out = hook(p + "attn_out", attn_out + a.b_O[None, None, :])
        if block.mlp is None or block.ln2 is None:
            resid = hook(p + "resid_post", resid + attn_out)
            continue
        resid = hook(p + "resid_mid", resid + attn_out)
        m = block.mlp
        x = layer_norm(block.ln2, hook(p + "mlp_in", resid), p + "ln2.")
        pre = hook(p + "mlp.pre", x @ m.W_in + m.b_in[None, None, :])
        post = hook(p + "mlp.post", _act(cfg.act, pre))
        mlp_out = hook(p + "mlp_out", post @ m.W_out + m.b_out[None, None, :])
        resid = hook(p + "resid_post", resid + mlp_out)
    final = hook("ln_final.out", layer_norm(params.ln_final, resid, "ln_final."))
    logits = hook("unembed.out", final @ params.W_U + params.b_U[None, None, :])
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
    hooks = _resolve_hooks(cfg, hooks)
    buffer = jnp.zeros((batch, cfg.n_ctx), jnp.int32).at[:, :n_prompt].set(prompt)
    out = _generate_buffer(
        params, buffer, jnp.asarray(n_prompt, jnp.int32), jnp.asarray(n_prompt + n_new, jnp.int32),
        hooks, key, jnp.asarray(temperature, jnp.float32),
    )
    return out[:, : n_prompt + n_new]
