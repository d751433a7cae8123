"""SAE architectures (`superpos_jax.sae.architectures`) against float64 NumPy references and
gradient identities; the registry; the trained `SAE` module."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superpos_jax.sae import architectures as sae
from superpos_jax.sae.architectures import batchtopk
from superpos_jax.sae.metrics import evaluate
from superpos_jax.sae.model import SAE

D_IN, D_SAE, BATCH = 5, 12, 6


def _random_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_enc": rng.normal(size=(D_SAE, D_IN)),
        "b_enc": 0.3 * rng.normal(size=D_SAE),
        "W_dec": rng.normal(size=(D_IN, D_SAE)) / np.sqrt(D_IN),
        "b_dec": 0.2 * rng.normal(size=D_IN),
        "log_threshold": np.log(rng.uniform(0.2, 1.0, size=D_SAE)),
        "r_mag": 0.3 * rng.normal(size=D_SAE),
        "b_mag": 0.2 * rng.normal(size=D_SAE),
    }


def _to_jax(kind: str, p: dict[str, np.ndarray], dtype=None):
    """The params of architecture `kind` from the leaves it uses."""
    cls = sae.get(kind).params_type
    return cls(**{f.name: jnp.asarray(p[f.name], dtype) for f in dataclasses.fields(cls)})


# ---------------------------------------------------------------- float64 NumPy references


def _np_topk_mask(z: np.ndarray, k: int) -> np.ndarray:
    mask = np.zeros(z.shape, bool)
    idx = np.argsort(-z, axis=-1, kind="stable")[..., :k]
    np.put_along_axis(mask, idx, True, axis=-1)
    return mask


def _np_reference(kind: str, p: dict[str, np.ndarray], x: np.ndarray, hp: dict) -> tuple[np.ndarray, float]:
    """(f, loss) of one SAE, written out directly from the papers' formulas."""
    xbar = x - p["b_dec"]
    z = xbar @ p["W_enc"].T + p["b_enc"]

    def dec(f: np.ndarray, W: np.ndarray = p["W_dec"], b: np.ndarray = p["b_dec"]) -> np.ndarray:
        return f @ W.T + b

    def sq(a: np.ndarray) -> float:
        return float(np.mean(np.sum(a**2, axis=1)))

    lam = hp.get("l1_coefficient", 0.0)
    norms = np.linalg.norm(p["W_dec"], axis=0) if hp.get("decoder_norm_l1", 0.0) else np.ones(D_SAE)
    if kind == "relu":
        f = np.maximum(z, 0)
        return f, sq(x - dec(f)) + lam * float(np.mean(np.sum(f * norms, axis=1)))
    if kind in ("topk", "batchtopk"):
        k = int(hp["k"])
        if kind == "topk":
            keep = _np_topk_mask(z, k)
        else:
            keep = _np_topk_mask(z.reshape(1, -1), k * x.shape[0]).reshape(z.shape)
        f = np.where(keep, np.maximum(z, 0), 0.0)
        e = x - dec(f)
        aux = 0.0
        if "dead" in hp and hp["dead"].any():
            zd = np.where(hp["dead"], z, -np.inf)
            keep_aux = _np_topk_mask(zd, int(hp["k_aux"])) & hp["dead"]
            f_aux = np.where(keep_aux, np.maximum(z, 0), 0.0)
            aux = sq(e - f_aux @ p["W_dec"].T)
        return f, sq(e) + hp.get("auxk_coefficient", 1 / 32) * aux
    if kind == "jumprelu":
        theta = np.exp(p["log_threshold"])
        f = z * (z > theta)
        return f, sq(x - dec(f)) + lam * float(np.mean(np.sum(z > theta, axis=1)))
    if kind == "gated":
        xw = xbar @ p["W_enc"].T
        pi = xw + p["b_enc"]
        mag = np.maximum(np.exp(p["r_mag"]) * xw + p["b_mag"], 0)
        f = (pi > 0) * mag
        gate = np.maximum(pi, 0)
        return f, sq(x - dec(f)) + lam * float(np.mean(np.sum(gate * norms, axis=1))) + sq(x - dec(gate))
    raise AssertionError(kind)


