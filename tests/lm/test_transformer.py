"""Tiny transformer with hooks (models/transformer.py) and interventions (interventions.py)."""

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.lm import interventions as iv
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.sae.model import SAE
from superpos_jax.lm.transformer import (
    TransformerConfig,
    TransformerParams,
    canonical_name,
    forward,
    generate,
    hook_names,
    hook_shapes,
    init_transformer,
    next_token_loss,
    per_token_loss,
)

CFG = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=13)
ATTN_ONLY = TransformerConfig(n_layers=2, d_model=16, n_heads=3, d_head=4, d_mlp=1, n_ctx=8, d_vocab=13,
                              attn_only=True)
BATCH, POS = 3, 7

# One compiled program per (config, hook structure): eager op-by-op dispatch compiles every
# primitive separately and is far slower on the shared CPU.
fwd = jax.jit(forward, static_argnames=("cache_names",))
loss_fn = jax.jit(next_token_loss)
init_fn = jax.jit(init_transformer, static_argnums=0)


def random_params(cfg: TransformerConfig, seed: int = 0) -> TransformerParams:
    """Every leaf random (biases and LayerNorm affine included), O(0.3) weights."""
    params = init_fn(cfg, key=jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    new = [jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), jnp.float32) for leaf in leaves]
    params = jax.tree.unflatten(treedef, new)
    ones = lambda ln: eqx.tree_at(lambda l: l.w, ln, ln.w + 1.0)  # noqa: E731
    blocks = tuple(
        eqx.tree_at(lambda b: (b.ln1, b.ln2), b, (ones(b.ln1), None if b.ln2 is None else ones(b.ln2)),
                    is_leaf=lambda x: x is None)
        for b in params.blocks
    )
    return eqx.tree_at(lambda p: (p.blocks, p.ln_final), params, (blocks, ones(params.ln_final)))


def tokens(seed: int = 0, batch: int = BATCH, pos: int = POS, vocab: int = 13) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (batch, pos)), jnp.int32)


# --------------------------------------------------------------------------------------------
# float64 numpy reference with explicit loops over heads and positions
# --------------------------------------------------------------------------------------------


def _np(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _ln(ln, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _np(ln.w) + _np(ln.b)


def reference_forward(params: TransformerParams, toks: np.ndarray) -> np.ndarray:
    cfg = params.cfg
    toks = np.asarray(toks)
    out = []
    for seq in toks:
        n = len(seq)
        resid = _np(params.W_E)[seq] + _np(params.W_pos)[:n]
        for block in params.blocks:
            a = block.attn
            x = _ln(block.ln1, resid, cfg.ln_eps)
            attn_out = np.tile(_np(a.b_O), (n, 1))
            for h in range(cfg.n_heads):
                q = x @ _np(a.W_Q[h]) + _np(a.b_Q[h])
                k = x @ _np(a.W_K[h]) + _np(a.b_K[h])
                v = x @ _np(a.W_V[h]) + _np(a.b_V[h])
                for t in range(n):
                    s = np.array([q[t] @ k[j] for j in range(t + 1)]) / np.sqrt(cfg.d_head)
                    w = np.exp(s - s.max())
                    w /= w.sum()
                    z = sum(w[j] * v[j] for j in range(t + 1))
                    attn_out[t] += z @ _np(a.W_O[h])
            resid = resid + attn_out
            if block.mlp is not None:
                pre = _ln(block.ln2, resid, cfg.ln_eps) @ _np(block.mlp.W_in) + _np(block.mlp.b_in)
                if cfg.act == "relu":
                    post = np.maximum(pre, 0.0)
                elif cfg.act == "gelu_exact":
                    post = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / np.sqrt(2)))
                else:
                    post = 0.5 * pre * (1 + np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre**3)))
                resid = resid + post @ _np(block.mlp.W_out) + _np(block.mlp.b_out)
        out.append(_ln(params.ln_final, resid, cfg.ln_eps) @ _np(params.W_U) + _np(params.b_U))
    return np.stack(out)


GELU = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=13, act="gelu")
GELU_EXACT = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=13,
                               act="gelu_exact", ln_eps=0.5)


