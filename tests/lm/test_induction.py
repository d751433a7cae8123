"""Induction-head scores on hand-built attention patterns, the period-randomised token source,
and the induction-heads experiment: its contract on a tiny config and the phase change on a
reduced one (a layer-0 previous-token head and a layer-1 induction head form from chance)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_experiments import induction_heads
from superpos_jax.config import validate
from superpos_jax.rundir import RunDir
from superpos_jax.engine.distributed import sweep_mesh
from superpos_jax.engine.execution import Execution
from superpos_jax.lm.induction import (
    RandomPeriodRepeats,
    in_context_score,
    induction_observables,
    induction_score,
    previous_token_score,
    split_losses,
)
from superpos_jax.lm.transformer import TransformerConfig, init_transformer


def _uniform_causal(n_pos):
    p = np.tril(np.ones((n_pos, n_pos)))
    return p / p.sum(axis=1, keepdims=True)


def _ideal_induction_pattern(tokens):
    """Attend from t to the position right after the latest earlier occurrence of tokens[t]
    (to BOS when there is none), by brute force."""
    n = len(tokens)
    p = np.zeros((n, n))
    for t in range(n):
        earlier = [j for j in range(t) if tokens[j] == tokens[t]]
        p[t, earlier[-1] + 1 if earlier else 0] = 1.0
    return p


def test_previous_token_score_exact():
    n = 9
    shift = np.eye(n, k=-1)
    shift[0, 0] = 1.0
    assert float(previous_token_score(jnp.asarray(shift, jnp.float32))) == 1.0
    assert float(previous_token_score(jnp.asarray(np.eye(n), jnp.float32))) == 0.0
    expected = np.mean([1.0 / (t + 1) for t in range(1, n)])
    got = previous_token_score(jnp.asarray(_uniform_causal(n), jnp.float32))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_induction_score_off_by_one_on_a_real_sequence():
    half = 5
    seg = [7, 3, 9, 4, 8]  # distinct tokens: the earlier occurrence is unique
    tokens = [0] + seg + seg
    ideal = _ideal_induction_pattern(tokens)
    assert float(induction_score(jnp.asarray(ideal, jnp.float32), half)) == 1.0
    # one position early (the earlier copy of the token itself) and one late both score 0
    for shift in (-1, 1):
        moved = np.zeros_like(ideal)
        for t in range(half + 1, 2 * half + 1):
            moved[t, t - half + 1 + shift] = 1.0
        assert float(induction_score(jnp.asarray(moved, jnp.float32), half)) == 0.0
    # a previous-token pattern is not an induction pattern, and vice versa
    shift = np.eye(2 * half + 1, k=-1)
    assert float(induction_score(jnp.asarray(shift, jnp.float32), half)) == 0.0
    assert float(previous_token_score(jnp.asarray(ideal, jnp.float32))) < 0.5


def test_scores_match_float64_loops_with_leading_dims():
    half, rng = 4, np.random.default_rng(0)
    n = 2 * half + 1
    logits = rng.normal(size=(3, 2, n, n))
    p = np.where(np.tril(np.ones((n, n))) > 0, np.exp(logits), 0.0)
    p /= p.sum(axis=-1, keepdims=True)
    ind = np.mean([p[..., t, t - half + 1] for t in range(half + 1, 2 * half + 1)], axis=0)
    prev = np.mean([p[..., t, t - 1] for t in range(1, n)], axis=0)
    x = jnp.asarray(p, jnp.float32)
    np.testing.assert_allclose(np.asarray(induction_score(x, half)), ind, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(previous_token_score(x)), prev, rtol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        induction_score(x, half + 1)


def test_split_losses_and_in_context_score():
    half = 4
    loss = np.arange(2 * half, dtype=np.float64)[None, :] * np.array([[1.0], [2.0]])  # (2, 8)
    first, repeat = split_losses(jnp.asarray(loss, jnp.float32), half)
    # targets 1..h are entries 0..h-1; the predictable repeat targets h+2..2h are entries h+1..2h-1
    np.testing.assert_allclose(np.asarray(first), loss[:, :half].mean(axis=1))
    np.testing.assert_allclose(np.asarray(repeat), loss[:, half + 1:].mean(axis=1))
    np.testing.assert_allclose(np.asarray(in_context_score(jnp.asarray(loss, jnp.float32), half)),
                               loss[:, half + 1:].mean(axis=1) - loss[:, :half].mean(axis=1))


def test_random_period_repeats_are_periodic():
    src = RandomPeriodRepeats(d_vocab=11, seq_len=25, min_period=3, max_period=9)
    tokens = np.asarray(src.sample(jax.random.key(0), 64))
    assert tokens.shape == (64, 25) and tokens.dtype == np.int32
    assert np.all(tokens[:, 0] == 0) and tokens[:, 1:].min() >= 1 and tokens[:, 1:].max() <= 10
    periods = []
    for row in tokens[:, 1:]:
        period = next(L for L in range(1, 25) if np.array_equal(row[L:], row[:-L]))
        periods.append(period)
    assert min(periods) >= 1 and max(periods) <= 9 and len(set(periods)) >= 4  # periods vary
    with pytest.raises(ValueError):
        RandomPeriodRepeats(d_vocab=11, seq_len=10, min_period=3, max_period=9)


def test_observables_of_an_untrained_model_are_at_chance():
    half = 6
    cfg = TransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=2 * half + 1, d_vocab=20, attn_only=True)
    params = init_transformer(cfg, key=jax.random.key(0))
    seg = np.arange(1, half + 1, dtype=np.int32)
    tokens = np.concatenate([np.zeros(1, np.int32), seg, seg])[None, :]
    out = jax.jit(lambda p, t: induction_observables(p, t, half))(params, tokens)
    assert out["induction"].shape == (2, 2) and out["previous_token"].shape == (2, 2)
    # init_std 0.02: attention is almost exactly uniform over the causal prefix
    uniform = _uniform_causal(2 * half + 1)
    np.testing.assert_allclose(np.asarray(out["induction"]), float(induction_score(jnp.asarray(uniform, jnp.float32), half)), atol=2e-3)
    assert abs(float(out["in_context_score"])) < 0.05 and abs(float(out["first_loss"]) - np.log(20)) < 0.05


def test_phase_change_helpers():
    steps = np.arange(1, 11) * 10
    loss = np.array([4.0, 3.9, 3.8, 3.5, 1.9, 0.5, 0.2, 0.1, 0.1, 0.1])
    assert induction_heads.phase_change_step(loss, steps) == 50
    assert induction_heads.phase_change_step(np.full(10, 4.0), steps) is None
    score = np.array([0.0, 0.0, 0.01, 0.02, 0.05, 0.4, 0.7, 0.75, 0.76, 0.76])
    assert induction_heads.steepest_rise_step(score, steps, width=1) == 60


SCIENCE = {"n_seeds": 1, "seed": 0, "n_steps": 500, "chunk_steps": 500, "log_every": 20}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The experiment end to end on a reduced config (one seed): summary and output directory."""
    cfg = induction_heads.Config(**SCIENCE)
    validate(cfg)
    out = tmp_path_factory.mktemp("induction")
    one_call = Execution(mesh=sweep_mesh(1), max_instances_per_call=1)  # no footprint probe: one compile
    return cfg, induction_heads.run(cfg, RunDir(out), progress=False, execution=one_call), out


