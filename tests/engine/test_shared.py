"""`Task.shared` reaches every callable as an argument of the compiled call: the programs'
HLO does not grow with the data, and the lowered programs are public (`lower_init`/`lower_run`)."""

import gc
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from superpos_jax import instance_keys, make_trainer
from superpos_jax.engine import execution
from superpos_jax.engine.distributed import instance_sharding, sweep_mesh
from superpos_jax.engine.optim import OptimConfig
from superpos_jax.engine.task import Task

MB = 2**20


def _scale_by(factor):
    """A gradient transformation multiplying updates by a (traced) factor."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda u: u * factor, updates), state),
    )


def _data_task(n_values: int, *, closed_over: bool = False) -> Task:
    """A task whose every callable reads a table of `n_values` float32s; with `closed_over`,
    `init_extra` reads it from its closure instead (the bug this rule prevents)."""
    table = jnp.linspace(0.0, 1.0, n_values, dtype=jnp.float32)

    def init(hp, *, key, shared):
        return {"w": jax.random.normal(key, (3,), jnp.float32) + shared[0]}

    def sample(hp, *, key, shared):
        return shared[jax.random.randint(key, (8,), 0, shared.shape[0])]

    def loss(params, x, hp, *, shared):
        return jnp.mean(jnp.square(params["w"][:, None] * hp["offset"] - x[None, :])) + 0.0 * shared[-1]

    def transform(hp, *, shared):
        return _scale_by(1.0 + 0.0 * shared[1])

    def init_extra(params, hp, *, shared):
        source = table if closed_over else shared
        return {"scale": jnp.mean(source), "seen": jnp.float32(0)}  # like an SAE's input-scale statistic

    def prepare(hp, state, *, shared):
        return {**hp, "offset": 1.0 + shared[state.step % shared.shape[0]]}

    def after_update(state, x, aux, hp, *, shared):
        extra = {**state.extra, "seen": state.extra["seen"] + jnp.sum(shared[:4]) + hp["offset"]}
        return eqx.tree_at(lambda s: s.extra, state, extra)

    return Task(init, sample, loss, shared=table, transform=transform, init_extra=init_extra,
                prepare=prepare, after_update=after_update)


def _hlo_sizes(task: Task) -> tuple[int, int]:
    trainer = make_trainer(task, OptimConfig(name="adam"))
    hp = {"learning_rate": np.full(2, 1e-2, np.float32)}
    keys = instance_keys([0, 1])
    init = trainer.lower_init(hp, keys)
    state = jax.eval_shape(trainer.init, hp, keys)
    run = trainer.lower_run(state, hp, 4)
    assert isinstance(init, jax.stages.Lowered) and isinstance(run, jax.stages.Lowered)
    return len(init.as_text()), len(run.as_text())


def test_shared_arrays_never_enter_the_programs():
    small = _hlo_sizes(_data_task(MB // 4))  # 1 MB of shared data
    large = _hlo_sizes(_data_task(MB))  # 4 MB
    for s, l in zip(small, large, strict=True):
        assert l < 100_000  # the data would be megabytes of text
        assert abs(l - s) < 100  # only the shapes' digits differ
    # The check can fail: the same task closing over its data bakes it into the init program.
    baked, _ = _hlo_sizes(_data_task(MB // 4, closed_over=True))
    assert baked > MB


def test_every_callable_receives_shared_and_trains():
    task = _data_task(1000)
    trainer = make_trainer(task, OptimConfig(name="adam"), log_every=2)
    hp = {"learning_rate": np.full(2, 1e-2, np.float32)}
    state = trainer.init(hp, instance_keys([0, 1]))
    np.testing.assert_allclose(np.asarray(state.extra["scale"]), [0.5, 0.5], rtol=1e-6)
    state, trace = trainer.run(state, hp, 4)
    assert trace.shape == (2, 2) and np.isfinite(np.asarray(trace)).all()
    # after_update ran once per step with prepare's offset: 4 · (sum(table[:4]) + 1 + table[step]).
    table = np.linspace(0.0, 1.0, 1000, dtype=np.float32)
    expected = sum(table[:4].sum() + 1.0 + table[s] for s in range(4))
    np.testing.assert_allclose(np.asarray(state.extra["seen"]), [expected] * 2, rtol=1e-5)
    assert np.all(np.asarray(state.step) == 4)


def test_lowered_programs_compile_and_run_like_the_trainer():
    task = _data_task(100)
    trainer = make_trainer(task, OptimConfig(name="adam"))
    hp = {"learning_rate": np.full(2, 1e-2, np.float32)}
    keys = instance_keys([3, 4])
    state = trainer.init(hp, keys)
    compiled_init = trainer.lower_init(hp, keys).compile()
    again = compiled_init(hp, keys, trainer.shared)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert trainer.lower_run(state, hp, 3).compile().memory_analysis() is not None


def test_footprints_are_cached_by_execution_per_trainer():
    from superpos_jax import geometric_importance, toy_hparams, toy_task

    mesh = sweep_mesh(2)
    trainer = make_trainer(toy_task(6, 2, 32), OptimConfig(), log_every=5, mesh=mesh)
    hp = toy_hparams([0.1] * 4, geometric_importance(6, 0.9), ["relu"] * 4, 1e-3)
    sharding = instance_sharding(mesh)
    hp_block = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), hp)
    keys = jax.eval_shape(lambda: instance_keys(range(4)))
    keys_block = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding)
    first = execution.measure_footprint(trainer, hp_block, keys_block)
    assert first is not None and first.call > 0 and first.resident > 0
    assert execution.measure_footprint(trainer, hp_block, keys_block) is first  # no second probe
    assert not hasattr(trainer, "footprints")  # the cache is execution's, not the trainer's
    alive = weakref.ref(trainer)
    del trainer
    gc.collect()
    assert alive() is None  # the cache does not keep the trainer alive


def test_a_sweep_runs_the_probe_program_instead_of_compiling_it_again():
    """The footprint probe compiles the sweep's own program when its block and first call have
    the sweep's shapes; `run_sweep` then runs it, and the results equal those of a sweep that
    compiles through the jit (no probe: the block size given)."""
    from superpos_jax import geometric_importance, toy_hparams, toy_task
    from superpos_jax.engine.sweep import run_sweep

    mesh = sweep_mesh(2)
    hp = toy_hparams([0.1, 0.3, 0.5, 0.7], geometric_importance(6, 0.9), ["relu"] * 4, 1e-3)
    results, trainers = [], []
    for cap in (None, 4):
        trainer = make_trainer(toy_task(6, 2, 32), OptimConfig(), log_every=5).on(mesh)
        out = run_sweep(trainer, hp, instance_keys(range(4)), n_steps=20, chunk_steps=10, progress=False,
                        execution=execution.Execution(mesh=mesh, max_instances_per_call=cap))
        assert out.plan.n_blocks == 1
        results.append(out)
        trainers.append(trainer)
    assert trainers[0]._run_jit._cache_size() == 0  # every call ran the probe's program
    assert trainers[1]._run_jit._cache_size() == 1
    for a, b in zip(jax.tree.leaves(results[0].state), jax.tree.leaves(results[1].state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(results[0].losses, results[1].losses)
