"""Scale-out in one process: sharding over 8 CPU devices, equal padded blocks, memory plans,
NaN isolation, corrupt and mismatched checkpoints."""

import shutil

import jax
import numpy as np
import pytest

from superpos_jax import Grid, OptimConfig, geometric_importance, instance_keys, make_trainer, run_sweep, toy_hparams, toy_task
from superpos_jax.engine import checkpoint
from superpos_jax.engine.distributed import sweep_mesh
from superpos_jax.engine.execution import Execution, Footprint, plan_blocks

N, M, BATCH = 6, 2, 64
KINDS = ["relu", "linear", "relu-hidden"]


@pytest.fixture(scope="module")
def trainer():
    return make_trainer(toy_task(N, M, BATCH), OptimConfig(name="adamw"), log_every=5)


def _sweep(n):
    hp = toy_hparams(np.geomspace(1.0, 0.02, n), geometric_importance(N, 0.9), [KINDS[i % 3] for i in range(n)], 1e-2)
    return hp, instance_keys(range(100, 100 + n))


def _assert_same(a, b, exact=True):
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    if exact:
        np.testing.assert_array_equal(a.losses, b.losses)
    else:
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5, atol=1e-7)


def test_sharded_equals_unsharded(trainer):
    hp, keys = _sweep(13)  # 13 instances: padded to 16 on 8 devices
    kw = dict(n_steps=60, chunk_steps=30, progress=False)
    one = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(1)), **kw)
    eight = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(8)), **kw)
    assert eight.plan.n_devices == 8 and eight.plan.padded_size == 16 and eight.plan.n_blocks == 1
    assert one.losses.shape == eight.losses.shape == (13, 12) and one.state.params.W.shape == (13, M, N)
    # XLA may sum in another order when a device holds another number of instances: equal to float32 rounding.
    _assert_same(one, eight, exact=False)
    # With the same instances per device (2), the programs are the same and so are the bits.
    one_by_two = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(1), max_instances_per_call=2), **kw)
    assert one_by_two.plan.n_blocks == 7
    _assert_same(one_by_two, eight)


def test_default_mesh_uses_no_more_devices_than_instances(trainer):
    """By default a sweep of 3 instances runs on 3 of the 8 devices (no device computes only
    padding), 13 on all 8; the results are those of an explicit 8-device mesh."""
    assert jax.device_count() == 8
    assert Execution().resolved_mesh(3).devices.size == 3 and Execution().resolved_mesh(13).devices.size == 8
    assert Execution().resolved_mesh().devices.size == 8 and Execution(sweep_mesh(8)).resolved_mesh(3).devices.size == 8
    hp, keys = _sweep(3)
    kw = dict(n_steps=40, chunk_steps=20, progress=False)
    default = run_sweep(trainer, hp, keys, **kw)
    eight = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(8)), **kw)
    assert (default.plan.n_devices, default.plan.padded_size) == (3, 3)
    assert (eight.plan.n_devices, eight.plan.padded_size) == (8, 8)
    _assert_same(default, eight)  # one instance per device either way: the same program


def test_blocked_equals_one_block(trainer):
    hp, keys = _sweep(13)
    kw = dict(n_steps=40, chunk_steps=20, progress=False)
    whole = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(4), max_instances_per_call=16), **kw)
    blocked = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(4), max_instances_per_call=4), **kw)
    assert (whole.plan.n_blocks, whole.plan.block_size) == (1, 16)
    assert (blocked.plan.n_blocks, blocked.plan.block_size) == (4, 4)
    _assert_same(whole, blocked, exact=False)
    # Equal blocks with one instance per device run the same program as 4 blocks of 4.
    mirrored = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(2), max_instances_per_call=2), **kw)
    _assert_same(mirrored, blocked)