CASES = [
    ("relu", {"l1_coefficient": 0.3}),
    ("relu", {"l1_coefficient": 0.3, "decoder_norm_l1": 1.0}),
    ("topk", {"k": 3}),
    ("topk", {"k": 4, "dead": np.arange(D_SAE) % 3 == 0, "k_aux": 2, "auxk_coefficient": 0.5}),
    ("batchtopk", {"k": 2}),
    ("batchtopk", {"k": 3, "dead": np.arange(D_SAE) >= 8, "k_aux": 3}),
    ("jumprelu", {"l1_coefficient": 0.2}),
    ("gated", {"l1_coefficient": 0.4}),
    ("gated", {"l1_coefficient": 0.4, "decoder_norm_l1": 1.0}),
]


@pytest.mark.parametrize("kind,hp", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_forward_and_loss_match_numpy_float64(kind: str, hp: dict, rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    f_ref, loss_ref = _np_reference(kind, p, x, hp)
    with jax.enable_x64(True):
        arch = sae.get(kind)
        params, xj = _to_jax(kind, p), jnp.asarray(x)
        f = arch.encode(params, xj, hp)
        value, aux = arch.loss(params, xj, hp)
        x_hat = arch.decode(params, f)
        np.testing.assert_allclose(np.asarray(f), f_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(x_hat), f_ref @ p["W_dec"].T + p["b_dec"], rtol=1e-12)
        np.testing.assert_allclose(float(value), loss_ref, rtol=1e-12)
        np.testing.assert_allclose(float(aux["l0"]), np.mean(np.sum(f_ref != 0, axis=1)))
    assert f.shape == (BATCH, D_SAE) and x_hat.shape == (BATCH, D_IN)


def test_float32_loss_is_close_to_float64_reference(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    hp = {"l1_coefficient": 0.3}
    params = _to_jax("relu", p, jnp.float32)
    value, _ = jax.jit(sae.get("relu").loss)(params, jnp.asarray(x, jnp.float32), hp)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), _np_reference("relu", p, x, hp)[1], rtol=1e-5)


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("kind", sae.names())
def test_init_recipes(kind: str) -> None:
    key = jax.random.key(0)
    arch = sae.get(kind)
    p23 = arch.init(8, 32, key=key, recipe="2023")
    p24 = arch.init(8, 32, key=key, recipe="2024", decoder_norm=0.1, threshold=0.01)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p23.W_dec), axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p24.W_dec), axis=0), 0.1, rtol=1e-6)
    for p in (p23, p24):
        assert type(p) is arch.params_type
        np.testing.assert_array_equal(np.asarray(p.W_enc), np.asarray(p.W_dec).T)
        assert p.W_enc.shape == (32, 8) and p.b_dec.shape == (8,) and p.b_enc.shape == (32,)
        assert not np.asarray(p.b_enc).any() and not np.asarray(getattr(p, "b_mag", 0.0)).any()
    if kind == "jumprelu":
        np.testing.assert_allclose(np.exp(np.asarray(p24.log_threshold)), 0.01, rtol=1e-6)


def test_init_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="architecture"):
        sae.get("sigmoid")
    with pytest.raises(ValueError, match="recipe"):
        sae.get("relu").init(4, 8, key=jax.random.key(0), recipe="2025")


# ---------------------------------------------------------------- gradients


def _directional_fd(fn, params, direction, h: float = 1e-6) -> float:
    plus = jax.tree.map(lambda a, d: a + h * d, params, direction)
    minus = jax.tree.map(lambda a, d: a - h * d, params, direction)
    return (float(fn(plus)) - float(fn(minus))) / (2 * h)


