"""The sparse TopK / BatchTopK kernels (`superpos_jax.sae.sparse`, `KSparseArchitecture(k_max=…)`)
against the dense reference path: loss, every gradient, training on the engine; traced
per-instance k; the n_latents mask (masked == truncated dictionary); AuxK with and without dead
latents; ties at the k-th value; BatchTopK's per-row cap."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superpos_jax.engine.sweep import run_sweep
from superpos_jax.engine.trainer import instance_keys, make_trainer
from superpos_jax.sae import sources
from superpos_jax.sae import architectures as sae
from superpos_jax.sae.sparse import gather_decode, gather_dot, run_if
from superpos_jax.sae.training import SAETraining, sae_hparams, sae_task

D_IN, D_SAE, BATCH, K_MAX = 8, 40, 24, 6
KINDS = {"topk": sae.TopK, "batchtopk": sae.BatchTopK}


def _params(seed: int = 0) -> sae.SAEParams:
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(D_IN, D_SAE)) / np.sqrt(D_IN)
    return sae.SAEParams(
        W_enc=jnp.asarray(rng.normal(size=(D_SAE, D_IN)), jnp.float32),
        b_enc=jnp.asarray(0.3 * rng.normal(size=D_SAE), jnp.float32),
        W_dec=jnp.asarray(W_dec, jnp.float32),
        b_dec=jnp.asarray(0.2 * rng.normal(size=D_IN), jnp.float32),
    )


def _x(seed: int = 1, batch: int = BATCH) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, D_IN)), jnp.float32)


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _hp_cases():
    dead = jnp.asarray(np.arange(D_SAE) % 3 == 0)
    return {
        "some-dead": {"k": jnp.float32(4), "dead": dead, "k_aux": jnp.float32(3)},
        "none-dead": {"k": jnp.float32(5), "dead": jnp.zeros(D_SAE, bool)},
    }


# ---------------------------------------------------------------- the primitives


def test_gather_primitives_equal_dense_products_with_sparse_gradients():
    rng = np.random.default_rng(0)
    R = jnp.asarray(rng.normal(size=(D_SAE, D_IN)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(BATCH, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    idx = jnp.asarray(np.stack([rng.choice(D_SAE - 10, 5, replace=False) for _ in range(BATCH)]), jnp.int32)
    n = 3  # only the first 3 columns count
    onehot = jax.nn.one_hot(idx[:, :n], D_SAE, dtype=jnp.float32)  # (B, n, S)

    def dense_decode(R, v):
        return jnp.einsum("bj,bjs,sd->bd", v[:, :n], onehot, R)

    def dense_dot(R, y):
        return jnp.pad(jnp.einsum("bd,bjs,sd->bj", y, onehot, R), ((0, 0), (0, 5 - n)))

    _assert_trees_close(gather_decode(R, v, idx, n), dense_decode(R, v))
    _assert_trees_close(gather_dot(R, y, idx, n), dense_dot(R, y))
    w = jnp.asarray(rng.normal(size=(BATCH, D_IN)), jnp.float32)
    u = jnp.asarray(rng.normal(size=(BATCH, 5)), jnp.float32)
    g_sparse = jax.grad(lambda R, v: jnp.sum(w * gather_decode(R, v, idx, n)), argnums=(0, 1))(R, v)
    g_dense = jax.grad(lambda R, v: jnp.sum(w * dense_decode(R, v)), argnums=(0, 1))(R, v)
    _assert_trees_close(g_sparse, g_dense)
    g_sparse = jax.grad(lambda R, y: jnp.sum(u * gather_dot(R, y, idx, n)), argnums=(0, 1))(R, y)
    g_dense = jax.grad(lambda R, y: jnp.sum(u * dense_dot(R, y)), argnums=(0, 1))(R, y)
    _assert_trees_close(g_sparse, g_dense)
    assert np.all(np.asarray(g_sparse[0])[D_SAE - 10:] == 0.0)  # rows never selected get nothing


def test_run_if_skips_fn_under_vmap_unless_some_instance_needs_it():
    calls = []

    def fn(a):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.sum(a) + 7.0

    a = jnp.ones((2, 3), jnp.float32)
    f = jax.jit(jax.vmap(lambda p, a: run_if(p, fn, jnp.float32(-1.0), a)))
    np.testing.assert_array_equal(f(jnp.array([False, True]), a), [-1.0, 10.0])
    assert len(calls) == 1
    np.testing.assert_array_equal(f(jnp.array([False, False]), a), [-1.0, -1.0])
    assert len(calls) == 1  # not run at all
    np.testing.assert_array_equal(run_if(jnp.array(True), fn, jnp.float32(-1.0), a[0]), 10.0)


# ---------------------------------------------------------------- sparse == dense


@pytest.mark.parametrize("case", list(_hp_cases()))
@pytest.mark.parametrize("kind", list(KINDS))
def test_sparse_loss_and_gradients_equal_dense(kind, case):
    hp = _hp_cases()[case]
    dense, sparse = KINDS[kind](), KINDS[kind](k_max=K_MAX)
    params, x = _params(), _x()

    def run(arch):
        return jax.jit(jax.value_and_grad(lambda p: arch.loss(p, x, hp), has_aux=True))(params)

    (loss_d, aux_d), g_d = run(dense)
    (loss_s, aux_s), g_s = run(sparse)
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-6)
    for name in ("recon", "auxk", "l0"):
        np.testing.assert_allclose(aux_s[name], aux_d[name], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(aux_s["f"], aux_d["f"], rtol=1e-5, atol=1e-6)
    _assert_trees_close(g_s, g_d)
    if "dead" in hp and bool(np.any(hp["dead"])):
        assert float(aux_s["auxk"]) > 0
    encode = [jax.jit(lambda p, a=a: a.encode(p, x, hp))(params) for a in (sparse, dense)]
    np.testing.assert_allclose(encode[0], encode[1], rtol=1e-5, atol=1e-6)


def test_sparse_step_has_one_dense_matmul_over_the_dictionary():
    """The sparse loss + gradient contains a single dot over (batch, d_sae): the encoder's forward."""
    hp = _hp_cases()["some-dead"]
    params, x = _params(), _x()

    def count(arch):
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: arch.loss(p, x, hp)[0]))(params)
        n = 0

        def walk(jp):
            nonlocal n
            for eqn in jp.eqns:
                if eqn.primitive.name == "dot_general":
                    n += any({BATCH, D_SAE} <= set(v.aval.shape) for v in (*eqn.invars, *eqn.outvars))
                for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else []:
                    walk(sub)
                for p in eqn.params.values():
                    inner = getattr(p, "jaxpr", None)
                    if inner is not None:
                        walk(getattr(inner, "jaxpr", inner))

        walk(jaxpr.jaxpr)
        return n

    assert count(sae.TopK(k_max=K_MAX)) == 1
    assert count(sae.TopK()) >= 4  # the reference: encoder, decoder, AuxK decoder and their transposes


