"""Clamping a set of SAE features (`interventions.ClampFeatures`) and the steering sweeps over
clamp settings (`lm.steering`), against the math by hand and against separate runs; the
`superpos steer` command with several features."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax import cli
from superpos_jax.lm import interventions as iv
from superpos_jax.lm import steering
from superpos_jax.lm.io import save_transformer
from superpos_jax.lm.transformer import TransformerConfig, forward, generate, init_transformer
from superpos_jax.sae import architectures as sae_lib
from superpos_jax.sae.io import save_sae
from superpos_jax.sae.model import SAE

MODEL = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=256, act="relu")
HOOK = "blocks.0.mlp.post"
D_IN, D_SAE = MODEL.d_mlp, 8


def make_sae(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> SAE:
    """A ReLU SAE with random biases and O(1) weights, so that latents fire and clamps move things."""
    params = sae_lib.get("relu").init(d_in, d_sae, key=jax.random.key(seed))
    rng = np.random.default_rng(seed)
    params = eqx.tree_at(lambda s: (s.W_enc, s.W_dec, s.b_enc, s.b_dec), params,
                         (jnp.asarray(rng.normal(0, 0.5, (d_sae, d_in)), jnp.float32),
                          jnp.asarray(rng.normal(0, 0.5, (d_in, d_sae)), jnp.float32),
                          jnp.asarray(rng.normal(0, 0.3, d_sae), jnp.float32),
                          jnp.asarray(rng.normal(0, 0.1, d_in), jnp.float32)))
    return SAE("relu", params)


def orthogonal_sae(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> SAE:
    """Tied weights with orthonormal decoder columns: W_enc_j · d_i = δ_ij, so clamping feature i
    leaves every other latent's pre-activation unchanged."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d_in, d_sae)))
    sae = make_sae(d_in, d_sae, seed)
    return eqx.tree_at(lambda s: (s.params.W_enc, s.params.W_dec), sae,
                       (jnp.asarray(q.T, jnp.float32), jnp.asarray(q, jnp.float32)))


def activation(seed: int = 1, shape: tuple[int, ...] = (3, 5, D_IN)) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(0, 1, shape), jnp.float32)


# -------------------------------------------------------------------------------- the intervention


def test_two_feature_clamp_is_encode_set_decode_plus_error():
    sae, x = make_sae(), activation()
    feats, vals = np.asarray([2, 5]), np.asarray([3.0, -1.5], np.float32)
    rows = x.reshape(-1, D_IN)
    f = sae.encode(rows)
    expected = rows - sae.decode(f) + sae.decode(f.at[:, feats].set(vals))  # x − x̂ + x̂′
    for got in (iv.ClampFeatures(sae, feats, vals)(x), jax.jit(lambda v: iv.ClampFeatures(sae, feats, v)(x))(vals)):
        np.testing.assert_allclose(np.asarray(got).reshape(-1, D_IN), expected, rtol=1e-5, atol=1e-5)
    # clamping each feature to its own value is the identity, exactly
    own = sae.encode(x)[..., feats]
    np.testing.assert_array_equal(iv.ClampFeatures(sae, feats, own)(x), x)