@pytest.mark.parametrize(
    "kind,hp",
    [
        ("relu", {"l1_coefficient": 0.3}),
        ("relu", {"l1_coefficient": 0.3, "decoder_norm_l1": 1.0}),
        ("topk", {"k": 3}),
        ("batchtopk", {"k": 2}),
    ],
)
def test_gradients_match_float64_finite_differences(kind: str, hp: dict, rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    with jax.enable_x64(True):
        params, xj = _to_jax(kind, p), jnp.asarray(x)

        @jax.jit
        def fn(q):
            return sae.get(kind).loss(q, xj, hp)[0]

        grads = jax.grad(fn)(params)
        for seed in range(2):
            direction = _to_jax(kind, _random_params(np.random.default_rng(100 + seed)))
            analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
            np.testing.assert_allclose(analytic, _directional_fd(fn, params, direction), rtol=1e-6, atol=1e-8)


def test_auxk_gradient_matches_finite_differences_at_fixed_residual(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    hp = {"dead": np.arange(D_SAE) % 2 == 0, "k_aux": 2}
    with jax.enable_x64(True):
        params, xj = _to_jax("topk", p), jnp.asarray(x)
        residual = jnp.asarray(rng.normal(size=(BATCH, D_IN)))

        @jax.jit
        def fn(q):
            return sae.auxk_loss(q, sae.pre_activations(q, xj), residual, hp)

        grads = jax.grad(fn)(params)
        direction = _to_jax("topk", _random_params(np.random.default_rng(7)))
        analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
        np.testing.assert_allclose(analytic, _directional_fd(fn, params, direction), rtol=1e-6)
        g_res = jax.grad(lambda r: sae.auxk_loss(params, sae.pre_activations(params, xj), r, hp))(residual)
        assert not np.asarray(g_res).any()


def test_dense_auxk_runs_only_when_some_instance_has_a_dead_latent(rng, monkeypatch):
    """Two instances vmapped: AuxK's value and gradient are those of the plain expression
    (float64), exactly zero for the instance without dead latents, and the AuxK computation
    does not run at all when no instance has one."""
    from superpos_jax.sae.architectures import ksparse

    calls = []
    plain = ksparse._dense_auxk

    def counted(*args):
        jax.debug.callback(lambda: calls.append(1))
        return plain(*args)

    monkeypatch.setattr(ksparse, "_dense_auxk", counted)
    with jax.enable_x64(True):
        params = _to_jax("topk", _random_params(rng))
        x, residual = jnp.asarray(rng.normal(size=(BATCH, D_IN))), jnp.asarray(rng.normal(size=(BATCH, D_IN)))
        dead = jnp.asarray(np.stack([np.arange(D_SAE) % 3 == 0, np.zeros(D_SAE, bool)]))

        def loss(q, dead):
            return sae.auxk_loss(q, sae.pre_activations(q, x), residual, {"dead": dead, "k_aux": 2})

        value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))
        values, grads = value_and_grad(params, dead)
        assert len(calls) == 1  # value and gradient computed together, once
        want_v, want_g = jax.value_and_grad(lambda q: plain(q.W_dec, sae.pre_activations(q, x), residual, dead[0], 2))(params)
        np.testing.assert_allclose(values, [float(want_v), 0.0], rtol=1e-12)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_g), strict=True):
            np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-12)
            assert not np.asarray(got[1]).any()
        assert float(want_v) > 0 and any(np.asarray(g).any() for g in jax.tree.leaves(want_g))
        calls.clear()
        values, grads = value_and_grad(params, jnp.zeros_like(dead))
        assert calls == [] and not np.asarray(values).any()
        assert not any(np.asarray(g).any() for g in jax.tree.leaves(grads))


