"""GPT-2 checkpoints (lm/pretrained.py) against the real libraries: a Hugging Face GPT-2 saved by
transformers, read without torch and written back; a TransformerLens HookedTransformer with the
same weights, every run_with_cache activation answered by our forward under TL's name; hooks."""

import dataclasses
import json
import os
import re
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights  # noqa: E402

from superpos_jax.lm import interventions as iv  # noqa: E402
from superpos_jax.lm.pretrained import (  # noqa: E402
    CheckpointError,
    config_from_tl,
    from_tl_state_dict,
    load_hf_gpt2,
    save_hf_gpt2,
    to_tl_state_dict,
)
from superpos_jax.lm.transformer import canonical_name, forward, hook_names  # noqa: E402

HF_CFG = dict(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=300)
TL_SIZES = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=32, d_vocab=300)
TOKENS = np.random.default_rng(0).integers(0, 300, (3, 20)).astype(np.int32)
ATOL = 1e-4

fwd = jax.jit(forward, static_argnames=("cache_names",))
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def hf_model():
    """A random GPT-2 in eval mode (no dropout); every parameter perturbed so that biases and
    LayerNorm weights are not their 0 / 1 initial values (a swapped bias would show)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**HF_CFG)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf") / "gpt2"
    hf_model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def params(hf_dir):
    return load_hf_gpt2(hf_dir)


def hf_logits(model, tokens=TOKENS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


def tl_model(state_dict, **flags) -> HookedTransformer:
    cfg = HookedTransformerConfig(**TL_SIZES, act_fn="gelu_new", normalization_type="LN",
                                  positional_embedding_type="standard", eps=1e-5, **flags)
    model = HookedTransformer(cfg).eval()
    tensors = {k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and all(k.endswith(("attn.mask", "attn.IGNORE")) for k in missing), (missing, unexpected)
    return model


def assert_close_masked(ours, theirs, name):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs), err_msg=name)
    finite = ~np.isneginf(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-4, atol=ATOL, err_msg=name)


# --------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------


def test_hf_checkpoint_loads_without_torch_and_matches_transformers(hf_model, params):
    cfg = params.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == (
        2, 64, 4, 16, 256, 32, 300)
    assert cfg.act == "gelu" and cfg.tied_unembed and cfg.ln_eps == 1e-5
    np.testing.assert_array_equal(params.W_U, params.W_E.T)
    assert np.all(np.asarray(params.b_U) == 0.0)
    logits, _ = fwd(params, TOKENS, cache_names=())
    np.testing.assert_allclose(logits, hf_logits(hf_model), rtol=1e-4, atol=ATOL)
    # TransformerLens's own HF -> TL conversion gives the same arrays
    theirs = convert_gpt2_weights(hf_model, HookedTransformerConfig(**TL_SIZES, act_fn="gelu_new"))
    ours = to_tl_state_dict(params)
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) == {"unembed.b_U"}
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value.detach().numpy(), err_msg=name)


def test_export_loads_in_transformers_with_the_same_logits(params, tmp_path):
    out = save_hf_gpt2(params, tmp_path / "tied")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    expected = np.asarray(fwd(params, TOKENS, cache_names=())[0])
    np.testing.assert_allclose(hf_logits(reloaded), expected, rtol=1e-4, atol=ATOL)
    again = load_hf_gpt2(out)
    assert again.cfg == params.cfg
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, again, params)))

    # trained apart, W_U is written as lm_head.weight and the tie is dropped
    untied = eqx.tree_at(lambda p: p.W_U, params, params.W_U + 0.05)
    out = save_hf_gpt2(untied, tmp_path / "untied")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    expected = np.asarray(fwd(untied, TOKENS, cache_names=())[0])
    np.testing.assert_allclose(hf_logits(reloaded), expected, rtol=1e-4, atol=ATOL)
    back = load_hf_gpt2(out)
    assert not back.cfg.tied_unembed
    np.testing.assert_array_equal(back.W_U, untied.W_U)


@pytest.mark.parametrize(("field", "value"), [
    ("activation_function", "swish"),
    ("scale_attn_by_inverse_layer_idx", True),
    ("add_cross_attention", True),
    ("scale_attn_weights", False),
    ("model_type", "gpt_neox"),
    ("n_head", 5),
])
def test_hf_configs_we_cannot_represent_are_refused_naming_the_field(hf_dir, tmp_path, field, value):
    raw = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, field: value}))
    shutil.copy(hf_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=field):
        load_hf_gpt2(tmp_path)


def test_hf_weights_that_do_not_fit_and_models_gpt2_cannot_express(hf_dir, params, tmp_path):
    from superpos_jax.interop.safetensors import load_file, save_file

    shutil.copy(hf_dir / "config.json", tmp_path / "config.json")
    tensors = load_file(hf_dir / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "h.1.mlp.c_fc.bias" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="h.1.mlp.c_fc.bias"):
        load_hf_gpt2(tmp_path)
    # GPT2Model's names (no "transformer." prefix) and the old attn.bias buffers load too
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    save_file(bare, tmp_path / "model.safetensors")
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, load_hf_gpt2(tmp_path), params)))
    with pytest.raises(CheckpointError, match="b_U"):
        save_hf_gpt2(eqx.tree_at(lambda p: p.b_U, params, params.b_U + 1.0), tmp_path / "x")


def test_sharded_checkpoint_loads(hf_model, params, tmp_path):
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, load_hf_gpt2(tmp_path), params)))


# --------------------------------------------------------------------------------------------
# TransformerLens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [
    {},
    {"use_attn_result": True, "use_split_qkv_input": True, "use_hook_mlp_in": True},
    {"use_attn_in": True},
], ids=["default", "result_split_mlp_in", "attn_in"])
def test_every_run_with_cache_key_is_answered_under_its_name(params, flags):
    model = tl_model(to_tl_state_dict(params), **flags)
    cfg = config_from_tl(model.cfg)
    assert cfg == dataclasses.replace(params.cfg, init_std=cfg.init_std, tied_unembed=False)
    with torch.no_grad():
        tl_logits, tl_cache = model.run_with_cache(torch.from_numpy(TOKENS.astype(np.int64)))
    names = tuple(tl_cache.keys())
    if not flags:  # the default model's keys are exactly our default hook points
        assert sorted(canonical_name(n) for n in names) == sorted(hook_names(params.cfg))
    logits, cache = fwd(params, TOKENS, cache_names=names)
    assert set(cache) == set(names)
    for name in names:
        assert_close_masked(cache[name], tl_cache[name].numpy(), name)
    np.testing.assert_allclose(logits, tl_logits.numpy(), rtol=1e-4, atol=ATOL)
    back = from_tl_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, cfg)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_hooks_on_gpt2_match_run_with_hooks(params):
    model = tl_model(to_tl_state_dict(params))
    head = 2

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    tl_hooks = [
        ("blocks.0.hook_mlp_out", lambda x, hook: torch.zeros_like(x)),
        ("blocks.1.attn.hook_z", zero_head),
        ("blocks.1.attn.hook_attn_scores", lambda x, hook: 0.5 * x),  # keeps −inf where masked
        ("ln_final.hook_scale", lambda x, hook: 2.0 * x),
    ]
    with torch.no_grad():
        expected = model.run_with_hooks(torch.from_numpy(TOKENS.astype(np.int64)), fwd_hooks=tl_hooks).numpy()

    @jax.jit
    def hooked(p, t):
        hooks = {
            "blocks.0.hook_mlp_out": iv.ZeroAblate(),
            "blocks.1.attn.hook_z": iv.ZeroAblate(iv.head_mask(p.cfg.n_heads, [head])),
            "blocks.1.attn.hook_attn_scores": lambda x: 0.5 * x,
            "ln_final.hook_scale": lambda x: 2.0 * x,
        }
        return forward(p, t, hooks, cache_names=())[0]

    logits = np.asarray(hooked(params, TOKENS))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=ATOL)
    assert not np.allclose(logits, np.asarray(fwd(params, TOKENS, cache_names=())[0]), atol=1e-2)


def test_folded_transformer_lens_state_dict_loads(params):
    """from_pretrained's default processing (fold_ln, center_writing_weights, center_unembed):
    an LNPre model with no LayerNorm weights, the same log-probabilities."""
    model = tl_model(to_tl_state_dict(params))
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert model.cfg.normalization_type == "LNPre"
    cfg = config_from_tl(model.cfg)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    assert not any(re.search(r"ln(1|2|_final)\.[wb]$", k) for k in state)
    folded = from_tl_state_dict(state, cfg)
    with torch.no_grad():
        tl_logits, tl_cache = model.run_with_cache(torch.from_numpy(TOKENS.astype(np.int64)))
    names = ("blocks.1.ln2.hook_normalized", "blocks.0.attn.hook_pattern", "ln_final.hook_scale")
    logits, cache = fwd(folded, TOKENS, cache_names=names)
    np.testing.assert_allclose(logits, tl_logits.numpy(), rtol=1e-4, atol=ATOL)
    for name in names:
        assert_close_masked(cache[name], tl_cache[name].numpy(), name)
    logp = jax.nn.log_softmax(logits, axis=-1)
    original = jax.nn.log_softmax(fwd(params, TOKENS, cache_names=())[0], axis=-1)
    np.testing.assert_allclose(logp, original, rtol=1e-4, atol=ATOL)


def test_tl_configs_we_cannot_represent_are_refused():
    base = dict(TL_SIZES, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard")
    for field, value in [("positional_embedding_type", "rotary"), ("normalization_type", "RMS"),
                         ("act_fn", "silu"), ("gated_mlp", True), ("n_key_value_heads", 2),
                         ("parallel_attn_mlp", True)]:
        with pytest.raises(CheckpointError, match=field):
            config_from_tl({**base, field: value})
    with pytest.raises(CheckpointError, match="missing"):
        from_tl_state_dict({"embed.W_E": np.zeros((300, 64), np.float32)}, config_from_tl(base))
