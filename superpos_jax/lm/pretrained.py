"""GPT-2-family checkpoints: Hugging Face directories and TransformerLens state dicts.

    load_hf_gpt2(directory) -> TransformerParams        config.json + model.safetensors (no torch)
    save_hf_gpt2(params, directory)                      loadable by GPT2LMHeadModel.from_pretrained
    from_tl_state_dict(state_dict, cfg) -> TransformerParams
    to_tl_state_dict(params) -> {TransformerLens name: numpy array}

Hugging Face's GPT-2 stores its linear maps as `Conv1D` weights of shape (in, out), applied as
x W + b. Per block `h.{i}`: `attn.c_attn` (d_model, 3·d_model) is [W_Q | W_K | W_V] with the
heads side by side in each third, so W_Q of head h is the columns h·d_head … (h+1)·d_head of
the first third; `attn.c_proj` (d_model, d_model) has the heads' z concatenated as rows, giving
W_O (n_heads, d_head, d_model); `mlp.c_fc` is W_in and `mlp.c_proj` is W_out; `ln_1`, `ln_2`,
`ln_f` are LN₁, LN₂, LN_final; `wte` is W_E and `wpe` is W_pos. The unembedding is `lm_head`
(no bias, so b_U = 0), tied to `wte` unless `tie_word_embeddings` is false. Tensor names may
carry the `transformer.` prefix (GPT2LMHeadModel) or not (GPT2Model, the hub's `gpt2`); the
causal-mask buffers of older files (`attn.bias`, `attn.masked_bias`) are ignored. A checkpoint
sharded by `model.safetensors.index.json` is read shard by shard; other dtypes (F16, BF16) are
converted to float32.

Settings `TransformerConfig` cannot represent are refused with a `CheckpointError` (a
`ValueError`) naming the field: an activation other than gelu_new / gelu_pytorch_tanh / gelu_fast
(→ "gelu"), gelu (→ "gelu_exact") or relu; `scale_attn_by_inverse_layer_idx`,
`add_cross_attention`, `scale_attn_weights = false`. `reorder_and_upcast_attn` is accepted: it
only changes the order and precision of the same products, and the forward runs in float32.

TransformerLens names are those of `HookedTransformer.state_dict()` for normalization_type "LN",
positional_embedding_type "standard": `embed.W_E`, `pos_embed.W_pos`, `blocks.{i}.ln1.w`,
`blocks.{i}.attn.W_Q`, ..., `blocks.{i}.mlp.W_in`, ..., `ln_final.w`, `unembed.W_U`,
`unembed.b_U`, with our shapes (they are TransformerLens's). Its buffers `attn.mask` and
`attn.IGNORE` are ignored. `HookedTransformer.from_pretrained` folds the LayerNorm weights by
default (fold_ln, normalization_type "LNPre": no `ln*.w/b`) and centres the writing weights and
the unembedding; a state dict without any LayerNorm weights loads with w = 1, b = 0, which is
that model exactly, and the centred weights are ordinary weights. `config_from_tl` reads a
`HookedTransformerConfig` (or its dict) and refuses what it cannot represent.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from superpos_jax.config import ConfigError
from superpos_jax.interop import bounded_json
from superpos_jax.interop.safetensors import load_file, save_file, write_atomic
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams, init_transformer

__all__ = [
    "CheckpointError",
    "config_from_hf",
    "config_from_tl",
    "from_tl_state_dict",
    "hf_config",
    "load_hf_gpt2",
    "save_hf_gpt2",
    "tl_param_names",
    "to_tl_state_dict",
]

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
_MAX_JSON_BYTES = 10_000_000
_GPT2_EOS = 50256

_HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                   "gelu": "gelu_exact", "relu": "relu"}
_TL_ACTIVATIONS = _HF_ACTIVATIONS
_TO_HF_ACTIVATION = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}
_TOP_LEVEL = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
_LN_NAME = re.compile(r"(blocks\.\d+\.ln[12]|ln_final)\.[wb]")
_TL_BUFFER = re.compile(r"blocks\.\d+\.attn\.(mask|IGNORE)")


class CheckpointError(ValueError):
    """A checkpoint (or its config) that this model cannot represent or that is malformed."""


# --------------------------------------------------------------------------------------------
# TransformerLens state dicts
# --------------------------------------------------------------------------------------------


def _tl_name(path: tuple[Any, ...]) -> str:
    name = jax.tree_util.keystr(path, simple=True, separator=".")
    return _TOP_LEVEL.get(name, name)


def tl_param_names(params: TransformerParams) -> list[str]:
    """The TransformerLens state-dict name of every array leaf of `params`, in
    `jax.tree.leaves` order (`params` may be a `jax.eval_shape` template)."""
    return [_tl_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def to_tl_state_dict(params: TransformerParams) -> dict[str, np.ndarray]:
    """Every parameter as a numpy array under its TransformerLens name (`embed.W_E`,
    `blocks.0.attn.W_Q` (n_heads, d_model, d_head), ..., `unembed.b_U`); load it into a
    `HookedTransformer` of the same config with `load_state_dict({k: torch.from_numpy(v)},
    strict=False)` (only the attention buffers are then missing)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return {_tl_name(path): np.asarray(leaf) for path, leaf in leaves}


