"""The frozen LM inside the SAE loop (`lm.feed.LMActivations`): its activations are the forward
pass's on the same windows, several layers train as instances of one program (each on its own
layer, equal to separate runs), widths are checked, the corpus and weights are arguments of the
program, and a crashed run resumes bit-identically."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax import make_trainer, run_sweep
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.trainer import instance_keys
from superpos_jax.lm.corpus import sample_windows
from superpos_jax.lm.feed import LMActivations
from superpos_jax.lm.transformer import TransformerConfig, forward, init_transformer
from superpos_jax.sae.training import SAETraining, sae_hparams, sae_task

CFG = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=64)
HOOKS = ("blocks.0.resid_post", "blocks.1.hook_resid_post")  # a short and a TransformerLens spelling
BATCH = 32


@pytest.fixture(scope="module")
def model():
    return init_transformer(CFG, key=jax.random.key(0))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(1).integers(0, CFG.d_vocab, 4000).astype(np.uint8)


def _source(model, tokens, hooks=HOOKS, **kw):
    kw = {"batch_size": BATCH, "skip": 1, "n_contexts": 8, "seed": 5, **kw}
    return LMActivations(model, tokens, hooks, **kw)


def _training(d_in: int = CFG.d_model) -> SAETraining:
    return SAETraining("topk", d_in, 4 * d_in, batch_size=BATCH, stats_samples=256)


@jax.jit
def _cache(params, windows):
    return forward(params, windows)[1]


def test_feed_is_the_forward_pass_on_the_same_windows(model, tokens):
    src = _source(model, tokens)
    assert src.d_in == CFG.d_model and src.positions == CFG.n_ctx - 1 and src.pool == 8 * (CFG.n_ctx - 1)
    step = jnp.int32(7)
    data = jax.jit(src.feed)(step, None, src.shared)
    assert data.shape == (2, src.pool, CFG.d_model)
    # the windows are those of fold_in(key(seed), step), drawn independently here
    windows = sample_windows(tokens, key=jax.random.fold_in(jax.random.key(5), 7), batch_size=8, seq_len=CFG.n_ctx)
    cache = _cache(model, windows)
    for i, name in enumerate(("blocks.0.resid_post", "blocks.1.resid_post")):
        want = np.asarray(cache[name])[:, 1:, :].reshape(-1, CFG.d_model)  # row = window-major, position ≥ skip
        np.testing.assert_allclose(np.asarray(data[i]), want, rtol=1e-5, atol=1e-6)
    other = np.asarray(src.feed(jnp.int32(8), None, src.shared))
    assert not np.allclose(other, np.asarray(data))  # a new step, new windows
    # stats: n rows of the instance's hook from the windows of the given key
    key = jax.random.key(3)
    rows = np.asarray(jax.jit(src.stats, static_argnums=1)(key, 30, {"hook": jnp.float32(1)}, src.shared))
    w = sample_windows(tokens, key=key, batch_size=3, seq_len=CFG.n_ctx)  # ⌈30 / 11⌉ windows
    want = np.asarray(_cache(model, w)["blocks.1.resid_post"])[:, 1:, :].reshape(-1, CFG.d_model)[:30]
    np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-6)


def test_take_draws_distinct_rows_of_the_instances_hook(model, tokens):
    src = _source(model, tokens)
    data = src.feed(jnp.int32(0), None, src.shared)
    pools = [np.asarray(data[h]) for h in range(2)]
    for h in range(2):
        x = np.asarray(src.take(data, jax.random.key(h), BATCH, {"hook": jnp.float32(h)}, src.shared))
        assert x.shape == (BATCH, CFG.d_model)
        match = np.all(np.isclose(x[:, None, :], pools[h][None, :, :]), axis=-1)  # (batch, pool)
        assert np.all(match.sum(axis=1) == 1)  # every row is one row of its own hook's pool...
        assert len(set(np.argmax(match, axis=1).tolist())) == BATCH  # ...each pool row at most once
        assert not np.any(np.all(np.isclose(x[:, None, :], pools[1 - h][None, :, :]), axis=-1))


def test_bad_hooks_and_sizes_are_named(model, tokens):
    with pytest.raises(ValueError, match="one width"):
        _source(model, tokens, hooks=("blocks.0.resid_post", "blocks.0.mlp.post"))  # 16 vs 32
    with pytest.raises(ValueError, match="unknown cache name 'blocks.0.resid_poost'"):
        _source(model, tokens, hooks=("blocks.0.resid_poost",))
    with pytest.raises(ValueError, match="skip"):
        _source(model, tokens, skip=CFG.n_ctx)
    with pytest.raises(ValueError, match="smaller than batch_size"):
        _source(model, tokens, n_contexts=2)
    with pytest.raises(ValueError, match="exceeds the model's n_ctx"):
        _source(model, tokens, seq_len=CFG.n_ctx + 1)
    with pytest.raises(ValueError, match="not one of this source's hooks"):
        _source(model, tokens).hook_hparam(["blocks.1.mlp.post"])
    default = LMActivations(model, tokens, HOOKS, batch_size=BATCH)
    assert default.n_contexts == 64 and default.pool >= 4 * BATCH  # the documented defaults


def _sweep(src, hooks, n_steps=20, seeds=None, **kw):
    training = _training(src.d_in)
    hp = sae_hparams(training, k=np.full(len(hooks), 4.0), hook=src.hook_hparam(hooks))
    trainer = make_trainer(sae_task(training, src), OptimConfig(name="adam", learning_rate=3e-3), log_every=5)
    keys = instance_keys(np.arange(len(hooks)) if seeds is None else seeds)
    return trainer, hp, keys, run_sweep(trainer, hp, keys, n_steps=n_steps, progress=False, **kw) if n_steps else None


def _direct(src, hooks, seeds, n_steps=20):
    """Init and one call of the trainer's own programs (no mesh, no chunking)."""
    trainer, hp, keys, _ = _sweep(src, hooks, n_steps=0, seeds=seeds)
    state, trace = trainer.run(trainer.init(hp, keys), hp, n_steps)
    return np.asarray(trace), np.asarray(state.params.W_dec)