@pytest.mark.parametrize("cfg", [CFG, ATTN_ONLY, GELU, GELU_EXACT], ids=["relu", "attn_only", "gelu", "gelu_exact"])
def test_forward_matches_float64_reference(cfg):
    params = random_params(cfg)
    toks = tokens()
    logits, _ = fwd(params, toks)
    np.testing.assert_allclose(np.asarray(logits), reference_forward(params, toks), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# config, names, cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_layers", 0), ("d_model", -1), ("n_heads", 0), ("act", "tanh"), ("init_std", 0.0)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{field: value})


@pytest.mark.parametrize("cfg", [CFG, ATTN_ONLY])
def test_cache_has_every_hook_name_with_its_shape(cfg):
    params = random_params(cfg)
    logits, cache = fwd(params, tokens())
    assert logits.shape == (BATCH, POS, cfg.d_vocab)
    shapes = hook_shapes(cfg, BATCH, POS)
    assert tuple(shapes) == hook_names(cfg)
    assert set(cache) == set(hook_names(cfg))
    for name, shape in shapes.items():
        assert cache[name].shape == shape, name
    if cfg.attn_only:
        assert not any("mlp" in n or "resid_mid" in n for n in hook_names(cfg))
        np.testing.assert_array_equal(cache["blocks.0.resid_post"],
                                      cache["blocks.0.resid_pre"] + cache["blocks.0.attn_out"])
    else:
        assert "blocks.1.mlp.post" in cache and "blocks.1.resid_mid" in cache
    np.testing.assert_allclose(cache["blocks.0.attn.pattern"].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(cache["blocks.1.resid_pre"], cache["blocks.0.resid_post"])


def test_cache_names_subset_aliases_and_unknown_names():
    params = random_params(CFG)
    asked = ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.0.attn.pattern", "unembed.hook_in")
    _, cache = fwd(params, tokens(), cache_names=asked)
    assert set(cache) == set(asked)  # answered in the spelling asked for
    _, short = fwd(params, tokens())
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.pattern"])
    np.testing.assert_allclose(cache["blocks.0.attn.hook_pattern"], short["blocks.0.attn.pattern"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache["unembed.hook_in"], short["ln_final.out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(short["unembed.out"], fwd(params, tokens())[0])
    assert canonical_name("ln_final.hook_normalized") == "ln_final.normalized"
    assert canonical_name("unembed.hook_in") == "ln_final.out"
    assert canonical_name("blocks.3.attn.hook_attn_scores") == "blocks.3.attn.scores"
    assert canonical_name("blocks.3.hook_q_input") == "blocks.3.q_input"
    # optional hook points are valid names but never recorded by default
    assert "blocks.0.attn.result" in hook_names(CFG, optional=True) and "blocks.0.attn.result" not in short
    with pytest.raises(ValueError, match="resid_psot"):
        fwd(params, tokens(), {"blocks.0.resid_psot": iv.ZeroAblate()})
    with pytest.raises(ValueError, match="mlp"):
        fwd(random_params(ATTN_ONLY), tokens(), {"blocks.0.mlp.post": iv.ZeroAblate()})
    with pytest.raises(ValueError, match="same hook point"):
        fwd(params, tokens(), {"blocks.0.hook_mlp_out": iv.ZeroAblate(), "blocks.0.mlp_out": iv.ZeroAblate()})


def test_hooks_take_either_spelling():
    params = random_params(CFG)
    short = fwd(params, tokens(), {"blocks.0.mlp_out": iv.ZeroAblate()}, cache_names=("blocks.0.mlp_out",))
    tl = fwd(params, tokens(), {"blocks.0.hook_mlp_out": iv.ZeroAblate()}, cache_names=("blocks.0.hook_mlp_out",))
    np.testing.assert_array_equal(short[0], tl[0])
    assert np.all(np.asarray(tl[1]["blocks.0.hook_mlp_out"]) == 0.0)


def test_layer_norm_hooks():
    params = random_params(CFG)
    _, cache = fwd(params, tokens())
    resid = np.asarray(cache["blocks.1.resid_mid"], np.float64)
    centred = resid - resid.mean(-1, keepdims=True)
    scale = np.sqrt((centred**2).mean(-1, keepdims=True) + CFG.ln_eps)
    np.testing.assert_allclose(cache["blocks.1.ln2.scale"], scale, rtol=1e-5)
    np.testing.assert_allclose(cache["blocks.1.ln2.normalized"], centred / scale, rtol=1e-4, atol=1e-5)
    ln = params.ln_final
    np.testing.assert_allclose(cache["ln_final.out"], np.asarray(cache["ln_final.normalized"]) * np.asarray(ln.w)
                               + np.asarray(ln.b), rtol=1e-6, atol=1e-6)
    # a hook on the scale acts like TransformerLens's: doubling it halves the normalized input
    _, hooked = jax.jit(lambda p, t: forward(p, t, {"blocks.0.ln1.hook_scale": lambda x: 2.0 * x}))(params, tokens())
    np.testing.assert_allclose(hooked["blocks.0.ln1.normalized"], cache["blocks.0.ln1.normalized"] / 2, rtol=1e-6)


def test_scores_are_masked_and_a_hook_on_them_keeps_causality():
    params = random_params(CFG)
    _, cache = fwd(params, tokens())
    scores = np.asarray(cache["blocks.0.attn.scores"])
    above = np.triu(np.ones((POS, POS), bool), 1)
    assert np.all(scores[..., above] == -np.inf) and np.all(np.isfinite(scores[..., ~above]))
    q, k = np.asarray(cache["blocks.0.attn.q"]), np.asarray(cache["blocks.0.attn.k"])
    raw = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(CFG.d_head)
    np.testing.assert_allclose(scores[..., ~above], raw[..., ~above], rtol=1e-5, atol=1e-5)
    _, hooked = fwd(params, tokens(), {"blocks.0.attn.hook_attn_scores": iv.ZeroAblate()})
    pattern = np.asarray(hooked["blocks.0.attn.pattern"])
    assert np.all(pattern[..., above] == 0.0)
    np.testing.assert_allclose(pattern[0, 0, 3, :4], 0.25, rtol=1e-6)  # uniform over the past only


def test_attn_result_is_the_per_head_output():
    params = random_params(CFG)
    toks = tokens()
    logits, cache = fwd(params, toks, cache_names=("blocks.0.attn.hook_result", "blocks.0.attn_out", "blocks.0.attn.z"))
    result = np.asarray(cache["blocks.0.attn.hook_result"])
    assert result.shape == hook_shapes(CFG, BATCH, POS, optional=True)["blocks.0.attn.result"]
    a = params.blocks[0].attn
    np.testing.assert_allclose(result.sum(2) + np.asarray(a.b_O), cache["blocks.0.attn_out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, fwd(params, toks)[0], rtol=1e-5, atol=1e-5)
    head = iv.head_mask(CFG.n_heads, [1])
    by_result = fwd(params, toks, {"blocks.0.attn.result": iv.ZeroAblate(head)})[0]
    by_z = fwd(params, toks, {"blocks.0.attn.z": iv.ZeroAblate(head)})[0]
    np.testing.assert_allclose(by_result, by_z, rtol=1e-5, atol=1e-5)


def test_per_head_inputs():
    params = random_params(CFG)
    toks = tokens()
    clean = fwd(params, toks)[0]
    names = ("blocks.1.hook_attn_in", "blocks.1.hook_q_input", "blocks.1.ln1.hook_scale", "blocks.0.hook_mlp_in")
    logits, cache = fwd(params, toks, cache_names=names)
    np.testing.assert_allclose(logits, clean, rtol=1e-5, atol=1e-5)
    resid = np.asarray(fwd(params, toks, cache_names=("blocks.1.resid_pre",))[1]["blocks.1.resid_pre"])
    assert cache["blocks.1.hook_attn_in"].shape == (BATCH, POS, CFG.n_heads, CFG.d_model)
    np.testing.assert_array_equal(cache["blocks.1.hook_q_input"], np.repeat(resid[:, :, None], CFG.n_heads, 2))
    assert cache["blocks.1.ln1.hook_scale"].shape == (BATCH, POS, CFG.n_heads, 1)
    # zeroing the value input of head 0 (before LN₁, whose output at 0 is its bias b) leaves q alone
    hooked, c = fwd(params, toks, {"blocks.1.v_input": iv.ZeroAblate(iv.head_mask(CFG.n_heads, [0]))},
                    cache_names=("blocks.1.attn.v", "blocks.1.attn.q"))
    a, ln = params.blocks[1].attn, params.blocks[1].ln1
    v_of_zero = np.asarray(ln.b @ a.W_V[0] + a.b_V[0])
    np.testing.assert_allclose(c["blocks.1.attn.v"][:, :, 0], np.broadcast_to(v_of_zero, (BATCH, POS, CFG.d_head)),
                               rtol=1e-5, atol=1e-5)
    _, plain = fwd(params, toks, cache_names=("blocks.1.attn.q",))
    np.testing.assert_allclose(c["blocks.1.attn.q"], plain["blocks.1.attn.q"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(hooked, clean)


# --------------------------------------------------------------------------------------------
# causality and losses
# --------------------------------------------------------------------------------------------


def test_causality_zero_gradient_from_later_positions():
    params = random_params(CFG)
    toks = tokens()

    def logits_of(delta, seq):
        return forward(params, seq, {"embed": lambda x: x + delta}, cache_names=())[0]

    # One sequence at a time: jit(jacrev) over a (3, 7, 13)-sized output (273 cotangents) was
    # seen to return wrong cross-example entries on XLA:CPU (jax 0.10.2) while eager jacrev is
    # exact; independence across the batch is checked by perturbation below.
    jacobian = jax.jit(jax.jacrev(logits_of))
    for b in range(BATCH):
        jac = jacobian(jnp.zeros((1, POS, CFG.d_model), jnp.float32), toks[b : b + 1])
        mag = np.abs(np.asarray(jac)).max(axis=(2, 5))[0, :, 0, :]  # |∂ logits[t] / ∂ embed[s]|
        assert np.all(mag[np.triu_indices(POS, 1)] == 0.0)
        assert np.all(mag[np.tril_indices(POS)] > 0.0)
    run = jax.jit(logits_of)
    base = np.asarray(run(jnp.zeros((BATCH, POS, CFG.d_model), jnp.float32), toks))
    bump = jnp.zeros((BATCH, POS, CFG.d_model), jnp.float32).at[1, 3, 0].set(1.0)
    moved = np.abs(np.asarray(run(bump, toks)) - base).max(axis=2)
    assert np.all(moved[[0, 2]] == 0.0) and np.all(moved[1, :3] == 0.0) and np.all(moved[1, 3:] > 0.0)


def test_per_token_loss_is_next_token_cross_entropy():
    params = random_params(CFG)
    toks = tokens()
    logits = np.asarray(fwd(params, toks)[0], np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    t = np.asarray(toks)
    expected = -np.take_along_axis(logp[:, :-1], t[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(jax.jit(per_token_loss)(params, toks), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_fn(params, toks), expected.mean(), rtol=1e-5)
    # the initial model (std 0.02) predicts close to uniform
    init = init_fn(CFG, key=jax.random.key(1))
    assert abs(float(loss_fn(init, toks)) - np.log(CFG.d_vocab)) < 0.1


def test_vmap_over_seeds_of_init_and_loss():
    keys = jax.random.split(jax.random.key(3), 4)
    stacked = jax.jit(jax.vmap(lambda k: init_transformer(CFG, key=k)))(keys)
    assert stacked.W_E.shape == (4, CFG.d_vocab, CFG.d_model) and stacked.cfg == CFG
    toks = tokens()
    losses = jax.jit(jax.vmap(next_token_loss, in_axes=(0, None)))(stacked, toks)
    for i in range(4):
        single = init_fn(CFG, key=keys[i])
        same = jax.tree.map(lambda a, b: np.array_equal(a[i], b), stacked, single)
        assert all(jax.tree.leaves(same))
        np.testing.assert_allclose(losses[i], loss_fn(single, toks), rtol=1e-6)
    assert len(set(np.asarray(losses).tolist())) == 4


# --------------------------------------------------------------------------------------------
# interventions
# --------------------------------------------------------------------------------------------


def test_patching_clean_cache_into_corrupted_run_reproduces_clean_logits():
    params = random_params(CFG)
    clean, corrupt = tokens(0), tokens(1)
    clean_logits, clean_cache = fwd(params, clean)
    corrupt_logits, _ = fwd(params, corrupt)
    assert not np.allclose(clean_logits, corrupt_logits)
    # Exactness holds within one compiled program (the cached values come from another program,
    # equal to the patched program's own to within an ulp): the reference is the clean tokens
    # through the same patched program.
    for names in (["blocks.0.resid_pre"], ["blocks.0.resid_post", "blocks.1.resid_post"]):

        @jax.jit
        def patched_run(toks, values, on, names=names):
            hooks = {n: iv.Replace(values[n], on) for n in names}
            return forward(params, toks, hooks, cache_names=())[0]

        values = {n: clean_cache[n] for n in names}
        reference = patched_run(clean, values, jnp.asarray(True))
        np.testing.assert_allclose(reference, clean_logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(patched_run(corrupt, values, jnp.asarray(True)), reference)
    # patching one position of the last residual stream changes only that position's logits
    mask = iv.position_mask(POS, [4])
    hooks = {"blocks.1.resid_post": iv.Replace(clean_cache["blocks.1.resid_post"], mask)}
    one = np.asarray(fwd(params, corrupt, hooks)[0])
    np.testing.assert_array_equal(one[:, 4], np.asarray(clean_logits)[:, 4])
    np.testing.assert_array_equal(np.delete(one, 4, axis=1), np.delete(np.asarray(corrupt_logits), 4, axis=1))


def test_zero_ablating_one_head_at_one_position():
    params = random_params(CFG)
    toks = tokens()
    p, h = 3, 1
    clean_logits, _ = fwd(params, toks)
    mask = iv.position_mask(POS, [p], trailing=2) & iv.head_mask(CFG.n_heads, [h])
    logits, cache = fwd(params, toks, {"blocks.0.attn.z": iv.ZeroAblate(mask)})
    z = np.asarray(cache["blocks.0.attn.z"])
    assert np.all(z[:, p, h] == 0.0) and np.all(z[:, p, 1 - h] != 0.0)
    # the ablated head contributes nothing to attn_out at position p
    a = params.blocks[0].attn
    expected = z[:, p, 1 - h] @ np.asarray(a.W_O[1 - h]) + np.asarray(a.b_O)
    np.testing.assert_allclose(cache["blocks.0.attn_out"][:, p], expected, rtol=1e-5, atol=1e-6)
    logits, clean_logits = np.asarray(logits), np.asarray(clean_logits)
    np.testing.assert_array_equal(logits[:, :p], clean_logits[:, :p])
    assert not np.allclose(logits[:, p], clean_logits[:, p])


def test_mean_ablate():
    params = random_params(CFG)
    toks = tokens()
    _, clean_cache = fwd(params, toks)
    mean = clean_cache["blocks.0.mlp.post"].mean(axis=0)  # (pos, d_mlp)
    mask = iv.position_mask(POS, [2, 5])
    _, cache = fwd(params, toks, {"blocks.0.mlp.post": iv.MeanAblate(mean, mask)})
    got, clean = np.asarray(cache["blocks.0.mlp.post"]), np.asarray(clean_cache["blocks.0.mlp.post"])
    for p in range(POS):
        want = np.broadcast_to(np.asarray(mean)[p], got[:, p].shape) if p in (2, 5) else clean[:, p]
        np.testing.assert_array_equal(got[:, p], want)
    np.testing.assert_array_equal(cache["blocks.0.mlp.pre"], clean_cache["blocks.0.mlp.pre"])


def test_add_direction_adds_exactly_and_is_differentiable():
    params = random_params(CFG)
    toks = tokens()
    direction = jnp.asarray(np.random.default_rng(5).normal(size=CFG.d_model), jnp.float32)
    _, clean_cache = fwd(params, toks)
    _, cache = fwd(params, toks, {"blocks.1.resid_mid": iv.AddDirection(direction, 2.5)})
    np.testing.assert_array_equal(cache["blocks.1.resid_mid"],
                                  clean_cache["blocks.1.resid_mid"] + 2.5 * direction[None, None, :])
    np.testing.assert_array_equal(cache["blocks.1.resid_pre"], clean_cache["blocks.1.resid_pre"])

    def loss_of(scale):
        return next_token_loss(params, toks, {"blocks.1.resid_mid": iv.AddDirection(direction, scale)})

    g = jax.jit(jax.grad(loss_of))(jnp.float32(0.0))
    eps = 1e-2
    losses = jax.jit(jax.vmap(loss_of))(jnp.asarray([eps, -eps], jnp.float32))
    fd = (losses[0] - losses[1]) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=2e-2, atol=1e-4)


def make_sae(d_in: int, d_sae: int, seed: int = 0) -> SAE:
    params = sae_lib.get("relu").init(d_in, d_sae, key=jax.random.key(seed))
    rng = np.random.default_rng(seed)
    params = eqx.tree_at(lambda s: (s.b_enc, s.b_dec), params,
                         (jnp.asarray(rng.normal(0, 0.1, d_sae), jnp.float32),
                          jnp.asarray(rng.normal(0, 0.1, d_in), jnp.float32)))
    return SAE("relu", params)


def test_clamp_feature_keeps_the_error_term():
    params = random_params(CFG)
    toks = tokens()
    sae = make_sae(CFG.d_model, 24)
    name, i = "blocks.0.resid_post", 5
    _, clean_cache = fwd(params, toks)
    x = clean_cache[name]
    rows = x.reshape(-1, CFG.d_model)
    f = sae.encode(rows)
    assert np.any(np.asarray(f[:, i]) > 0)
    own = f[:, i].reshape(BATCH, POS)
    np.testing.assert_array_equal(iv.ClampFeature(sae, i, own)(x), x)  # exact, eager
    logits, cache = fwd(params, toks, {name: iv.ClampFeature(sae, i, own)})
    # inside jit, f_i is recomputed by another program: equal to an ulp
    np.testing.assert_allclose(cache[name], x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, fwd(params, toks)[0], rtol=1e-5, atol=1e-6)

    c = 3.0
    everywhere = jnp.full((BATCH, POS), c, jnp.float32)  # same hook structure: no recompile
    _, cache = fwd(params, toks, {name: iv.ClampFeature(sae, jnp.int32(i), everywhere)})
    delta = (c - np.asarray(own))[..., None] * np.asarray(sae.params.W_dec[:, i])
    np.testing.assert_allclose(np.asarray(cache[name]) - np.asarray(x), delta, atol=1e-5)
    # the same thing written as x − x̂ + x̂′ with the SAE's own encode/decode
    f_clamped = f.at[:, i].set(c)
    expected = rows - sae.decode(f) + sae.decode(f_clamped)
    np.testing.assert_allclose(cache[name].reshape(-1, CFG.d_model), expected, atol=1e-5)


def test_clamp_sweep_is_one_vmapped_call():
    params = random_params(CFG)
    toks = tokens()
    sae = make_sae(CFG.d_model, 24)
    values = jnp.asarray([0.0, 1.0, 4.0], jnp.float32)
    features = jnp.asarray([2, 5, 7], jnp.int32)

    def run(feature, value):
        hooks = {"blocks.1.resid_pre": iv.ClampFeature(sae, feature, value)}
        return next_token_loss(params, toks, hooks)

    swept = jax.jit(jax.vmap(run))(features, values)
    single = jax.jit(run)
    for k in range(3):
        np.testing.assert_allclose(swept[k], single(features[k], values[k]), rtol=1e-5)
    assert len(set(np.asarray(swept).tolist())) == 3


def test_splice_sae():
    params = random_params(CFG)
    toks = tokens()
    d = CFG.d_model
    eye = jnp.eye(d, dtype=jnp.float32)
    perfect = eqx.tree_at(
        lambda s: (s.params.W_enc, s.params.W_dec, s.params.b_enc, s.params.b_dec),
        make_sae(d, 2 * d),
        (jnp.concatenate([eye, -eye], 0), jnp.concatenate([eye, -eye], 1),
         jnp.zeros(2 * d, jnp.float32), jnp.zeros(d, jnp.float32)),
    )
    clean = fwd(params, toks)[0]
    np.testing.assert_allclose(fwd(params, toks, {"blocks.0.resid_mid": iv.SpliceSAE(perfect)})[0],
                               clean, atol=1e-6)
    lossy = make_sae(d, 24)
    _, cache = fwd(params, toks, {"blocks.0.resid_mid": iv.SpliceSAE(lossy)})
    _, clean_cache = fwd(params, toks)
    rows = clean_cache["blocks.0.resid_mid"].reshape(-1, d)
    x_hat = lossy.decode(lossy.encode(rows))
    np.testing.assert_allclose(cache["blocks.0.resid_mid"].reshape(-1, d), x_hat, atol=1e-6)
    assert not np.allclose(x_hat, rows, atol=1e-2)


def test_compose_applies_in_order():
    x = jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)
    hook = iv.Compose(iv.ZeroAblate(), iv.AddDirection(jnp.ones(3, jnp.float32), 2.0))
    np.testing.assert_array_equal(hook(x), jnp.full((2, 3), 2.0, jnp.float32))
    hook = iv.Compose(iv.AddDirection(jnp.ones(3, jnp.float32), 2.0), iv.ZeroAblate())
    np.testing.assert_array_equal(hook(x), jnp.zeros((2, 3), jnp.float32))


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------


def assert_greedy(params, out, n_prompt, hooks=None):
    """Every generated token is the argmax of the logits at the previous position (one forward
    pass over the finished sequence suffices, by causality)."""
    logits, _ = fwd(params, out[:, :-1], hooks)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1)[:, n_prompt - 1 :], np.asarray(out)[:, n_prompt:])


def test_generate_greedy_is_argmax_deterministic_and_respects_hooks():
    params = random_params(ATTN_ONLY)
    prompt = tokens(2, batch=2, pos=3)
    out = generate(params, prompt, 4)
    assert out.shape == (2, 7) and out.dtype == jnp.int32
    np.testing.assert_array_equal(out, generate(params, prompt, 4))
    assert_greedy(params, out, 3)
    np.testing.assert_array_equal(out[:, :3], prompt)
    longer = generate(params, prompt[:, :2], 5)  # same compiled program: loop bounds are traced
    np.testing.assert_array_equal(longer[:, :2], prompt[:, :2])
    assert_greedy(params, longer, 2)

    # with ln_final zero-ablated the logits are b_U, whose argmax is token 7
    peaked = eqx.tree_at(lambda p: p.b_U, params, jnp.zeros(13, jnp.float32).at[7].set(1.0))
    out = generate(peaked, prompt, 4, {"ln_final.out": iv.ZeroAblate()})
    np.testing.assert_array_equal(out[:, 3:], 7)
    assert not np.all(np.asarray(generate(peaked, prompt, 4))[:, 3:] == 7)

    sampled = generate(params, prompt, 5, key=jax.random.key(0), temperature=2.0)
    np.testing.assert_array_equal(sampled, generate(params, prompt, 5, key=jax.random.key(0), temperature=2.0))
    assert np.all((np.asarray(sampled) >= 0) & (np.asarray(sampled) < 13))
    with pytest.raises(ValueError, match="n_ctx"):
        generate(params, prompt, 6)


# --------------------------------------------------------------------------------------------
# saving (lm/io.py)
# --------------------------------------------------------------------------------------------


def test_saved_weights_use_transformer_lens_names_and_old_files_still_load(tmp_path):
    import json

    from superpos_jax.interop.safetensors import load_file, save_file
    from superpos_jax.lm.io import load_transformer, save_transformer

    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=13,
                            act="gelu_exact", ln_eps=1e-6, tied_unembed=True)
    params = random_params(cfg)
    directory = save_transformer(tmp_path / "new", params)
    names = set(load_file(directory / "weights.safetensors"))
    assert {"embed.W_E", "pos_embed.W_pos", "blocks.1.attn.W_Q", "blocks.0.ln1.w", "blocks.1.mlp.W_out",
            "ln_final.b", "unembed.W_U", "unembed.b_U"} <= names and len(names) == len(jax.tree.leaves(params))
    loaded = load_transformer(directory)
    assert loaded.cfg == cfg
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded, params)))

    # a file of before: tensors under their pytree paths, a config without ln_eps / tied_unembed
    old_cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=8, d_vocab=12)
    old = init_fn(old_cfg, key=jax.random.key(0))
    legacy = tmp_path / "old"
    legacy.mkdir()
    save_file({jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(old)},
              legacy / "weights.safetensors")
    fields = {k: v for k, v in dataclasses.asdict(old_cfg).items() if k not in ("ln_eps", "tied_unembed")}
    (legacy / "config.json").write_text(json.dumps(fields))
    assert ".blocks[0].attn.W_Q" in load_file(legacy / "weights.safetensors")
    loaded = load_transformer(legacy)
    assert loaded.cfg == old_cfg
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, loaded, old)))


def test_tied_unembed_init():
    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=13,
                            tied_unembed=True)
    params = init_fn(cfg, key=jax.random.key(0))
    np.testing.assert_array_equal(params.W_U, params.W_E.T)