def test_experiment_contract(trained):
    cfg, summary, out = trained
    for name in ("loss.png", "head_scores.png", "attention_patterns.png"):
        assert (out / "figures" / name).stat().st_size > 0
    n_windows = cfg.n_steps // cfg.log_every
    assert len(summary["seeds"]) == 1 and summary["n_instances"] == 1
    assert np.shape(summary["trajectories"]["induction"]) == (1, n_windows, 2, cfg.model.n_heads)
    assert np.shape(summary["attention_figure"]["induction_pattern"]) == (2 * cfg.half + 1,) * 2
    json.dumps(summary)


def test_induction_head_forms_in_a_phase_change(trained):
    cfg, summary, _ = trained
    traj = summary["trajectories"]
    ind, prev = np.asarray(traj["induction"])[0], np.asarray(traj["previous_token"])[0]  # (window, layer, head)
    repeat, first = np.asarray(traj["repeat_loss"])[0], np.asarray(traj["first_half_loss"])[0]
    assert ind[0].max() < 0.1 and prev[0].max() < 0.2  # chance after the first window
    assert ind[-1, 1].max() > 0.5, ind[-1].round(2)  # a layer-1 induction head
    assert prev[-1, 0].max() > 0.25, prev[-1].round(2)  # a layer-0 previous-token head (chance ≈ 0.1)
    assert ind[-1, 0].max() < 0.3  # layer 0 alone cannot do induction
    # the repeat loss collapses while the first half stays unpredictable
    assert repeat[-1] < 0.3 * repeat[0] and first[-1] > 0.9 * np.log(cfg.model.d_vocab - 1)
    steps = np.asarray(traj["steps"])
    drop = induction_heads.phase_change_step(repeat, steps)
    rise = induction_heads.steepest_rise_step(ind[:, 1].max(axis=1), steps)
    assert drop is not None and abs(drop - rise) <= 100, (drop, rise)
    seed = summary["seeds"][0]
    assert seed["phase_change_step"] == drop and [1, int(np.argmax(ind[-1, 1]))] in seed["induction_heads"]