def test_relu_gradient_matches_hand_derivation(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    lam = 0.3
    z = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    f = np.maximum(z, 0)
    r = f @ p["W_dec"].T + p["b_dec"] - x
    dW_dec = 2 * r.T @ f / BATCH
    df = 2 * r @ p["W_dec"] / BATCH + lam / BATCH
    dz = df * (z > 0)
    dW_enc = dz.T @ (x - p["b_dec"])
    with jax.enable_x64(True):
        g = jax.grad(lambda q: sae.get("relu").loss(q, jnp.asarray(x), {"l1_coefficient": lam})[0])(_to_jax("relu", p))
        np.testing.assert_allclose(np.asarray(g.W_dec), dW_dec, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(g.W_enc), dW_enc, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(g.b_enc), dz.sum(0), rtol=1e-10)
        # ReLU's params hold only the leaves it uses (no threshold, no magnitude path)
        assert [f.name for f in dataclasses.fields(g)] == ["W_enc", "b_enc", "W_dec", "b_dec"]


def test_jumprelu_threshold_gets_straight_through_gradient(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    lam, eps = 0.2, 0.4
    theta = np.exp(p["log_threshold"])
    z = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    f = z * (z > theta)
    r = f @ p["W_dec"].T + p["b_dec"] - x
    df = 2 * r @ p["W_dec"] / BATCH
    kernel = (np.abs((z - theta) / eps) < 0.5).astype(np.float64)
    dtheta = np.sum(df * (-(theta / eps) * kernel) + (lam / BATCH) * (-(1 / eps) * kernel), axis=0)
    assert np.count_nonzero(dtheta) >= 3
    with jax.enable_x64(True):
        hp = {"l1_coefficient": lam, "bandwidth": eps}
        g = jax.grad(lambda q: sae.get("jumprelu").loss(q, jnp.asarray(x), hp)[0])(_to_jax("jumprelu", p))
        np.testing.assert_allclose(np.asarray(g.log_threshold), dtheta * theta, rtol=1e-10, atol=1e-14)
        dz = df * (z > theta)
        np.testing.assert_allclose(np.asarray(g.b_enc), dz.sum(0), rtol=1e-10, atol=1e-14)


def test_auxk_gradient_touches_only_dead_latents(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    dead = np.arange(D_SAE) % 3 == 1
    with_dead = {"k": 3, "dead": dead, "k_aux": 2}
    with jax.enable_x64(True):
        topk = sae.get("topk")
        params, xj = _to_jax("topk", p), jnp.asarray(x)
        g_all = jax.grad(lambda q: topk.loss(q, xj, with_dead)[0])(params)
        g_main = jax.grad(lambda q: topk.loss(q, xj, {"k": 3})[0])(params)
        g_aux = jax.tree.map(lambda a, b: np.asarray(a - b), g_all, g_main)
    np.testing.assert_array_equal(g_aux.W_enc[~dead], 0.0)
    np.testing.assert_array_equal(g_aux.b_enc[~dead], 0.0)
    np.testing.assert_array_equal(g_aux.W_dec[:, ~dead], 0.0)
    assert np.abs(g_aux.W_dec[:, dead]).sum() > 0 and np.abs(g_aux.W_enc[dead]).sum() > 0
    with jax.enable_x64(True):
        value, aux = topk.loss(params, xj, {"k": 3, "dead": np.zeros(D_SAE, bool), "k_aux": 2})
    assert float(aux["auxk"]) == 0.0


# ---------------------------------------------------------------- traced k under vmap


def test_topk_traced_k_under_vmap_gives_exactly_k_per_row(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    p["b_enc"] = p["b_enc"] + 20.0
    params = _to_jax("topk", p, jnp.float32)
    x = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    stacked = jax.tree.map(lambda a: jnp.stack([a] * 4), params)
    topk, btopk = sae.get("topk"), sae.get("batchtopk")
    for ks in (jnp.asarray([1, 3, 5, 12], jnp.int32), jnp.asarray([2.0, 4.0, 7.0, 0.0], jnp.float32)):
        f = jax.jit(jax.vmap(lambda q, k: topk.encode(q, x, {"k": k})))(stacked, ks)
        counts = np.count_nonzero(np.asarray(f), axis=-1)
        np.testing.assert_array_equal(counts, np.repeat(np.asarray(ks, int)[:, None], BATCH, axis=1))
        fb = jax.jit(jax.vmap(lambda q, k: btopk.encode(q, x, {"k": k})))(stacked, ks)
        np.testing.assert_array_equal(np.count_nonzero(np.asarray(fb), axis=(1, 2)), np.asarray(ks, int) * BATCH)
        losses = jax.jit(jax.vmap(lambda q, k: topk.loss(q, x, {"k": k})[0]))(stacked, ks)
        assert np.all(np.isfinite(np.asarray(losses)))


@pytest.mark.parametrize("kind", sae.names())
def test_losses_vmap_over_traced_hparams(kind: str, rng: np.random.Generator) -> None:
    arch = sae.get(kind)
    d_in = D_IN * getattr(arch, "n_layers", 1)  # a crosscoder reads n_layers vectors of D_IN
    params = arch.init(d_in, D_SAE, key=jax.random.key(1))
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    x = jnp.asarray(rng.normal(size=(BATCH, arch.row_width(d_in))), jnp.float32)  # transcoders: [x | y]
    hp = {
        "l1_coefficient": jnp.asarray([0.1, 1.0], jnp.float32),
        "k": jnp.asarray([2, 4], jnp.int32),
        "k_aux": jnp.asarray([2, 3], jnp.int32),
        "dead": jnp.asarray(np.stack([np.arange(D_SAE) < 4, np.arange(D_SAE) >= 4])),
        "bandwidth": jnp.asarray([0.001, 0.01], jnp.float32),
    }
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda q, h: arch.loss(q, x, h), has_aux=True)))
    (values, aux), grads = fn(stacked, hp)
    assert values.shape == (2,) and values.dtype == jnp.float32
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(grads))
    for i in range(2):
        single = arch.loss(params, x, jax.tree.map(lambda a: a[i], hp))[0]
        np.testing.assert_allclose(float(values[i]), float(single), rtol=1e-5)