def test_multi_clamp_is_the_sum_of_single_clamps_and_successive_clamps_when_they_do_not_interact():
    x = activation()
    for sae in (make_sae(), orthogonal_sae()):
        both = np.asarray(iv.ClampFeatures(sae, [1, 6], [2.0, 4.0])(x))
        one, two = (np.asarray(iv.ClampFeature(sae, i, c)(x)) for i, c in ((1, 2.0), (6, 4.0)))
        # the decoder is linear in f: the joint shift is the sum of the single shifts, for any SAE
        np.testing.assert_allclose(both - np.asarray(x), (one - np.asarray(x)) + (two - np.asarray(x)), atol=1e-5)
    # successive clamps re-encode the clamped activation; with W_enc_j · d_i = 0 (i != j) clamping
    # feature 1 leaves latent 6 unchanged, so clamping 1 then 6 (either order) is the joint clamp
    sae = orthogonal_sae()
    both = iv.ClampFeatures(sae, [1, 6], [2.0, 4.0])(x)
    for first, second in (((1, 2.0), (6, 4.0)), ((6, 4.0), (1, 2.0))):
        chained = iv.Compose(iv.ClampFeature(sae, *first), iv.ClampFeature(sae, *second))(x)
        np.testing.assert_allclose(chained, both, atol=1e-5)
    # ... and for a generic SAE it is not (latent 6 moved when feature 1 was clamped)
    sae = make_sae()
    chained = iv.Compose(iv.ClampFeature(sae, 1, 2.0), iv.ClampFeature(sae, 6, 4.0))(x)
    assert not np.allclose(chained, iv.ClampFeatures(sae, [1, 6], [2.0, 4.0])(x), atol=1e-3)


def test_clamp_feature_is_the_one_feature_case():
    sae, x = make_sae(), activation()
    per_position = jnp.asarray(np.random.default_rng(2).normal(0, 2, x.shape[:-1]), jnp.float32)
    for value in (jnp.float32(2.5), per_position):
        np.testing.assert_allclose(iv.ClampFeature(sae, 4, value)(x), iv.ClampFeatures(sae, [4], value[..., None])(x),
                                   rtol=1e-6, atol=1e-6)
    # values broadcast: a scalar clamps every feature to it; per-position values (batch, pos, n)
    np.testing.assert_allclose(iv.ClampFeatures(sae, [0, 3], 1.0)(x), iv.ClampFeatures(sae, [0, 3], [1.0, 1.0])(x))
    vals = jnp.stack([per_position, -per_position], axis=-1)
    mask = iv.position_mask(5, [1, 3])
    got = np.asarray(iv.ClampFeatures(sae, [0, 3], vals, mask)(x))
    ref = np.asarray(x) + (np.asarray(iv.ClampFeature(sae, 0, per_position)(x)) - np.asarray(x)) \
        + (np.asarray(iv.ClampFeature(sae, 3, -per_position)(x)) - np.asarray(x))
    np.testing.assert_allclose(got[:, [1, 3]], ref[:, [1, 3]], atol=1e-5)
    np.testing.assert_array_equal(got[:, [0, 2, 4]], np.asarray(x)[:, [0, 2, 4]])


