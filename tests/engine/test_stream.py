"""Fed and streamed tasks: the feed runs once per step for every instance; streamed rows are an
argument of each call, read ahead on a thread, and a resumed streamed run is bit-identical."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax import OptimConfig, instance_keys, make_trainer, run_sweep
from superpos_jax.engine.stream import Prefetcher, call_lengths
from superpos_jax.engine.task import Task

D, BATCH, N_ROWS = 6, 8, 200


class RowsStream:
    """Batches of an in-memory array in order (wrapping), with a log of what was read."""

    def __init__(self, rows: np.ndarray, steps_per_call: int):
        self.rows, self.steps_per_call = rows, steps_per_call
        self.reads: list[tuple[int, int, str]] = []

    def read(self, start: int, n: int) -> np.ndarray:
        self.reads.append((start, n, threading.current_thread().name))
        idx = (np.arange(start * BATCH, (start + n) * BATCH) % self.rows.shape[0]).reshape(n, BATCH)
        return self.rows[idx]

    def spec(self, n: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((n, BATCH, D), np.float32)

    def fingerprint(self) -> dict:
        return {"rows": int(self.rows.shape[0])}

    def position(self, step: int) -> dict:
        return {"rows_read": step * BATCH}


def _regression(stream=None, feed=None, shared=None) -> Task:
    """Fit w to predict the row sum from the rows (a least-squares task on fed data)."""

    def init(hp, *, key, **_):
        return {"w": jax.random.normal(key, (D,)) * 0.1}

    def sample(hp, *, key, data, **_):
        return data * hp["scale"]

    def loss(params, x, hp, **_):
        return jnp.mean(jnp.square(x @ params["w"] - jnp.sum(x, axis=-1)))

    return Task(init=init, sample=sample, loss=loss, stream=stream, feed=feed, shared=shared)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N_ROWS, D)).astype(np.float32)


HP = {"scale": np.array([1.0, 0.5, 2.0, 1.0], np.float32), "learning_rate": np.array([1e-2, 1e-2, 1e-2, 3e-2], np.float32)}


def test_call_lengths():
    assert call_lengths(20, 8, 2) == [8, 8, 4]
    assert call_lengths(20, 7, 2) == [6, 6, 6, 2]
    assert call_lengths(6, 1, 3) == [3, 3]


def test_streamed_sweep_equals_one_call_and_a_python_loop(rows):
    stream = RowsStream(rows, steps_per_call=6)
    trainer = make_trainer(_regression(stream), OptimConfig(name="adam"), log_every=2)
    keys = instance_keys(range(4))
    whole = RowsStream(rows, steps_per_call=100)
    one = run_sweep(make_trainer(_regression(whole), OptimConfig(name="adam"), log_every=2), HP, keys, n_steps=24,
                    progress=False)
    assert [(s, n) for s, n, _ in whole.reads] == [(0, 24)]  # one call reads it all
    swept = run_sweep(trainer, HP, keys, n_steps=24, chunk_steps=10, progress=False)
    np.testing.assert_array_equal(one.losses, swept.losses)  # calls and chunks change nothing, to the bit
    np.testing.assert_array_equal(one.state.params["w"], swept.state.params["w"])
    direct = trainer.run(trainer.init(HP, keys), HP, 24, stream.read(0, 24))  # unsharded, one call
    np.testing.assert_allclose(np.asarray(direct[0].params["w"]), swept.state.params["w"], rtol=1e-6, atol=1e-7)
    stream.reads.clear()
    run_sweep(trainer, HP, keys, n_steps=24, chunk_steps=10, progress=False)
    # every call of the sweep read exactly its own steps, in order; all but the first ahead on the thread
    starts = [(s, n) for s, n, _ in stream.reads]
    assert starts == [(0, 6), (6, 4), (10, 6), (16, 4), (20, 4)]
    assert {t for _, _, t in stream.reads[1:]} == {"superpos-prefetch_0"}
    # the reference: instance 3 stepped one at a time in Python on the same rows
    single = make_trainer(_regression(stream), OptimConfig(name="adam"))
    state = jax.tree.map(lambda a: a[3], single.init(HP, keys))
    hp3 = {k: v[3] for k, v in HP.items()}
    for t in range(24):
        state, _ = single.step_one(state, hp3, data=jnp.asarray(stream.read(t, 1)[0]))
    np.testing.assert_allclose(np.asarray(state.params["w"]), swept.state.params["w"][3], rtol=1e-5, atol=1e-6)


def test_feed_runs_once_per_step_for_all_instances(rows):
    """A feed of the step (here: rows picked from `shared` by the step) reaches every instance."""
    calls = []

    def feed(step, streamed, *, shared):
        calls.append(1)  # traced once per program, not per instance
        idx = (step * BATCH + jnp.arange(BATCH)) % shared.shape[0]
        return shared[idx]

    fed = make_trainer(_regression(feed=feed, shared=jnp.asarray(rows)), OptimConfig(name="adam"), log_every=2)
    streamed = make_trainer(_regression(RowsStream(rows, 100)), OptimConfig(name="adam"), log_every=2)
    keys = instance_keys(range(4))
    a = run_sweep(fed, HP, keys, n_steps=12, progress=False)
    b = run_sweep(streamed, HP, keys, n_steps=12, progress=False)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert len(calls) <= 3  # the probe and the run programs, never per instance
    hlo = fed.lower_run(jax.eval_shape(fed.init, HP, keys), HP, 12).as_text()
    assert "0.0893" not in hlo and f"{rows[0, 0]:.4f}" not in hlo  # the rows are an argument, not a constant


def test_streamed_run_killed_mid_stream_resumes_bit_identically(rows, tmp_path, crash_after_chunks, monkeypatch):
    stream = RowsStream(rows, steps_per_call=4)
    trainer = make_trainer(_regression(stream), OptimConfig(name="adam"), log_every=2)
    keys = instance_keys(range(4))
    whole = run_sweep(trainer, HP, keys, n_steps=24, chunk_steps=8, progress=False)
    crash_after_chunks(trainer, 3)  # 3 calls = one chunk and a half: the kill lands mid-chunk
    with pytest.raises(KeyboardInterrupt):
        run_sweep(trainer, HP, keys, n_steps=24, chunk_steps=8, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    resumed = run_sweep(trainer, HP, keys, n_steps=24, chunk_steps=8, checkpoint_dir=tmp_path, progress=False)
    assert resumed.start_step == 8
    np.testing.assert_array_equal(whole.losses, resumed.losses)
    np.testing.assert_array_equal(whole.state.params["w"], resumed.state.params["w"])
    other = RowsStream(rows[::-1].copy(), steps_per_call=4)
    other.fingerprint = lambda: {"rows": N_ROWS, "reversed": True}
    from superpos_jax.engine.checkpoint import CheckpointMismatch

    with pytest.raises(CheckpointMismatch):
        run_sweep(make_trainer(_regression(other), OptimConfig(name="adam"), log_every=2), HP, keys, n_steps=24,
                  chunk_steps=8, checkpoint_dir=tmp_path, progress=False)


def test_prefetcher_drops_reads_it_was_not_asked_for(rows):
    stream = RowsStream(rows, 4)
    with Prefetcher(stream, jnp.asarray) as p:
        p.get(0, 4, then=(4, 4))
        out = p.get(8, 4)  # not what was read ahead
        np.testing.assert_array_equal(np.asarray(out), stream.read(8, 4))