# ---------------------------------------------------------------- BatchTopK inference


def test_batchtopk_inference_threshold(rng: np.random.Generator) -> None:
    p = _random_params(rng)
    x = rng.normal(size=(BATCH, D_IN))
    with jax.enable_x64(True):
        arch = sae.get("batchtopk")
        params, xj = _to_jax("batchtopk", p), jnp.asarray(x)
        f = arch.encode(params, xj, {"k": 2})
        smallest = np.asarray(f)[np.asarray(f) > 0].min()
        theta = batchtopk.threshold_update(0.5, f, 0.25)
        np.testing.assert_allclose(float(theta), 0.75 * 0.5 + 0.25 * smallest, rtol=1e-12)
        unchanged = batchtopk.threshold_update(0.5, jnp.zeros_like(f), 0.25)
        assert float(unchanged) == 0.5
        inference = batchtopk.inference_encode(params, xj, theta)
        z = (x - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
        np.testing.assert_allclose(np.asarray(inference), z * (z > float(theta)), rtol=1e-12)
        # At the batch's own smallest kept activation, inference keeps every training latent.
        at_min = np.asarray(batchtopk.inference_encode(params, xj, smallest * (1 - 1e-9)))
        assert np.all(at_min[np.asarray(f) > 0] > 0)
        row = np.asarray(batchtopk.inference_encode(params, xj[:1], theta))
        np.testing.assert_allclose(row, np.asarray(inference)[:1], rtol=1e-12)
        # the architecture's inference encoder and its after-update are these functions
        state = {"threshold": jnp.asarray(0.5)}
        np.testing.assert_array_equal(np.asarray(arch.encode_inference(params, {"threshold": theta}, xj, {"k": 2})),
                                      np.asarray(inference))
        _, new = arch.after_update(params, state, {"f": f}, {"threshold_momentum": 0.25}, unit_norm=False)
        np.testing.assert_allclose(float(new["threshold"]), float(theta), rtol=1e-12)


# ---------------------------------------------------------------- unit-norm decoder


def test_unit_norm_decoder_removes_parallel_gradient_and_projection_restores_norms(
    rng: np.random.Generator,
) -> None:
    relu = sae.get("relu")
    params = relu.init(D_IN, D_SAE, key=jax.random.key(3))
    x = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    grads = jax.grad(lambda q: relu.loss(q, x, {"l1_coefficient": 0.5})[0])(params)
    transform = sae.unit_norm_decoder()
    state = transform.init(params)
    updates, _ = transform.update(grads, state, params)
    W = np.asarray(params.W_dec, np.float64)
    g = np.asarray(updates.W_dec, np.float64)
    assert np.abs(np.sum(np.asarray(grads.W_dec) * W, axis=0)).max() > 1e-3
    np.testing.assert_allclose(np.sum(g * W, axis=0), 0.0, atol=1e-6)
    g_ref = np.asarray(grads.W_dec, np.float64)
    g_ref = g_ref - np.sum(g_ref * W, axis=0) / np.sum(W * W, axis=0) * W
    np.testing.assert_allclose(g, g_ref, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(updates.W_enc), np.asarray(grads.W_enc))

    optimizer = optax.chain(sae.unit_norm_decoder(), optax.sgd(0.2, momentum=0.9))
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(q: sae.SAEParams, s):
        g = jax.grad(lambda q: relu.loss(q, x, {"l1_coefficient": 0.5})[0])(q)
        u, s = optimizer.update(g, s, q)
        return sae.project_decoder(optax.apply_updates(q, u)), s

    for _ in range(3):
        params, opt_state = train_step(params, opt_state)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(params.W_dec), axis=0), 1.0, rtol=1e-6)