def test_layers_train_at_once_each_on_its_own_layer(model, tokens):
    """Instances on layers 0, 1, 0, 1 in one program equal one-layer sources run separately."""
    losses, W_dec = _direct(_source(model, tokens), [0, 1, 0, 1], seeds=[0, 0, 1, 1])
    assert np.isfinite(losses).all()
    for layer in (1,):  # the second hook: a wrong index would read layer 0 (test_take covers both)
        alone_losses, alone_W = _direct(_source(model, tokens, hooks=(HOOKS[layer],)), [0, 0], seeds=[0, 1])
        np.testing.assert_allclose(losses[[layer, 2 + layer]], alone_losses, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(W_dec[[layer, 2 + layer]], alone_W, rtol=1e-4, atol=1e-6)
    # and the layers differ: the same key on the other layer's rows trains another SAE
    assert not np.allclose(W_dec[0], W_dec[1], atol=1e-3)


def _hlo(model, tokens, closed_over=False):
    src = _source(model, tokens)
    if closed_over:  # the bug the rule prevents: reading the corpus through `self`
        baked = src.shared["tokens"]
        src.windows = lambda step, shared: sample_windows(
            baked, key=jax.random.fold_in(jax.random.key(5), step), batch_size=8, seq_len=CFG.n_ctx)
    trainer, hp, keys, _ = _sweep(src, [0, 1], n_steps=0)
    state = jax.eval_shape(trainer.init, hp, keys)
    return trainer.lower_init(hp, keys).as_text(), trainer.lower_run(state, hp, 5).as_text()


def test_corpus_and_weights_are_arguments_not_constants(model):
    rng = np.random.default_rng(2)
    corpus = rng.integers(0, 64, 20_000).astype(np.uint8)
    other_model = init_transformer(CFG, key=jax.random.key(1))
    a = _hlo(model, corpus)
    b = _hlo(other_model, rng.integers(0, 64, 20_000).astype(np.uint8))  # other weights, other corpus
    assert a == b  # programs identical to the byte: neither weights nor corpus are inside
    large = _hlo(model, rng.integers(0, 64, 1_000_000).astype(np.uint8))  # 1 MB of corpus
    for s, lg in zip(a, large, strict=True):
        assert abs(len(lg) - len(s)) < 100  # only the corpus length's digits differ
    # the check can fail: the same source closing over its corpus bakes it into the run program
    assert len(_hlo(model, rng.integers(0, 64, 1_000_000).astype(np.uint8), closed_over=True)[1]) > 1_000_000


def _assert_killed_run_resumes_to(whole, trainer, hp, keys, tmp_path, crash_after_chunks, monkeypatch):
    """30 steps in chunks of 10, killed after two: the resumed run's losses and state are `whole`'s bits."""
    crash_after_chunks(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    resumed = run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, checkpoint_dir=tmp_path, progress=False)
    assert resumed.start_step == 20
    np.testing.assert_array_equal(whole.losses, resumed.losses)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_lm_fed_run_resumes_bit_identically(model, tokens, tmp_path, crash_after_chunks, monkeypatch):
    src = _source(model, tokens)
    trainer, hp, keys, whole = _sweep(src, [0, 1], n_steps=30, chunk_steps=10)
    _assert_killed_run_resumes_to(whole, trainer, hp, keys, tmp_path, crash_after_chunks, monkeypatch)


def test_the_feed_runs_the_model_only_up_to_its_deepest_hook():
    """The cache forward's unused outputs are dead code, so the compiled feed of block 0's hook
    holds block 0 only and no unembedding (no d_vocab-wide array); asking for block 1's hook
    adds that block's matmuls. This breaks if the blocks become a scan or the logits are kept."""
    import re

    from superpos_jax.lm.feed import transformer_cache

    cfg = TransformerConfig(n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=509)
    params, tok = init_transformer(cfg, key=jax.random.key(0)), jnp.zeros((4, 12), jnp.int32)

    def compiled(fn):
        hlo = jax.jit(fn).lower(params, tok).compile().as_text()
        return len(re.findall(r" dot\(", hlo)), len(re.findall(r"\[[0-9,]*509\]", hlo))

    first = compiled(transformer_cache(["blocks.0.hook_resid_post"]))
    last = compiled(transformer_cache(["blocks.2.hook_resid_post"]))
    logits = compiled(lambda p, t: forward(p, t)[0])
    assert first[1] == last[1] == 0 and logits[1] > 0
    assert 0 < first[0] < last[0] < logits[0]
    assert last[0] == 3 * first[0]  # three blocks' matmuls, the same per block


def test_a_buffered_pool_serves_each_row_once_over_its_steps(model, tokens):
    """buffer_steps=3: the feed of step 6 is one forward pass on step 6's windows, shuffled
    and cut into 3 disjoint slices (every pool row in at most one), and steps 7 and 8 read
    slices 1 and 2 of that same pool."""
    src = _source(model, tokens, buffer_steps=3, n_contexts=9)
    assert (src.pool, src.rows_per_step, src.feed_every) == (99, 33, 3)
    group = np.asarray(jax.jit(src.feed)(jnp.int32(6), None, src.shared))
    assert group.shape == (3, 2, 33, CFG.d_model)
    windows = sample_windows(tokens, key=jax.random.fold_in(jax.random.key(5), 6), batch_size=9, seq_len=CFG.n_ctx)
    cache = _cache(model, windows)
    for h, name in enumerate(("blocks.0.resid_post", "blocks.1.resid_post")):
        pool = np.asarray(cache[name])[:, 1:, :].reshape(-1, CFG.d_model)
        rows = group[:, h].reshape(-1, CFG.d_model)
        match = np.all(np.isclose(rows[:, None, :], pool[None, :, :], rtol=1e-5, atol=1e-6), axis=-1)
        assert np.all(match.sum(axis=1) >= 1)  # every row is a row of this hook's forward pass...
        assert len(set(np.argmax(match, axis=1).tolist())) == 99  # ...and each pool row is used once
        first = np.argmax(match[:33], axis=1)
        assert np.any(np.diff(first) != 1)  # shuffled, not the window-major order
    trainer = make_trainer(sae_task(_training(), src), OptimConfig(name="adam", learning_rate=3e-3))
    for t in (6, 7, 8):
        np.testing.assert_allclose(np.asarray(trainer.feed(jnp.int32(t), None)), group[t - 6], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="smaller than batch_size=32 x buffer_steps=4"):
        _source(model, tokens, buffer_steps=4, n_contexts=9)
    with pytest.raises(ValueError, match="buffer_steps"):
        _source(model, tokens, buffer_steps=0)


def test_buffered_run_equals_a_step_loop_and_resumes_bit_identically(model, tokens, tmp_path, crash_after_chunks,
                                                                     monkeypatch):
    """buffer_steps=3 with calls of 10 steps (calls start inside a group, at steps 10 and 20):
    the compiled run equals stepping one step at a time on `Trainer.feed(step)`, and a run
    killed after two chunks resumes to the same bits."""
    src = _source(model, tokens, buffer_steps=3, n_contexts=9)
    trainer, hp, keys, whole = _sweep(src, [0, 1], n_steps=30, chunk_steps=10)
    assert np.isfinite(whole.losses).all()

    @jax.jit
    def one(state, t):
        data = trainer.feed(t, None)
        return jax.vmap(lambda s, h: trainer.step_one(s, h, None, data))(state, hp)

    state = trainer.init(hp, keys)
    losses = []
    for t in range(30):
        state, loss = one(state, jnp.int32(t))
        losses.append(np.asarray(loss))
    loop = np.stack(losses, axis=1).reshape(2, 6, 5).mean(axis=-1)  # windows of log_every = 5
    np.testing.assert_allclose(whole.losses, loop, rtol=1e-5)
    np.testing.assert_allclose(whole.state.params.W_dec, np.asarray(state.params.W_dec), rtol=1e-4, atol=1e-6)
    _assert_killed_run_resumes_to(whole, trainer, hp, keys, tmp_path, crash_after_chunks, monkeypatch)


def test_feed_every_needs_a_feed_and_no_stream():
    from superpos_jax.engine.task import Task

    def f(*a, **k):
        return None

    assert Task(init=f, sample=f, loss=f, feed=f, feed_every=4).feed_every == 4
    with pytest.raises(ValueError, match="feed_every=2 needs a task with a feed"):
        Task(init=f, sample=f, loss=f, feed_every=2)
    with pytest.raises(ValueError, match="feed_every=2 needs a task with a feed and no stream"):
        Task(init=f, sample=f, loss=f, feed=f, stream=object(), feed_every=2)
    with pytest.raises(ValueError, match="feed_every must be a positive integer"):
        Task(init=f, sample=f, loss=f, feed=f, feed_every=0)