def from_tl_state_dict(state_dict: Mapping[str, Any], cfg: TransformerConfig) -> TransformerParams:
    """The model of config `cfg` holding the arrays of a TransformerLens state dict.

    Args:
        state_dict: TransformerLens name -> array (numpy, or anything `np.asarray` reads: a CPU
            torch tensor); float dtypes, converted to float32. The buffers `attn.mask` and
            `attn.IGNORE` are ignored; with no LayerNorm weight at all (a folded, "LNPre"
            model) every LayerNorm gets w = 1, b = 0.
        cfg: the model's config (`config_from_tl` builds it from a `HookedTransformerConfig`).

    Raises `CheckpointError` naming a missing, unexpected, misshapen or non-float tensor.
    """
    given = {k: v for k, v in state_dict.items() if not _TL_BUFFER.fullmatch(k)}
    return _assemble(given, cfg, "TransformerLens state dict", allow_lnpre=True)


def _assemble(
    tensors: Mapping[str, Any], cfg: TransformerConfig, where: str, *, allow_lnpre: bool
) -> TransformerParams:
    template = jax.eval_shape(lambda: init_transformer(cfg, key=jax.random.key(0)))
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_tl_name(path) for path, _ in paths]
    if extra := sorted(set(tensors) - set(names)):
        raise CheckpointError(f"{where}: unexpected tensor(s) {extra[:5]} for a model of {cfg}")
    lnpre = allow_lnpre and not any(n in tensors for n in names if _LN_NAME.fullmatch(n))
    leaves = []
    for name, (_, spec) in zip(names, paths, strict=True):
        if name not in tensors and lnpre and _LN_NAME.fullmatch(name):
            leaves.append(jnp.full(spec.shape, 1.0 if name.endswith(".w") else 0.0, jnp.float32))
            continue
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor {name!r} is missing")
        array = np.asarray(tensors[name])
        if array.shape != spec.shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {array.shape}, expected {spec.shape}")
        if not (np.issubdtype(array.dtype, np.floating) or array.dtype == jnp.bfloat16):
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {array.dtype}; must be a float dtype")
        leaves.append(jnp.asarray(array.astype(np.float32)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _get(tl_cfg: Mapping[str, Any] | Any, name: str, default: Any = None) -> Any:
    if isinstance(tl_cfg, Mapping):
        return tl_cfg.get(name, default)
    return getattr(tl_cfg, name, default)


_TL_MUST = {  # field -> (test, what it must be); fields absent from the config are TL's defaults
    "positional_embedding_type": (lambda v: v == "standard", "'standard'"),
    "normalization_type": (lambda v: v in ("LN", "LNPre"), "'LN' or 'LNPre'"),
    "attention_dir": (lambda v: v == "causal", "'causal'"),
    "use_attn_scale": (lambda v: v is True, "true"),
    **{flag: (lambda v: not v, "false") for flag in (
        "gated_mlp", "final_rms", "scale_attn_by_inverse_layer_idx", "parallel_attn_mlp", "use_local_attn",
        "post_embedding_ln", "use_normalization_before_and_after", "use_qk_norm", "use_logn_attn",
        "use_attention_sinks", "load_in_4bit")},
    **{field: (lambda v: v is None, "None") for field in ("n_key_value_heads", "clip_qkv", "num_experts")},
    **{cap: (lambda v: v is None or v <= 0, "off (<= 0)")
       for cap in ("attn_scores_soft_cap", "output_logits_soft_cap")},
}


def config_from_tl(tl_cfg: Mapping[str, Any] | Any) -> TransformerConfig:
    """The `TransformerConfig` of a TransformerLens `HookedTransformerConfig` (or its `to_dict()`).

    Refuses, with a `CheckpointError` naming the field, what this model does not have: rotary or
    other positional embeddings, RMS norms, gated or mixture-of-experts MLPs, grouped-query or
    local attention, parallel attention/MLP, soft caps, attention scaled other than by
    1/√d_head, d_vocab_out ≠ d_vocab, an act_fn other than gelu_new / gelu_pytorch_tanh /
    gelu_fast / gelu / relu.
    """
    for field, (ok, allowed) in _TL_MUST.items():
        value = _get(tl_cfg, field)
        if value is not None and not ok(value):
            raise CheckpointError(f"TransformerLens config: field {field!r} = {value!r} is not supported: "
                                  f"must be {allowed}")
    sizes = {f: _get(tl_cfg, f) for f in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab")}
    attn_only = bool(_get(tl_cfg, "attn_only", False))
    if attn_only and (sizes["d_mlp"] is None or sizes["d_mlp"] <= 0):
        sizes["d_mlp"] = 1
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise CheckpointError(f"TransformerLens config: field {field!r} = {value!r} must be a positive integer")
    act = _get(tl_cfg, "act_fn")
    if not attn_only and act not in _TL_ACTIVATIONS:
        raise CheckpointError(f"TransformerLens config: field 'act_fn' = {act!r} is not supported: "
                              f"must be one of {sorted(_TL_ACTIVATIONS)}")
    scale = _get(tl_cfg, "attn_scale")
    if scale is not None and not math.isclose(float(scale), math.sqrt(sizes["d_head"]), rel_tol=1e-6):
        raise CheckpointError(f"TransformerLens config: field 'attn_scale' = {scale!r} is not supported: "
                              f"must be √d_head = {math.sqrt(sizes['d_head'])}")
    d_vocab_out = _get(tl_cfg, "d_vocab_out", -1)
    if d_vocab_out not in (-1, None, sizes["d_vocab"]):
        raise CheckpointError(f"TransformerLens config: field 'd_vocab_out' = {d_vocab_out!r} is not supported: "
                              f"must equal d_vocab = {sizes['d_vocab']}")
    init_range = _get(tl_cfg, "initializer_range")
    try:
        return TransformerConfig(
            **{k: int(v) for k, v in sizes.items()}, act=_TL_ACTIVATIONS.get(act, "gelu"), attn_only=attn_only,
            init_std=float(init_range) if init_range is not None and init_range > 0 else 0.02,
            ln_eps=float(_get(tl_cfg, "eps", 1e-5)), tied_unembed=bool(_get(tl_cfg, "tie_word_embeddings", False)),
        )
    except ConfigError as e:
        raise CheckpointError(f"TransformerLens config: {e}") from None


# --------------------------------------------------------------------------------------------
# Hugging Face GPT-2
# --------------------------------------------------------------------------------------------


def config_from_hf(raw: Mapping[str, Any], source: str = HF_CONFIG) -> TransformerConfig:
    """The `TransformerConfig` of a Hugging Face GPT-2 `config.json` (already parsed); fields
    absent take `GPT2Config`'s defaults. Dropout settings are ignored (this model has none)."""

    def fail(field: str, why: str) -> CheckpointError:
        value = bounded_json.short(raw.get(field))
        return CheckpointError(f"{source}: field {field!r} = {value} is not supported: {why}")

    if raw.get("model_type") != "gpt2":
        raise fail("model_type", "must be 'gpt2'")
    sizes = {}
    for field in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        value = raw.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(field, "must be a positive integer")
        sizes[field] = value
    n_inner = raw.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or not isinstance(n_inner, int) or n_inner < 1):
        raise fail("n_inner", "must be null or a positive integer")
    if sizes["n_embd"] % sizes["n_head"]:
        raise fail("n_head", f"must divide n_embd = {sizes['n_embd']}")
    act = raw.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise fail("activation_function", f"must be one of {sorted(_HF_ACTIVATIONS)}")
    for field, default, must in (("scale_attn_weights", True, True), ("scale_attn_by_inverse_layer_idx", False, False),
                                 ("add_cross_attention", False, False)):
        if raw.get(field, default) is not must:
            raise fail(field, f"must be {str(must).lower()}")
    eps, init = raw.get("layer_norm_epsilon", 1e-5), raw.get("initializer_range", 0.02)
    for field, value in (("layer_norm_epsilon", eps), ("initializer_range", init)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise fail(field, "must be a positive number")
    tied = raw.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        raise fail("tie_word_embeddings", "must be true or false")
    try:
        return TransformerConfig(
            n_layers=sizes["n_layer"], d_model=sizes["n_embd"], n_heads=sizes["n_head"],
            d_head=sizes["n_embd"] // sizes["n_head"], d_mlp=n_inner or 4 * sizes["n_embd"],
            n_ctx=sizes["n_positions"], d_vocab=sizes["vocab_size"], act=_HF_ACTIVATIONS[act],
            init_std=float(init), ln_eps=float(eps), tied_unembed=tied,
        )
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def hf_config(params: TransformerParams) -> dict[str, Any]:
    """The Hugging Face GPT-2 `config.json` of `params` (what `save_hf_gpt2` writes).

    Raises `CheckpointError` for a model GPT-2 cannot express: attention-only, n_heads·d_head ≠
    d_model, or a nonzero b_U (GPT-2's lm_head has no bias).
    """
    cfg = params.cfg
    if cfg.attn_only:
        raise CheckpointError("cannot export an attention-only model as GPT-2 (every GPT-2 block has an MLP)")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        raise CheckpointError(f"cannot export as GPT-2: n_heads * d_head = {cfg.n_heads * cfg.d_head} must equal "
                              f"d_model = {cfg.d_model}")
    if np.any(np.asarray(params.b_U) != 0):
        raise CheckpointError("cannot export as GPT-2: b_U is nonzero, and GPT-2's lm_head has no bias")
    eos = _GPT2_EOS if cfg.d_vocab > _GPT2_EOS else None
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.d_vocab, "n_positions": cfg.n_ctx, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads, "n_inner": cfg.d_mlp, "activation_function": _TO_HF_ACTIVATION[cfg.act],
        "layer_norm_epsilon": cfg.ln_eps, "initializer_range": cfg.init_std,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": _tied(params), "use_cache": True,
        "bos_token_id": eos, "eos_token_id": eos, "dtype": "float32",
    }


def _tied(params: TransformerParams) -> bool:
    return params.cfg.tied_unembed and np.array_equal(np.asarray(params.W_U), np.asarray(params.W_E).T)


def _read_json(path: Path) -> Any:
    return bounded_json.read(path, error=CheckpointError, max_bytes=_MAX_JSON_BYTES, max_depth=16)


def _read_tensors(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    if (directory / HF_WEIGHTS).is_file():
        return load_file(directory / HF_WEIGHTS), directory / HF_WEIGHTS
    if not (directory / HF_INDEX).is_file():
        other = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pth")]
        hint = f" (it holds {other}: convert them to safetensors first)" if other else ""
        raise FileNotFoundError(f"{directory} has no {HF_WEIGHTS} or {HF_INDEX}{hint}")
    index = _read_json(directory / HF_INDEX)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{directory / HF_INDEX}: must hold a 'weight_map' of tensor name -> shard file")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{directory / HF_INDEX}: shard {shard!r} is not a file name in {directory}")
        tensors.update(load_file(directory / shard))
    return tensors, directory / HF_INDEX


def _hf_to_tl(tensors: dict[str, np.ndarray], cfg: TransformerConfig, where: Path) -> dict[str, np.ndarray]:
    """Hugging Face GPT-2 tensors -> TransformerLens names and shapes."""
    rest = {}
    for name, value in tensors.items():
        short = name.removeprefix("transformer.")
        if short in rest:
            raise CheckpointError(f"{where}: tensor {short!r} appears both with and without the 'transformer.' prefix")
        rest[short] = value
    D, H, E, M, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in rest:
            raise CheckpointError(f"{where}: tensor {name!r} is missing (for the model in {HF_CONFIG})")
        value = rest.pop(name)
        if value.shape != shape:
            raise CheckpointError(f"{where}: tensor {name!r} has shape {value.shape}, expected {shape} "
                                  f"(from {HF_CONFIG})")
        if not (np.issubdtype(value.dtype, np.floating) or value.dtype == jnp.bfloat16):
            raise CheckpointError(f"{where}: tensor {name!r} has dtype {value.dtype}; must be a float dtype")
        return value.astype(np.float32)

    out = {"embed.W_E": take("wte.weight", (V, D)), "pos_embed.W_pos": take("wpe.weight", (cfg.n_ctx, D))}
    for i in range(cfg.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for buffer in ("attn.bias", "attn.masked_bias"):
            rest.pop(h + buffer, None)
        out[b + "ln1.w"], out[b + "ln1.b"] = take(h + "ln_1.weight", (D,)), take(h + "ln_1.bias", (D,))
        w, bias = take(h + "attn.c_attn.weight", (D, 3 * D)), take(h + "attn.c_attn.bias", (3 * D,))
        for j, x in enumerate("QKV"):
            out[b + f"attn.W_{x}"] = w[:, j * D : (j + 1) * D].reshape(D, H, E).transpose(1, 0, 2)
            out[b + f"attn.b_{x}"] = bias[j * D : (j + 1) * D].reshape(H, E)
        out[b + "attn.W_O"] = take(h + "attn.c_proj.weight", (D, D)).reshape(H, E, D)
        out[b + "attn.b_O"] = take(h + "attn.c_proj.bias", (D,))
        out[b + "ln2.w"], out[b + "ln2.b"] = take(h + "ln_2.weight", (D,)), take(h + "ln_2.bias", (D,))
        out[b + "mlp.W_in"], out[b + "mlp.b_in"] = take(h + "mlp.c_fc.weight", (D, M)), take(h + "mlp.c_fc.bias", (M,))
        out[b + "mlp.W_out"] = take(h + "mlp.c_proj.weight", (M, D))
        out[b + "mlp.b_out"] = take(h + "mlp.c_proj.bias", (D,))
    out["ln_final.w"], out["ln_final.b"] = take("ln_f.weight", (D,)), take("ln_f.bias", (D,))
    if cfg.tied_unembed:
        rest.pop("lm_head.weight", None)  # as transformers does: tied means lm_head is wte
        out["unembed.W_U"] = out["embed.W_E"].T
    else:
        out["unembed.W_U"] = take("lm_head.weight", (V, D)).T
    out["unembed.b_U"] = np.zeros(V, np.float32)
    if rest:
        raise CheckpointError(f"{where}: unexpected tensor(s) {sorted(rest)[:5]} for the GPT-2 model in {HF_CONFIG}")
    return out


def load_hf_gpt2(directory: str | os.PathLike[str]) -> TransformerParams:
    """The GPT-2 model of a Hugging Face checkpoint directory (`save_pretrained` of a
    `GPT2LMHeadModel` or `GPT2Model` with safetensors), read with numpy alone.

    Returns float32 params with `cfg.act = "gelu"` (for gelu_new), `cfg.tied_unembed` from
    `tie_word_embeddings` (W_U = W_Eᵀ then) and b_U = 0; `forward` gives the model's logits.

    Raises `FileNotFoundError` for a missing config.json or weights (a `.bin`-only checkpoint
    included), `CheckpointError` for a config this model cannot represent (naming the field) or
    tensors that do not fit it, `SafetensorsError` for a corrupt weights file.
    """
    directory = Path(directory)
    if not (directory / HF_CONFIG).is_file():
        raise FileNotFoundError(f"{directory} has no {HF_CONFIG} (not a Hugging Face checkpoint)")
    raw = _read_json(directory / HF_CONFIG)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{directory / HF_CONFIG}: must hold a JSON object")
    cfg = config_from_hf(raw, os.fspath(directory / HF_CONFIG))
    tensors, where = _read_tensors(directory)
    return _assemble(_hf_to_tl(tensors, cfg, where), cfg, os.fspath(where), allow_lnpre=False)


def save_hf_gpt2(params: TransformerParams, directory: str | os.PathLike[str]) -> Path:
    """Write `params` as a Hugging Face GPT-2 checkpoint: `config.json` (`hf_config`) and
    `model.safetensors` under `GPT2LMHeadModel`'s names, loadable by
    `transformers.GPT2LMHeadModel.from_pretrained(directory)`.

    The unembedding is written tied (no `lm_head.weight`) iff `cfg.tied_unembed` and W_U still
    equals W_Eᵀ; otherwise as `lm_head.weight` with `tie_word_embeddings = false`. Dropout is
    written as 0 (this model has none). Raises `CheckpointError` for a model GPT-2 cannot express
    (see `hf_config`). Returns `directory` (created; each file written atomically).
    """
    config = hf_config(params)
    tl = to_tl_state_dict(params)
    cfg = params.cfg
    D = cfg.d_model
    tensors = {"transformer.wte.weight": tl["embed.W_E"], "transformer.wpe.weight": tl["pos_embed.W_pos"]}
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        tensors[h + "ln_1.weight"], tensors[h + "ln_1.bias"] = tl[b + "ln1.w"], tl[b + "ln1.b"]
        tensors[h + "attn.c_attn.weight"] = np.concatenate(
            [tl[b + f"attn.W_{x}"].transpose(1, 0, 2).reshape(D, D) for x in "QKV"], axis=1)
        tensors[h + "attn.c_attn.bias"] = np.concatenate([tl[b + f"attn.b_{x}"].reshape(D) for x in "QKV"])
        tensors[h + "attn.c_proj.weight"] = tl[b + "attn.W_O"].reshape(D, D)
        tensors[h + "attn.c_proj.bias"] = tl[b + "attn.b_O"]
        tensors[h + "ln_2.weight"], tensors[h + "ln_2.bias"] = tl[b + "ln2.w"], tl[b + "ln2.b"]
        tensors[h + "mlp.c_fc.weight"], tensors[h + "mlp.c_fc.bias"] = tl[b + "mlp.W_in"], tl[b + "mlp.b_in"]
        tensors[h + "mlp.c_proj.weight"], tensors[h + "mlp.c_proj.bias"] = tl[b + "mlp.W_out"], tl[b + "mlp.b_out"]
    tensors["transformer.ln_f.weight"], tensors["transformer.ln_f.bias"] = tl["ln_final.w"], tl["ln_final.b"]
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = tl["unembed.W_U"].T
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: np.asarray(v, np.float32) for k, v in tensors.items()}, directory / HF_WEIGHTS,
              metadata={"format": "pt"})
    write_atomic(directory / HF_CONFIG, [json.dumps(config, indent=2).encode()])
    return directory