def test_unit_norm_decoder_requires_params() -> None:
    params = sae.get("relu").init(D_IN, D_SAE, key=jax.random.key(0))
    with pytest.raises(ValueError, match="params"):
        sae.unit_norm_decoder().update(params, optax.EmptyState())


# ---------------------------------------------------------------- registry


def test_registry_names_get_and_errors() -> None:
    assert set(sae.names()) >= {"relu", "topk", "batchtopk", "jumprelu", "gated"}
    for name in sae.names():
        arch = sae.get(name)
        assert arch.name == name and sae.get(arch) is arch
        assert arch.swept in ("l1_coefficient", "k")
        assert arch.auxk == (arch.swept == "k")
        assert hash(arch) == hash(sae.get(name)) and arch == type(arch)()  # a static singleton
    assert sae.get("topk").swept == "k" and sae.get("relu").swept == "l1_coefficient"
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'sparse'.*'relu'.*'gated'"):
        sae.get("sparse")

    class Impostor(sae.ReLU):
        pass

    with pytest.raises(ValueError, match="already registered"):
        sae.register(Impostor())
    assert sae.for_saelens("standard") is sae.get("relu") and sae.for_saelens("jumprelu") is sae.get("jumprelu")
    with pytest.raises(ValueError, match="SAELens architecture 'matryoshka'"):
        sae.for_saelens("matryoshka")


def test_a_new_architecture_is_one_class_and_one_registration(rng: np.random.Generator) -> None:
    """A registered architecture (here a ReLU with a squared L1 penalty, defined in the test)
    is trained by `sae_task` and used through `SAE` with no other change."""
    from superpos_jax.engine.trainer import instance_keys, make_trainer
    from superpos_jax.sae import sources
    from superpos_jax.sae.training import SAETraining, recipe_optim, sae_hparams, sae_task

    class SquaredL1(sae.ReLU):
        name = "test-squared-l1"
        recipes = ("2023",)

        def loss(self, params, x, hp):
            f = self.encode(params, x, hp)
            x_hat = self.decode(params, f)
            recon = jnp.mean(jnp.sum(jnp.square(x - x_hat), axis=-1))
            sparsity = jnp.mean(jnp.square(jnp.sum(f, axis=-1)))
            return recon + self.hparam(hp, "l1_coefficient", x) * sparsity, {"f": f, "sq_err": jnp.zeros(x.shape[0])}

    arch = sae.register(SquaredL1())
    assert sae.get("test-squared-l1") is arch and "test-squared-l1" in sae.names()
    training = SAETraining("test-squared-l1", D_IN, D_SAE, batch_size=16)
    source = sources.ArrayRows(rng.normal(size=(256, D_IN)).astype(np.float32))
    hp = sae_hparams(training, l1_coefficient=[0.0, 0.5])
    trainer = make_trainer(sae_task(training, source), recipe_optim(training, 10, 1e-2))
    state, trace = trainer.run(trainer.init(hp, instance_keys([0, 0])), hp, 10)
    assert np.all(np.isfinite(np.asarray(trace))) and trace[0, -1] != trace[1, -1]
    model = SAE.from_sweep(training, state, hp, 1)
    assert model.architecture is arch and model.d_sae == D_SAE
    assert model(jnp.asarray(source.x[:3])).shape == (3, D_IN)


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_every_params_leaf_is_used(kind: str, rng: np.random.Generator) -> None:
    """Each architecture's params hold only leaves its loss depends on (each gets a gradient)."""
    arch = sae.get(kind)
    p = _random_params(rng)
    p["b_enc"] = p["b_enc"] + 1.0  # enough active latents for every path
    x = rng.normal(size=(BATCH, D_IN))
    hp = {"l1_coefficient": 0.3, "k": 4, "bandwidth": 2.0, "dead": np.arange(D_SAE) % 2 == 0, "k_aux": 2}
    with jax.enable_x64(True):
        g = jax.grad(lambda q: arch.loss(q, jnp.asarray(x), hp)[0])(_to_jax(kind, p))
    for f in dataclasses.fields(g):
        assert np.abs(np.asarray(getattr(g, f.name))).sum() > 0, f.name
    assert set(type(g).LATENT_AXES) == {f.name for f in dataclasses.fields(g)}


