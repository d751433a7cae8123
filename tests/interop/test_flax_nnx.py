"""Harvesting sown activations from Flax NNX models into SAE-ready (rows, d) arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superpos_jax.interop.flax_nnx import harvest, write_npy
from superpos_jax.sae.sources import ArraySource


class TwoLayerMLP(nnx.Module):
    def __init__(self, d_in, d_hidden, d_out, *, rngs):
        self.layer1 = nnx.Linear(d_in, d_hidden, rngs=rngs)
        self.layer2 = nnx.Linear(d_hidden, d_hidden, rngs=rngs)
        self.readout = nnx.Linear(d_hidden, d_out, rngs=rngs)

    def __call__(self, x):
        h1 = jax.nn.relu(self.layer1(x))
        self.sow(nnx.Intermediate, "hidden1", h1)
        h2 = jax.nn.relu(self.layer2(h1))
        self.layer2.sow(nnx.Intermediate, "post", h2)
        return self.readout(h2)


class Probe(nnx.Variable):
    """A custom variable type: only harvests that ask for it see these values."""


class SequenceModel(nnx.Module):
    """(batch, pos, d) activations, a custom variable type, and one name sown twice."""

    def __init__(self, d, *, rngs):
        self.embed = nnx.Linear(d, d, rngs=rngs)
        self.block = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        self.sow(Probe, "resid_pre", h)
        for _ in range(2):
            h = h + jnp.tanh(self.block(h))
            self.block.sow(Probe, "resid_post", h)
        self.sow(nnx.Intermediate, "ignored", h)
        return h


def _linear64(layer, x):
    kernel = np.asarray(layer.kernel[...], np.float64)
    return np.asarray(x, np.float64) @ kernel + np.asarray(layer.bias[...], np.float64)


def _manual_hidden(model, x):
    """float64 NumPy recomputation of the two sown hidden layers."""
    h1 = np.maximum(_linear64(model.layer1, x), 0.0)
    h2 = np.maximum(_linear64(model.layer2, h1), 0.0)
    return h1, h2


def test_harvest_matches_manual_recomputation(rng, tmp_path):
    model = TwoLayerMLP(5, 12, 3, rngs=nnx.Rngs(0))
    x = rng.normal(size=(37, 5)).astype(np.float32)
    acts = harvest(model, x, batch_size=8)
    assert set(acts) == {"hidden1", "layer2.post"}
    h1, h2 = _manual_hidden(model, x)
    for name, expected in (("hidden1", h1), ("layer2.post", h2)):
        assert acts[name].shape == (37, 12) and acts[name].dtype == np.float32
        np.testing.assert_allclose(acts[name], expected, rtol=1e-5, atol=1e-6)
    whole = harvest(model, x)  # one batch: same rows in the same order
    np.testing.assert_allclose(whole["layer2.post"], acts["layer2.post"], rtol=1e-5, atol=1e-6)

    only = harvest(model, x, names=["layer2.post"], batch_size=16)
    assert list(only) == ["layer2.post"]
    by_predicate = harvest(model, x, names=lambda n: n.startswith("hidden"))
    assert list(by_predicate) == ["hidden1"]
    with pytest.raises(KeyError, match="not sown"):
        harvest(model, x, names=["nope"])

    source = ArraySource(acts["layer2.post"], batch_size=6, seed=0)
    assert source.d_in == 12 and source.n_rows == 37
    paths = write_npy(acts, tmp_path)
    mapped = ArraySource(paths["layer2.post"], batch_size=6, seed=0)
    assert mapped.n_rows == 37
    np.testing.assert_array_equal(np.load(paths["hidden1"]), acts["hidden1"])


def test_harvest_custom_variable_type_sequences_and_repeats(rng):
    model = SequenceModel(4, rngs=nnx.Rngs(1))
    x = rng.normal(size=(6, 7, 4)).astype(np.float32)
    batches = [jnp.asarray(x[:4]), jnp.asarray(x[4:])]  # an iterable of ready-made batches
    acts = harvest(model, batches, variable_type=Probe)
    assert set(acts) == {"resid_pre", "block.resid_post[0]", "block.resid_post[1]"}
    assert acts["resid_pre"].shape == (6 * 7, 4)  # (batch, pos, d) → (batch · pos, d)
    h = _linear64(model.embed, x)
    np.testing.assert_allclose(acts["resid_pre"], h.reshape(42, 4), rtol=1e-5, atol=1e-5)
    for i in range(2):
        h = h + np.tanh(_linear64(model.block, h))
        np.testing.assert_allclose(acts[f"block.resid_post[{i}]"], h.reshape(42, 4), rtol=1e-5, atol=1e-5)
    both = harvest(model, x, variable_type=Probe, names=["block.resid_post"], batch_size=3)
    assert set(both) == {"block.resid_post[0]", "block.resid_post[1]"}
    plain = harvest(model, x)  # default nnx.Intermediate sees only "ignored"
    assert list(plain) == ["ignored"]


def test_harvest_custom_forward_and_errors(rng):
    model = TwoLayerMLP(5, 12, 3, rngs=nnx.Rngs(2))
    x = rng.normal(size=(10, 5)).astype(np.float32)
    acts = harvest(model, [{"features": x}], forward=lambda m, b: m(b["features"]))
    np.testing.assert_allclose(acts["hidden1"], _manual_hidden(model, x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="list of batches"):
        harvest(model, {"features": x})
    with pytest.raises(ValueError, match="no batches"):
        harvest(model, [])
    with pytest.raises(ValueError, match="batch_size"):
        harvest(model, x, batch_size=0)
