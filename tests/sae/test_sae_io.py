"""Trained SAEs round-trip through the SAELens layout, input scale folded in exactly."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.sae import architectures as sae
from superpos_jax.sae.architectures import batchtopk
from superpos_jax.sae.io import load_sae, save_sae
from superpos_jax.sae.model import SAE


def _random_params(kind, d_in=6, d_sae=10):
    p = sae.get(kind).init(d_in, d_sae, key=jax.random.key(1))
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noisy = [a + 0.1 * jax.random.normal(k, a.shape, jnp.float32) for k, a in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noisy)


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_saved_sae_reconstructs_raw_activations_exactly_as_trained(kind, tmp_path):
    arch = sae.get(kind)
    params, scale = _random_params(kind), 2.5
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)), jnp.float32)
    hp = {"k": 3.0}
    threshold = 0.05
    if kind == "batchtopk":
        f = batchtopk.inference_encode(params, x * scale, threshold)
    else:
        f = arch.encode(params, x * scale, hp)
    x_hat = arch.decode(params, f) / scale
    trained = SAE(kind, params, hp, {"threshold": threshold} if kind == "batchtopk" else None, scale)
    np.testing.assert_array_equal(np.asarray(trained.encode(x)), np.asarray(f))
    save_sae(trained, tmp_path / kind, hook_name="blocks.0.mlp.post", model_name="tiny")
    cfg = json.loads((tmp_path / kind / "cfg.json").read_text())
    assert cfg["superpos_architecture"] == kind and cfg["hook_name"] == "blocks.0.mlp.post"
    loaded = load_sae(tmp_path / kind)
    assert loaded.architecture.name == {"batchtopk": "jumprelu"}.get(kind, kind)
    assert float(loaded.input_scale) == 1.0
    g = loaded.encode(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(f), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(loaded.decode(g)), np.asarray(x_hat), rtol=1e-5, atol=1e-5)
    if kind == "topk":
        assert cfg["k"] == 3 and float(loaded.hparams["k"]) == 3.0


def test_batchtopk_needs_its_threshold_and_topk_its_k(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        SAE("batchtopk", _random_params("batchtopk"), {"k": 3.0}, state={})
    with pytest.raises(ValueError, match="k"):
        save_sae(SAE("topk", _random_params("topk")), tmp_path, hook_name="h", model_name="m")
