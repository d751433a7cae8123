"""metrics.jsonl: one standard-JSON line per chunk with loss quantiles and per-instance values
by grid coordinates; resumed runs write the same file; TensorBoard scalars behind an extra."""

import json
import struct
import sys

import numpy as np
import pytest

from superpos_jax import Grid, OptimConfig, feature_dimensionality, geometric_importance, instance_keys, make_trainer
from superpos_jax import run_sweep, toy_hparams, toy_task
from superpos_jax.engine import metrics_log
from superpos_jax.engine.metrics_log import MetricsLog, chunk_record

N, M, BATCH = 6, 2, 64
GRID = Grid({"model": ["relu", "linear"], "feature_probability": [0.3, 0.05], "seed": [0]})
STEPS, CHUNK, LOG_EVERY = 40, 10, 5


def _observe(params, hparams):
    return {"D": feature_dimensionality(params.W), "W00": params.W[0, 0], "nested": {"b0": params.b[0]}}


@pytest.fixture(scope="module")
def trainer():
    return make_trainer(toy_task(N, M, BATCH), OptimConfig(), log_every=LOG_EVERY, observe=_observe)


def _inputs(poison: int | None = None):
    hp = toy_hparams(GRID.column("feature_probability"), geometric_importance(N, 0.9), GRID.column("model"), 1e-2)
    if poison is not None:
        hp["learning_rate"][poison] = np.inf  # NaN weights from the first step
    return hp, instance_keys(range(GRID.size))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_wall_time(records):
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in records]


