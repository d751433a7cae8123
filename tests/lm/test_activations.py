"""`lm.activations`: harvesting at a hook, the loss under hooks, and the CE loss recovered by an
SAE (1 for a perfect splice and 0 for one that zero-ablates, by construction; equal to the
formula on direct computations)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.lm import activations
from superpos_jax.lm.interventions import SpliceSAE, ZeroAblate
from superpos_jax.lm.transformer import TransformerConfig, forward, init_transformer, per_token_loss
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.sae.model import SAE

CFG = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=20, act="relu")
HOOK = "blocks.0.mlp.post"


@pytest.fixture(scope="module")
def model():
    params = init_transformer(CFG, key=jax.random.key(0))
    # larger weights than the init, so the MLP matters to the loss
    return jax.tree.map(lambda a: a * 3.0 if a.ndim == 2 else a, params)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (11, CFG.n_ctx), 0, CFG.d_vocab)


def _sae(W_enc, W_dec, b_enc, b_dec) -> SAE:
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return SAE("relu", sae_lib.SAEParams(W_enc=f32(W_enc), b_enc=f32(b_enc), W_dec=f32(W_dec), b_dec=f32(b_dec)))


def test_harvest_is_the_cached_activation_in_any_batching(model, tokens):
    acts = activations.harvest(model, tokens, HOOK, batch=4)
    assert isinstance(acts, np.ndarray) and acts.shape == (11, CFG.n_ctx, CFG.d_mlp)
    np.testing.assert_allclose(acts, np.asarray(forward(model, tokens)[1][HOOK]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(acts, activations.harvest(model, tokens, "blocks.0.mlp.hook_post", batch=4))
    with pytest.raises(ValueError, match="batch"):
        activations.harvest(model, tokens, HOOK, batch=0)


def test_loss_under_hooks_is_the_mean_token_loss(model, tokens):
    direct = float(jnp.mean(per_token_loss(model, tokens)))
    assert activations.loss_under_hooks(model, tokens, batch=4) == pytest.approx(direct, rel=1e-5)
    hooks = {HOOK: ZeroAblate()}
    ablated = float(jnp.mean(per_token_loss(model, tokens, hooks)))
    assert activations.loss_under_hooks(model, tokens, hooks, batch=3) == pytest.approx(ablated, rel=1e-5)
    assert abs(ablated - direct) > 1e-3  # the hook point matters


def test_ce_loss_recovered_by_construction_and_against_direct_computation(model, tokens):
    d, eye = CFG.d_mlp, np.eye(CFG.d_mlp)
    identity = _sae(np.concatenate([eye, -eye]), np.concatenate([eye, -eye], 1), np.zeros(2 * d), np.zeros(d))
    zero = _sae(eye, np.zeros((d, d)), np.zeros(d), np.zeros(d))
    perfect = activations.ce_loss_recovered(model, identity, HOOK, tokens, batch=4)
    assert perfect.recovered == pytest.approx(1.0, abs=1e-4)
    assert perfect.spliced == pytest.approx(perfect.clean, rel=1e-5)
    none = activations.ce_loss_recovered(model, zero, HOOK, tokens, clean=perfect.clean, ablated=perfect.ablated)
    assert none.recovered == pytest.approx(0.0, abs=1e-4)

    rng = np.random.default_rng(0)
    lossy = _sae(rng.normal(size=(24, d)), rng.normal(size=(d, 24)) / np.sqrt(24), rng.normal(0, 0.1, 24), np.zeros(d))
    lossy = eqx.tree_at(lambda s: s.input_scale, lossy, jnp.float32(2.0))
    got = activations.ce_loss_recovered(model, lossy, HOOK, tokens)
    clean = float(jnp.mean(per_token_loss(model, tokens)))
    ablated = float(jnp.mean(per_token_loss(model, tokens, {HOOK: ZeroAblate()})))
    spliced = float(jnp.mean(per_token_loss(model, tokens, {HOOK: SpliceSAE(lossy)})))
    assert (got.clean, got.ablated, got.spliced) == pytest.approx((clean, ablated, spliced), rel=1e-5)
    assert got.recovered == pytest.approx((ablated - spliced) / (ablated - clean), rel=1e-4, abs=1e-5)
    assert not 0.99 < got.recovered < 1.01