@pytest.mark.parametrize("kind", list(KINDS))
def test_sparse_training_equals_dense_with_per_instance_k(kind):
    """5 steps on the engine, k = 2, 4, 6 as one vmapped program, AuxK live from step 2."""
    dictionary = sources.ground_truth_dictionary(24, D_IN, key=jax.random.key(0))
    source = sources.GroundTruthSource(dictionary, sources.decaying_probabilities(24, mean_active=3.0))
    results = {}
    for k_max in (None, K_MAX):
        training = SAETraining(kind, D_IN, D_SAE, batch_size=BATCH, dead_steps=2)
        task = sae_task(training, source)
        arch = dataclasses.replace(training.arch, k_max=k_max)
        task = dataclasses.replace(task, loss=lambda p, x, h, *, shared, a=arch: a.loss(p, x, h))
        trainer = make_trainer(task, lambda lr: optax.sgd(0.5), log_every=1)
        hp = sae_hparams(training, k=[2, 4, 6])
        results[k_max] = run_sweep(trainer, hp, instance_keys(np.arange(3)), n_steps=5, progress=False)
    dense, sparse = results[None], results[K_MAX]
    assert np.any(np.asarray(dense.state.extra["since_fired"]) >= 2)  # AuxK was live
    np.testing.assert_array_equal(sparse.state.extra["since_fired"], dense.state.extra["since_fired"])
    # same selections (since_fired above), and the same trajectory to float32 rounding. SGD, not
    # Adam: Adam divides by √v, so an element whose gradient is nearly 0 moves by up to ~lr per
    # step on rounding alone (gathers vs matmuls; 2e-4 of the loss on one CPU, 1e-7 on another).
    np.testing.assert_allclose(sparse.losses, dense.losses, rtol=5e-6)
    _assert_trees_close(sparse.state.params, dense.state.params, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_traced_k_in_one_vmapped_program_equals_separate_calls(kind):
    arch, params, x = KINDS[kind](k_max=K_MAX), _params(), _x()
    ks = jnp.asarray([1.0, 3.0, 6.0], jnp.float32)
    dead = jnp.asarray(np.arange(D_SAE) % 4 == 0)
    one = jax.value_and_grad(lambda k: arch.loss(params, x, {"k": k, "dead": dead})[0])
    batched, single = jax.jit(jax.vmap(one))(ks), jax.jit(one)
    for i, k in enumerate(ks):
        np.testing.assert_allclose(batched[0][i], single(k)[0], rtol=1e-6)
    f = jax.jit(jax.vmap(lambda k: arch.encode(params, x, {"k": k})))(ks)
    if kind == "topk":
        counts = np.asarray(jnp.sum(f != 0, axis=-1))
        assert np.all(counts <= np.asarray(ks)[:, None])
    else:
        assert np.all(np.asarray(jnp.sum(f != 0, axis=(1, 2))) <= np.asarray(ks) * BATCH)


# ---------------------------------------------------------------- the dictionary-size mask


@pytest.mark.parametrize("k_max", [None, K_MAX])
@pytest.mark.parametrize("kind", list(KINDS))
def test_n_latents_mask_equals_the_truncated_dictionary(kind, k_max):
    """Latents ≥ n_latents do not exist: loss and gradients equal an SAE of the first m latents
    (AuxK over its dead latents only), and the missing latents get zero gradient."""
    m = 27
    arch, params, x = KINDS[kind](k_max=k_max), _params(), _x()
    dead = jnp.ones(D_SAE, bool)  # every latent dead: AuxK must still skip the missing ones
    small = sae.SAEParams(W_enc=params.W_enc[:m], b_enc=params.b_enc[:m], W_dec=params.W_dec[:, :m], b_dec=params.b_dec)
    masked_loss, g = jax.jit(jax.value_and_grad(
        lambda p: arch.loss(p, x, {"k": jnp.float32(4), "dead": dead, "n_latents": jnp.float32(m)})[0]))(params)
    small_loss, g_small = jax.jit(jax.value_and_grad(
        lambda p: arch.loss(p, x, {"k": jnp.float32(4), "dead": dead[:m]})[0]))(small)
    np.testing.assert_allclose(masked_loss, small_loss, rtol=1e-6)
    _assert_trees_close((g.W_enc[:m], g.b_enc[:m], g.W_dec[:, :m], g.b_dec), tuple(jax.tree.leaves(g_small)))
    assert np.all(np.asarray(g.W_enc[m:]) == 0) and np.all(np.asarray(g.W_dec[:, m:]) == 0)
    f = jax.jit(lambda p: arch.encode(p, x, {"k": jnp.float32(4), "n_latents": jnp.float32(m)}))(params)
    assert np.all(np.asarray(f[:, m:]) == 0)


# ---------------------------------------------------------------- AuxK


def test_sparse_auxk_against_float64_reference():
    """AuxK = mean_b ‖e_b − Σ_{i ∈ top-k_aux dead} ReLU(z_bi) W_dec[:, i]‖² with e the residual."""
    params, x = _params(), _x()
    dead = np.arange(D_SAE) % 3 == 0
    hp = {"k": jnp.float32(4), "dead": jnp.asarray(dead), "k_aux": jnp.float32(3)}
    arch = sae.TopK(k_max=K_MAX)
    _, aux = jax.jit(lambda p: arch.loss(p, x, hp))(params)
    p = {n: np.asarray(getattr(params, n), np.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    xn = np.asarray(x, np.float64)
    z = (xn - p["b_dec"]) @ p["W_enc"].T + p["b_enc"]
    f = np.zeros_like(z)
    for b in range(BATCH):
        top = np.argsort(-z[b])[:4]
        f[b, top] = np.maximum(z[b, top], 0)
    e = xn - (f @ p["W_dec"].T + p["b_dec"])
    f_aux = np.zeros_like(z)
    for b in range(BATCH):
        cand = np.flatnonzero(dead)
        top = cand[np.argsort(-z[b, cand])[:3]]
        f_aux[b, top] = np.maximum(z[b, top], 0)
    expected = np.mean(np.sum((e - f_aux @ p["W_dec"].T) ** 2, axis=-1))
    np.testing.assert_allclose(float(aux["auxk"]), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_auxk_is_zero_without_dead_latents_and_only_dead_latents_learn_from_it(kind):
    params, x = _params(), _x()
    arch = KINDS[kind](k_max=K_MAX)
    base = {"k": jnp.float32(4), "auxk_coefficient": jnp.float32(1.0)}
    none_dead = {**base, "dead": jnp.zeros(D_SAE, bool)}
    assert float(jax.jit(lambda p: arch.loss(p, x, none_dead)[1]["auxk"])(params)) == 0.0
    dead = jnp.asarray(np.arange(D_SAE) % 5 == 1)

    def aux_only(p):
        return arch.loss(p, x, {**base, "dead": dead})[1]["auxk"]

    value, g = jax.jit(jax.value_and_grad(aux_only))(params)
    alive = ~np.asarray(dead)
    assert float(value) > 0
    assert np.all(np.asarray(g.W_dec)[:, alive] == 0) and np.all(np.asarray(g.W_enc)[alive] == 0)
    assert np.any(np.asarray(g.W_dec)[:, ~alive] != 0)


# ---------------------------------------------------------------- ties and BatchTopK's cap


def test_ties_at_the_kth_value_sparse_keeps_exactly_k_lowest_index_first():
    """Latents 3 and 9 (and 9 and 17) share an encoder row, so their pre-activations tie. With
    k = 2 and the tied pair at ranks 2–3 of a row, the sparse TopK keeps exactly 2 (latent 3,
    the lower index); the dense reference (`rank_mask`) keeps every tied entry (3 of them)."""
    params = _params()
    W_enc = params.W_enc.at[9].set(params.W_enc[3]).at[17].set(params.W_enc[3])
    W_enc = W_enc.at[0].set(4.0 * params.W_enc[3])  # latent 0 is ranked first
    b_enc = params.b_enc.at[jnp.asarray([0, 3, 9, 17])].set(0.0)
    params = dataclasses.replace(params, W_enc=W_enc, b_enc=b_enc)
    x = params.b_dec[None, :] + 3.0 * params.W_enc[3][None, :] / jnp.linalg.norm(params.W_enc[3])
    z = np.asarray(sae.pre_activations(params, x))[0]
    order = np.argsort(-z, kind="stable")
    assert order[0] == 0 and set(order[1:4]) == {3, 9, 17}  # the tie sits at ranks 2–4
    hp = {"k": jnp.float32(2)}
    f_sparse = np.asarray(jax.jit(lambda p: sae.TopK(k_max=K_MAX).encode(p, x, hp))(params))[0]
    f_dense = np.asarray(jax.jit(lambda p: sae.TopK().encode(p, x, hp))(params))[0]
    assert set(np.flatnonzero(f_sparse)) == {0, 3}
    assert set(np.flatnonzero(f_dense)) == {0, 3, 9, 17}


def test_batchtopk_row_cap_overflow_is_reported_and_matches_its_definition():
    """A row holding most of the batch's largest pre-activations overflows a small cap: it keeps
    its `row_cap` largest, the budget of k·batch goes to the next largest candidates of the
    other rows, and `capped_rows` reports it; with row_cap = d_sae the result is the reference."""
    params, x = _params(), _x()
    x = x.at[0].multiply(30.0)  # row 0 dominates
    k, cap = 3, 5
    hp = {"k": jnp.float32(k)}
    capped = sae.BatchTopK(k_max=K_MAX, row_cap=cap)
    _, aux = jax.jit(lambda p: capped.loss(p, x, hp))(params)
    f = np.asarray(aux["f"])
    assert float(aux["capped_rows"]) >= 1
    assert np.count_nonzero(f[0]) <= cap
    z = np.asarray(sae.pre_activations(params, x))
    cand = np.sort(z, axis=1)[:, ::-1][:, :cap]
    threshold = np.sort(cand.reshape(-1))[::-1][k * BATCH - 1]
    expected = np.zeros_like(z)
    for b in range(BATCH):
        top = np.argsort(-z[b])[:cap]
        keep = top[z[b, top] >= threshold]
        expected[b, keep] = np.maximum(z[b, keep], 0)
    np.testing.assert_allclose(f, expected, rtol=1e-5, atol=1e-6)
    exact = sae.BatchTopK(k_max=K_MAX, row_cap=D_SAE)
    _, aux_exact = jax.jit(lambda p: exact.loss(p, x, hp))(params)
    _, aux_dense = jax.jit(lambda p: sae.BatchTopK().loss(p, x, hp))(params)
    assert float(aux_exact["capped_rows"]) == 0.0
    np.testing.assert_allclose(aux_exact["f"], aux_dense["f"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(aux_exact["f"], f)  # the cap did change the selection


# ---------------------------------------------------------------- configuration errors


def test_k_above_k_max_and_bad_fields_fail_clearly():
    arch = sae.TopK(k_max=4)
    with pytest.raises(ValueError, match="k_max=4"):
        arch.check_swept(np.asarray([2.0, 5.0], np.float32), D_SAE)
    arch.check_swept(np.asarray([4.0], np.float32), D_SAE)
    with pytest.raises(ValueError, match="k_max"):
        sae.TopK(k_max=0)
    with pytest.raises(ValueError, match="row_cap"):
        sae.BatchTopK(k_max=4, row_cap=True)
    assert sae.get("topk") == sae.TopK() and not sae.TopK().sparse and arch.sparse