def test_one_line_per_chunk_with_quantiles_coords_and_observations(trainer, tmp_path):
    hp, keys = _inputs()
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    result = run_sweep(trainer, hp, keys, n_steps=STEPS, chunk_steps=CHUNK, progress=False, grid=GRID, metrics=log)
    records = _lines(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    walls = [r["wall_seconds"] for r in records]
    assert all(w > 0 for w in walls) and walls == sorted(walls)
    for r in records:
        w = r["step"] // LOG_EVERY - 1  # the chunk's last window
        last = result.losses[:, w].astype(np.float64)
        assert r["n_non_finite"] == 0
        np.testing.assert_allclose([r["loss"][k] for k in ("min", "q25", "median", "q75", "max")],
                                   np.quantile(last, [0, 0.25, 0.5, 0.75, 1]), rtol=1e-6)
        np.testing.assert_allclose(r["loss"]["mean"], last.mean(), rtol=1e-6)
        assert [row["instance"] for row in r["instances"]] == list(range(GRID.size))
        for i, row in enumerate(r["instances"]):
            assert row["coords"] == GRID.coords(i)
            assert set(row) == {"instance", "coords", "loss", "W00", "nested.b0"}  # D is a vector: not written
            np.testing.assert_allclose(row["loss"], result.losses[i, w], rtol=1e-6)
            np.testing.assert_allclose(row["W00"], result.observations["W00"][i, w], rtol=1e-6)
            np.testing.assert_allclose(row["nested.b0"], result.observations["nested"]["b0"][i, w], rtol=1e-6, atol=1e-12)


def test_non_finite_values_are_null_and_counted(trainer, tmp_path):
    hp, keys = _inputs(poison=1)
    path = tmp_path / "metrics.jsonl"
    result = run_sweep(trainer, hp, keys, n_steps=20, chunk_steps=10, progress=False, grid=GRID, metrics=MetricsLog(path))
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # standard JSON
    for r in _lines(path):
        assert r["n_non_finite"] == 1
        assert r["instances"][1]["loss"] is None and r["instances"][1]["W00"] is None
        finite = np.delete(result.losses[:, r["step"] // LOG_EVERY - 1], 1)
        np.testing.assert_allclose(r["loss"]["max"], finite.max(), rtol=1e-6)
    assert chunk_record(5, 1.0, np.full(3, np.nan), {}, [{}] * 3)["loss"] == dict.fromkeys(
        ("min", "q25", "median", "q75", "max", "mean"))


def test_resumed_run_writes_the_uninterrupted_file(trainer, tmp_path, monkeypatch, crash_after_chunks):
    hp, keys = _inputs()
    kw = dict(n_steps=STEPS, chunk_steps=CHUNK, progress=False, grid=GRID)
    run_sweep(trainer, hp, keys, metrics=MetricsLog(tmp_path / "full.jsonl"), **kw)

    path, ckpt = tmp_path / "metrics.jsonl", tmp_path / "checkpoints"
    crash_after_chunks(trainer, 2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(trainer, hp, keys, checkpoint_dir=ckpt, metrics=MetricsLog(path), **kw)
    monkeypatch.undo()
    assert [r["step"] for r in _lines(path)] == [10, 20]
    # Lines the restored checkpoint does not cover (written before a crash) and a torn line.
    with path.open("a") as f:
        f.write(json.dumps({**_lines(path)[-1], "step": 30}) + "\n" + '{"step": 40, "wall_sec')
    resumed = run_sweep(trainer, hp, keys, checkpoint_dir=ckpt, metrics=MetricsLog(path), **kw)
    assert resumed.start_step == 20
    full, again = _lines(tmp_path / "full.jsonl"), _lines(path)
    assert [r["step"] for r in again] == [10, 20, 30, 40]
    assert _without_wall_time(again) == _without_wall_time(full)
    assert again[2]["wall_seconds"] > again[1]["wall_seconds"]  # wall time continues across the resume
    # A finished run resumed again keeps its file as it is.
    run_sweep(trainer, hp, keys, checkpoint_dir=ckpt, metrics=MetricsLog(path), **kw)
    assert _lines(path) == again


def test_pandas_reads_the_file(trainer, tmp_path):
    pd = pytest.importorskip("pandas")
    hp, keys = _inputs()
    path = tmp_path / "metrics.jsonl"
    run_sweep(trainer, hp, keys, n_steps=20, chunk_steps=10, progress=False, grid=GRID, metrics=MetricsLog(path))
    frame = pd.read_json(path, lines=True)
    assert list(frame["step"]) == [10, 20] and len(frame["instances"][0]) == GRID.size


def test_sweeps_sharing_a_file_keep_each_others_lines(trainer, tmp_path):
    hp, keys = _inputs()
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    kw = dict(chunk_steps=10, progress=False, grid=GRID)
    run_sweep(trainer, hp, keys, n_steps=20, metrics=log.for_sweep("small"), **kw)
    run_sweep(trainer, hp, keys, n_steps=30, metrics=log.for_sweep("large"), **kw)
    first = _lines(path)
    assert [(r["sweep"], r["step"]) for r in first] == [("small", 10), ("small", 20), ("large", 10), ("large", 20), ("large", 30)]
    run_sweep(trainer, hp, keys, n_steps=20, metrics=log.for_sweep("small"), **kw)  # a restart from 0 of one sweep
    assert [(r["sweep"], r["step"]) for r in _lines(path)] == [("large", 10), ("large", 20), ("large", 30), ("small", 10), ("small", 20)]
    with pytest.raises(ValueError, match="'loss'"):
        metrics_log.observation_names({"loss": 1.0})


def test_only_process_zero_writes(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log, "is_primary", lambda: False)
    hp, keys = _inputs()
    run_sweep(trainer, hp, keys, n_steps=10, chunk_steps=10, progress=False, metrics=MetricsLog(tmp_path / "m.jsonl"))
    assert not (tmp_path / "m.jsonl").exists()


def _tensorboard_scalars(logdir):
    """(tag, step, value) of every scalar in the event files under `logdir` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_tensorboard_gets_the_same_scalars(trainer, tmp_path):
    pytest.importorskip("tensorboardX")
    hp, keys = _inputs()
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
    run_sweep(trainer, hp, keys, n_steps=20, chunk_steps=10, progress=False, grid=GRID, metrics=log)
    scalars = _tensorboard_scalars(tmp_path / "tb")
    records = _lines(tmp_path / "metrics.jsonl")
    by_tag = {(tag, step): value for tag, step, value in scalars}
    for r in records:
        for q in ("min", "median", "max", "mean"):
            assert by_tag[(f"loss/{q}", r["step"])] == pytest.approx(r["loss"][q], rel=1e-6)
        assert by_tag[("loss/n_non_finite", r["step"])] == 0
        row = r["instances"][2]  # coords model=linear, feature_probability=0.3, seed=0
        tag = "instance/model_linear.feature_probability_0.3.seed_0"
        assert by_tag[(f"{tag}/loss", r["step"])] == pytest.approx(row["loss"], rel=1e-6)
        assert by_tag[(f"{tag}/W00", r["step"])] == pytest.approx(row["W00"], rel=1e-6)


def test_missing_tensorboardx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"superpos-jax\[tensorboard\]"):
        MetricsLog(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb")
    MetricsLog(tmp_path / "m.jsonl")  # without TensorBoard nothing is imported