def test_clamp_features_refuses_duplicates_out_of_range_and_mismatched_values():
    sae = make_sae()
    with pytest.raises(ValueError, match="feature 3 is given 2 times"):
        iv.ClampFeatures(sae, [3, 1, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"feature 8 is out of range: the SAE has 8 features \(0..7\)"):
        iv.ClampFeatures(sae, [0, 8], [1.0, 2.0])
    with pytest.raises(ValueError, match="feature -1 is out of range"):
        iv.ClampFeature(sae, -1, 1.0)
    with pytest.raises(ValueError, match="last axis must be 2"):
        iv.ClampFeatures(sae, [0, 1], [1.0, 2.0, 3.0])
    # the annotations refuse these under the tests' runtime type checks, the constructor without them
    for features in ([[0, 1]], [0.0, 1.0]):
        with pytest.raises((ValueError, TypeError), match="1-D array of ints|features"):
            iv.ClampFeatures(sae, features, [1.0, 2.0])


def test_traced_features_and_values_sweep_in_one_call_and_differentiate():
    sae, x = make_sae(), activation()
    features = jnp.asarray([[0, 1], [2, 7], [5, 3]], jnp.int32)
    values = jnp.asarray([[1.0, 2.0], [0.0, 4.0], [-1.0, 3.0]], jnp.float32)
    swept = jax.jit(jax.vmap(lambda f, v: iv.ClampFeatures(sae, f, v)(x)))(features, values)
    for k in range(3):
        np.testing.assert_allclose(swept[k], iv.ClampFeatures(sae, np.asarray(features[k]), values[k])(x), atol=1e-5)
    # d/dc_j of the clamped activation is the decoder column d_{i_j}
    grad = jax.jacobian(lambda v: iv.ClampFeatures(sae, [2, 5], v)(x)[0, 0])(jnp.asarray([1.0, 1.0], jnp.float32))
    np.testing.assert_allclose(grad, np.asarray(sae.decoder)[:, [2, 5]], rtol=1e-6)


# -------------------------------------------------------------------------------- steering sweeps


@pytest.fixture(scope="module")
def run() -> steering.Steerable:
    model = jax.jit(init_transformer, static_argnums=0)(MODEL, key=jax.random.key(0))
    return steering.Steerable(model, make_sae(seed=3), HOOK)


PROMPT = "def "
FEATURES = [1, 4]
SETTINGS = np.asarray([[0.0, 0.0], [20.0, 0.0], [0.0, -20.0], [20.0, 20.0]], np.float32)


def test_next_token_sweep_over_settings_equals_separate_runs(run):
    probs = steering.next_token_sweep(run, PROMPT, FEATURES, SETTINGS)
    assert probs.shape == (4, MODEL.d_vocab)
    tokens = jnp.asarray(np.frombuffer(PROMPT.encode(), np.uint8).astype(np.int32))[None, :]

    @jax.jit
    def single(setting):
        logits, _ = forward(run.model, tokens, {HOOK: iv.ClampFeatures(run.sae, FEATURES, setting)}, cache_names=())
        return jax.nn.softmax(logits[0, -1])

    for k in range(4):
        np.testing.assert_allclose(probs[k], single(jnp.asarray(SETTINGS[k])), rtol=1e-5, atol=1e-7)
    assert len({tuple(np.round(p, 6)) for p in probs}) == 4  # the settings do change the distribution
    # one setting (n values) is the same as a sweep of one
    np.testing.assert_allclose(steering.next_token_sweep(run, PROMPT, FEATURES, SETTINGS[1]), probs[1:2], rtol=1e-5)
    # the single-feature forms: an int with 1-D values is the list of one with (n, 1) values
    np.testing.assert_allclose(steering.next_token_sweep(run, PROMPT, 4, [0.0, -20.0]),
                               steering.next_token_sweep(run, PROMPT, [4], [[0.0], [-20.0]]), rtol=1e-6)


def test_generation_sweep_equals_separate_generations(run):
    texts = steering.steer_generate_sweep(run, PROMPT, FEATURES, SETTINGS, n_new=4)
    assert len(texts) == 4
    tokens = jnp.asarray(np.frombuffer(PROMPT.encode(), np.uint8).astype(np.int32))[None, :]
    for k in range(4):
        out = generate(run.model, tokens, 4, {HOOK: iv.ClampFeatures(run.sae, FEATURES, SETTINGS[k])})
        assert texts[k] == bytes(np.asarray(out[0, len(PROMPT):], np.uint8)).decode("utf-8", errors="replace")
        assert steering.steer_generate(run, PROMPT, FEATURES, SETTINGS[k], n_new=4) == texts[k]


def test_steering_requests_are_checked(run):
    with pytest.raises(steering.SteeringError, match="--feature 4 is given twice"):
        steering.next_token_sweep(run, PROMPT, [4, 1, 4], [[1.0, 2.0, 3.0]])
    with pytest.raises(steering.SteeringError, match="--feature 8 is out of range"):
        steering.steer_generate(run, PROMPT, [1, 8], [1.0, 2.0])
    with pytest.raises(steering.SteeringError, match="clamp value inf is invalid"):
        steering.next_token_sweep(run, PROMPT, FEATURES, [[1.0, 2.0], [1.0, np.inf]])
    with pytest.raises(steering.SteeringError, match=r"do not fit features \[1, 4\]"):
        steering.next_token_sweep(run, PROMPT, FEATURES, [1.0, 2.0, 3.0])
    with pytest.raises(steering.SteeringError, match="one clamp setting, got 4"):
        steering.steer_generate(run, PROMPT, FEATURES, SETTINGS)
    assert steering.clamp_settings(3, 2.0)[1].shape == (1, 1)
    assert steering.clamp_settings(3, [1.0, 2.0])[1].shape == (2, 1)
    assert steering.clamp_settings([3, 5], [1.0, 2.0])[1].shape == (1, 2)


# -------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, run) -> Path:
    path = tmp_path_factory.mktemp("steer") / "run"
    save_transformer(path / "model", run.model)
    # the TransformerLens spelling of HOOK, as the monosemanticity experiment writes it
    save_sae(run.sae, path / "sae", hook_name="blocks.0.mlp.hook_post", model_name="tiny")
    assert steering.load_run(path).hook == HOOK
    return path


def test_steer_command_clamps_several_features(run_dir, run, capsys):
    args = ["steer", str(run_dir), PROMPT, "--feature", "1", "--value", "20", "--feature", "4", "--value", "0",
            "--values", "-20", "20", "--n-new", "3"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    settings = [[20.0, 0.0], [20.0, -20.0], [20.0, 20.0]]
    labels = [f"feature 1 = {a:g}, feature 4 = {b:g}" for a, b in settings]
    texts = steering.steer_generate_sweep(run, PROMPT, FEATURES, settings, n_new=3)
    for label, text in zip(labels, texts):
        assert f"{label}: {text!r}" in out
    assert [line.split(":")[0] for line in out if line.startswith("  next token at")] == \
        [f"  next token at {label}" for label in labels]
    # the last feature may take all its values from --values; --value pairs with --feature by order
    assert cli.main(["steer", str(run_dir), PROMPT, "--feature", "1", "--feature", "4", "--value", "20",
                     "--values", "0", "-20", "--n-new", "1"]) == 0
    out = capsys.readouterr().out
    assert "feature 1 = 20, feature 4 = 0:" in out and "feature 1 = 20, feature 4 = -20:" in out


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("superpos: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


@pytest.mark.parametrize("args, needles", [
    (["--feature", "1", "--value", "1", "--feature", "4"],
     ["--feature is given 2 time(s) and --value 1 time(s)", "the i-th --value clamps the i-th --feature"]),
    (["--feature", "1", "--value", "1", "--value", "2"], ["--feature is given 1 time(s) and --value 2 time(s)"]),
    (["--feature", "1"], ["--feature is given 1 time(s) and --value 0 time(s)"]),
    (["--feature", "1", "--feature", "4", "--values", "1", "2"],
     ["--value 0 time(s)", "with --values, the last --feature may go without one"]),
    (["--feature", "4", "--value", "1", "--feature", "4", "--value", "2"], ["--feature 4 is given twice"]),
    (["--feature", "1", "--value", "1", "--feature", "4", "--value", "nan"],
     ["--value nan (for --feature 4) is invalid", "finite"]),
    (["--feature", "1", "--value=-1e7", "--feature", "4", "--value", "0"],
     ["--value -10000000.0 (for --feature 1) is invalid", "[-1e+06, 1e+06]"]),
    (["--feature", "1", "--value", "1", "--feature", "4", "--value", "0", "--values", "2", "inf"],
     ["--values inf (for --feature 4) is invalid"]),
    (["--feature", "1", "--value", "1", "--feature", "8", "--value", "0"],
     ["--feature 8 is out of range", "8 features (0..7)"]),
], ids=["fewer-values", "more-values", "no-value", "values-without-held-value", "duplicate", "nan-second",
        "huge-first", "inf-in-values", "second-out-of-range"])
def test_bad_multi_feature_steer_requests(run_dir, capsys, monkeypatch, args, needles):
    for name in ("next_token_sweep", "steer_generate", "steer_generate_sweep"):
        monkeypatch.setattr(steering, name, lambda *a, **k: pytest.fail("reached the model: should have been refused"))
    assert cli.main(["steer", str(run_dir), PROMPT, *args]) == 2
    _one_error_line(capsys, *needles)