@pytest.mark.parametrize("n, devices, cap", [(1, 8, None), (13, 8, 5), (100_000, 8, 4096), (10, 3, 4), (7, 1, 3)])
def test_plan_blocks_are_equal_padded_and_minimal(n, devices, cap):
    plan = plan_blocks(n, devices, max_instances_per_call=cap)
    assert plan.block_size % devices == 0
    assert plan.padded_size >= n
    assert plan.padded_size - n < devices * plan.n_blocks  # under one instance per device per block
    if cap is not None:
        assert plan.block_size <= max(cap, devices) or plan.block_size == devices
        assert plan.n_blocks == -(-(-(-n // devices)) // max(1, cap // devices))


def test_plan_from_memory_budget():
    fp = Footprint(call=1000.0, resident=10.0)
    # 100k instances on 8 devices: 12,500 per device resident = 125 kB; 1 MB budget leaves 875 calls' worth.
    plan = plan_blocks(100_000, 8, footprint=fp, budget_bytes=1_000_000)
    assert plan.block_size // 8 <= 875 and plan.n_blocks == -(-12_500 // 875)
    assert plan.padded_size - 100_000 < 8 * plan.n_blocks
    assert "budget" in plan.describe()
    assert plan_blocks(50, 1, footprint=fp, budget_bytes=10**9).n_blocks == 1
    # A cache-sized target (CPU): 8 MiB at 300 kB per instance is 27 per call.
    cpu = plan_blocks(1024, 1, footprint=Footprint(300e3, 2e3), budget_bytes=1e10, target_bytes=8 * 2**20)
    assert (cpu.block_size, cpu.n_blocks) == (27, 38)
    assert plan_blocks(4, 2, footprint=Footprint(1e9, 1.0), budget_bytes=1e10, target_bytes=1e6).block_size == 2
    with pytest.raises(MemoryError, match="states of 100000 instances"):
        plan_blocks(100_000, 1, footprint=fp, budget_bytes=500_000)
    with pytest.raises(MemoryError, match="one instance needs"):
        plan_blocks(10, 1, footprint=Footprint(call=1e9, resident=1.0), budget_bytes=1e6)


def test_measured_budget_splits_into_blocks(trainer):
    hp, keys = _sweep(40)
    kw = dict(n_steps=10, progress=False)
    roomy = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(2)), **kw)
    fp = roomy.plan.footprint
    assert roomy.plan.n_blocks == 1 and fp is not None and fp.call > BATCH * N * 4  # at least one batch of floats
    # A budget that fits ~6 instances per device per call: the same sweep runs in equal blocks.
    fraction = (6.5 * fp.call + 20 * fp.resident) / roomy.plan.budget_bytes * 0.5
    tight = run_sweep(trainer, hp, keys, execution=Execution(sweep_mesh(2), memory_fraction=fraction), **kw)
    assert tight.plan.n_blocks == 4 and tight.plan.block_size == 10
    _assert_same(roomy, tight, exact=False)


def test_nan_in_one_instance_is_reported_and_isolated(trainer, capsys):
    hp, keys = _sweep(5)
    clean = run_sweep(trainer, hp, keys, n_steps=40, chunk_steps=10, progress=False)
    poisoned = jax.tree.map(np.array, hp)
    poisoned["learning_rate"][3] = np.inf  # Adam step of size inf: NaN weights from step 1
    grid = Grid({"case": ["a", "b", "c", "d", "e"]})
    bad = run_sweep(trainer, poisoned, keys, n_steps=40, chunk_steps=10, progress=False, grid=grid)
    assert bad.non_finite == {3: 10}
    err = capsys.readouterr().err
    assert "instance 3 {'case': 'd'}" in err and "steps 0-10" in err
    assert not np.isfinite(bad.state.params.W[3]).all()
    keep = [0, 1, 2, 4]
    np.testing.assert_array_equal(bad.state.params.W[keep], clean.state.params.W[keep])
    np.testing.assert_array_equal(bad.losses[keep], clean.losses[keep])


def test_corrupt_checkpoint_falls_back_to_last_good_one(trainer, tmp_path, capsys):
    hp, keys = _sweep(3)
    kw = dict(n_steps=40, chunk_steps=10, progress=False)
    full = run_sweep(trainer, hp, keys, **kw)
    ckpt = tmp_path / "checkpoints"
    run_sweep(trainer, hp, keys, checkpoint_dir=ckpt, **{**kw, "n_steps": 40})
    assert checkpoint.steps(ckpt) == [20, 30, 40]
    # Damage the newest step: truncate every data file in it; delete the one below it partially.
    for f in (ckpt / "40").rglob("*"):
        if f.is_file():
            f.write_bytes(f.read_bytes()[:3])
    shutil.rmtree(next(p for p in (ckpt / "30").iterdir() if p.name == "state"))
    resumed = run_sweep(trainer, hp, keys, checkpoint_dir=ckpt, **kw)
    err = capsys.readouterr().err
    assert "step 40" in err and "step 30" in err and "unreadable" in err
    assert resumed.start_step == 20
    _assert_same(resumed, full)
    # The damaged steps are kept aside, not deleted, and the run re-wrote good ones.
    assert sorted(p.name for p in (tmp_path / "checkpoints-corrupt").iterdir()) == ["30", "40"]
    assert checkpoint.steps(ckpt) == [20, 30, 40]


def test_no_readable_checkpoint_is_a_clear_error(trainer, tmp_path):
    hp, keys = _sweep(2)
    ckpt = tmp_path / "c"
    run_sweep(trainer, hp, keys, n_steps=10, chunk_steps=10, checkpoint_dir=ckpt, progress=False)
    for f in (ckpt / "10").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint"):
        run_sweep(trainer, hp, keys, n_steps=10, chunk_steps=10, checkpoint_dir=ckpt, progress=False)


def test_mismatched_fingerprint_refuses_to_resume(trainer, tmp_path):
    hp, keys = _sweep(2)
    ckpt = tmp_path / "c"
    run_sweep(trainer, hp, keys, n_steps=20, chunk_steps=10, checkpoint_dir=ckpt, progress=False,
              fingerprint={"config": {"lr": 0.01, "n_features": 6}})
    before = sorted(p.name for p in ckpt.iterdir())
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"config.lr: checkpoint has 0.01, this run has 0.02"):
        run_sweep(trainer, hp, keys, n_steps=20, chunk_steps=10, checkpoint_dir=ckpt, progress=False,
                  fingerprint={"config": {"lr": 0.02, "n_features": 6}})
    with pytest.raises(checkpoint.CheckpointMismatch, match="n_steps: checkpoint has 20, this run has 30"):
        run_sweep(trainer, hp, keys, n_steps=30, chunk_steps=10, checkpoint_dir=ckpt, progress=False,
                  fingerprint={"config": {"lr": 0.01, "n_features": 6}})
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_bad_hparams_shape_is_named(trainer):
    hp, keys = _sweep(3)
    with pytest.raises(ValueError, match=r"hparams\['feature_probability'\] has shape \(3, 6\).*size 4"):
        run_sweep(trainer, hp, instance_keys(range(4)), n_steps=5, progress=False)