# ---------------------------------------------------------------- the SAE module


@pytest.mark.parametrize("kind", ["relu", "topk", "batchtopk", "jumprelu", "gated"])
def test_sae_module_acts_on_raw_activations(kind: str, rng: np.random.Generator) -> None:
    arch = sae.get(kind)
    params = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                          arch.init(D_IN, D_SAE, key=jax.random.key(2)))
    scale, hp = 2.5, {"k": 3.0, "l1_coefficient": 0.1}
    state = {"threshold": 0.05} if kind == "batchtopk" else {}
    model = SAE(kind, params, hp, state, scale)
    x = jnp.asarray(rng.normal(size=(2, 3, D_IN)), jnp.float32)
    rows = x.reshape(-1, D_IN)
    f_ref = (batchtopk.inference_encode(params, rows * scale, 0.05) if kind == "batchtopk"
             else arch.encode(params, rows * scale, hp))
    f = model.encode(x)
    assert f.shape == (2, 3, D_SAE) and model.d_in == D_IN and model.d_sae == D_SAE
    np.testing.assert_array_equal(np.asarray(f).reshape(-1, D_SAE), np.asarray(f_ref))
    np.testing.assert_allclose(np.asarray(model(x)).reshape(-1, D_IN),
                               np.asarray(arch.decode(params, f_ref)) / scale, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.decoder), np.asarray(params.W_dec) / scale, rtol=1e-6)
    for other in (model.folded(), model.inference()):  # the same map on raw activations
        assert float(other.input_scale) == 1.0
        np.testing.assert_allclose(np.asarray(other.encode(x)), np.asarray(f), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(other(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
    assert model.inference().architecture.name == ("jumprelu" if kind == "batchtopk" else kind)
    # a pytree: jit and vmap over SAEs (the architecture is static)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda m, v: m(v))(model, x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), model)
    out = jax.vmap(lambda m: m.encode(rows))(stacked)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(f).reshape(-1, D_SAE), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(model) == jax.tree.structure(SAE(kind, params, hp, state, 1.0))
    # the held-out metrics score exactly this map
    ev = evaluate(model, rows)
    err = np.sum((np.asarray(rows) - np.asarray(model(rows))) ** 2, axis=1)
    np.testing.assert_allclose(float(ev["mse"]), err.mean(), rtol=1e-5)
    centred = np.asarray(rows) - np.asarray(rows).mean(axis=0)
    np.testing.assert_allclose(float(ev["fvu"]), err.sum() / np.sum(centred**2), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ev["fired"]), np.sum(np.asarray(f).reshape(-1, D_SAE) > 0, axis=0))


def test_sae_module_rejects_mismatched_pieces() -> None:
    params = sae.get("relu").init(D_IN, D_SAE, key=jax.random.key(0))
    with pytest.raises(ValueError, match="JumpReLUParams"):
        SAE("jumprelu", params)
    with pytest.raises(ValueError, match=r"needs its state \['threshold'\]"):
        SAE("batchtopk", params, {"k": 3.0}, state={})
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        SAE("nope", params)
