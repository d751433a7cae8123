"""Trained SAEs round-trip through the SAELens layout, input scale folded in exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.sae import architectures as sae
from superpos_jax.sae.io import load_sae, save_sae


def _random_params(kind, d_in=6, d_sae=10):
    keys = jax.random.split(jax.random.key(1), 8)
    p = sae.init_sae(kind, d_in, d_sae, key=keys[0])
    noise = lambda k, a: a + 0.1 * jax.random.normal(k, a.shape, jnp.float32)  # noqa: E731
    return sae.SAEParams(*(noise(k, getattr(p, n)) for k, n in zip(keys[1:], p.__dataclass_fields__)))


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_saved_sae_reconstructs_raw_activations_exactly_as_trained(kind, tmp_path):
    params, scale = _random_params(kind), 2.5
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)), jnp.float32)
    hp = {"k": 3.0}
    threshold = 0.05
    if kind == "batchtopk":
        f = sae.batchtopk_inference_encode(params, x * scale, threshold)
    else:
        f = sae.encode(kind, params, x * scale, hp)
    x_hat = sae.decode(params, f) / scale
    save_sae(tmp_path / kind, kind, params, hook_name="blocks.0.mlp.post", model_name="tiny", k=3,
             input_scale=scale, threshold=threshold)
    loaded_kind, loaded, loaded_hp = load_sae(tmp_path / kind)
    assert loaded_kind == {"batchtopk": "jumprelu"}.get(kind, kind)
    g = sae.encode(loaded_kind, loaded, x, loaded_hp)
    np.testing.assert_allclose(np.asarray(g), np.asarray(f), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(loaded, g)), np.asarray(x_hat), rtol=1e-5, atol=1e-5)


def test_batchtopk_needs_its_threshold(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        save_sae(tmp_path, "batchtopk", _random_params("batchtopk"), hook_name="h", model_name="m")
