"""lottery-ticket on a reduced config: n=20 features in m=5 dims at 1 − S ∈ {0.3, 0.1}, prune
rates 0 (the control of the procedure itself) and 0.5 per round, 2 rounds (25 % of W kept),
3 seeds, 2,000 steps (dense) and 1,950 (each round, after rewinding to step 50). One shared
run (module fixture).

Margins, measured on this config (2-core CPU): pruning nothing gives loss ratios to the dense
model of 0.98–1.01 and Gram distances ≤ 0.012; at 25 % kept the ticket's excess loss over the
dense model is 0.07 / 0.06 (mean over seeds) against 0.33 / 0.43 for the random re-init, and
every seed's ticket beats its control (smallest gap: 1.00 vs 1.13 × the dense loss)."""

import json

import jax
import numpy as np
import pytest

from superpos_experiments import common, lottery_ticket
from superpos_jax.config import ConfigError, validate
from superpos_jax.rundir import RunDir
from superpos_jax.toy.pruning import keep_count

CFG = lottery_ticket.Config(
    feature_probabilities=(0.3, 0.1), prune_rates=(0.0, 0.5), n_rounds=2, n_seeds=3,
    n_steps=2_000, chunk_steps=2_000, rewind_step=50, moderate_fraction=0.25,
)
N_WEIGHTS = CFG.n_features * CFG.d_hidden


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    validate(CFG)
    out = tmp_path_factory.mktemp("lottery")
    run_dir = RunDir(out)
    lottery = lottery_ticket.train_lottery(CFG, run_dir, progress=False)
    summary = lottery_ticket.analyse(CFG, run_dir, lottery)
    return lottery, summary, out


def _rate(grid, rate):
    return grid.column("prune_rate") == rate


def test_summary_fields_and_figures(trained):
    lottery, summary, out = trained
    json.dumps(summary)
    for name in ("loss", "geometry", "gram", "loss_curves"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000, name
    assert summary["remaining_fraction"] == {"0.0": [1.0, 1.0, 1.0], "0.5": [1.0, 0.5, 0.25]}
    assert summary["moderate"]["prune_rate"] == 0.5 and summary["moderate"]["remaining_fraction"] == 0.25
    assert summary["n_instances"] == 6 + 2 * 24 and summary["non_finite_instances"] == 0
    assert len(summary["curves"]) == 4 and len(summary["instances"]) == summary["n_instances"]
    curve = summary["curves"][1]
    assert (curve["feature_probability"], curve["prune_rate"]) == (0.3, 0.5)
    assert [r["n_weights_kept"] for r in curve["rounds"]] == [100, 50, 25]
    for key in ("final_loss", "final_loss_mean", "n_represented", "jaccard_mean", "gram_distance_mean",
                "dimensionality_error_mean"):
        assert key in curve["rounds"][2]["rewind"] and key in curve["rounds"][2]["reinit"]
    # Round 0 is the dense model itself: perfect geometry against itself.
    assert curve["rounds"][0]["rewind"]["jaccard_mean"] == 1.0 and curve["rounds"][0]["rewind"]["gram_distance_mean"] == 0.0


def test_masks_are_exact_nested_and_shared_by_both_arms(trained):
    lottery, _, _ = trained
    previous = None
    for r, sweep in enumerate(lottery.rounds, start=1):
        mask, W, grid = sweep.hparams["mask"], sweep.W, sweep.grid
        assert set(np.unique(mask)) <= {0.0, 1.0}
        np.testing.assert_array_equal(W[mask == 0], 0.0)  # pruned weights stayed exactly 0 through training
        assert np.all(np.abs(W[mask == 1]) > 0)
        expected = keep_count(N_WEIGHTS, grid.column("prune_rate"), r)
        np.testing.assert_array_equal(mask.sum(axis=(1, 2)), expected)
        folded = grid.fold(mask)  # (rate, prob, seed, init, m, n)
        np.testing.assert_array_equal(folded[..., 0, :, :], folded[..., 1, :, :])
        if previous is not None:
            assert np.all(mask <= previous)
        previous = mask


def test_tickets_start_from_theta_k_and_controls_from_a_fresh_draw(trained):
    lottery, _, _ = trained
    dense = lottery.dense
    # θ_k is the dense model after rewind_step updates: train one dense instance that far alone.
    trainer = lottery_ticket.trainer(CFG)
    keys = common.seed_keys(CFG.seed, dense.grid)
    hp = jax.tree.map(lambda a: a[:1], dense.hparams)
    state, _ = trainer.run(trainer.init(hp, keys[:1]), hp, CFG.rewind_step)
    np.testing.assert_allclose(lottery.rewind_W[0], np.asarray(state.params.W)[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(lottery.rewind_W, dense.hparams["init_W"])
    sweep = lottery.rounds[1]
    grid = sweep.grid
    folded_init, folded_mask = grid.fold(sweep.hparams["init_W"]), grid.fold(sweep.hparams["mask"])
    theta_k = lottery.rewind_W.reshape(len(CFG.feature_probabilities), CFG.n_seeds, CFG.d_hidden, CFG.n_features)
    np.testing.assert_array_equal(folded_init[:, :, :, 0], np.broadcast_to(theta_k, folded_init[:, :, :, 0].shape))
    control = folded_init[:, :, :, 1]  # (the task starts from init_W ⊙ mask)
    assert not np.any(np.isclose(control, theta_k[None])[folded_mask[:, :, :, 1] == 1])
    assert not np.any(np.isclose(control, lottery.dense.hparams["init_W"].reshape(theta_k.shape)[None]))


def test_one_instance_of_the_sweep_equals_it_trained_alone(trained):
    lottery, _, _ = trained
    sweep = lottery.rounds[1]
    i = int(np.flatnonzero(_rate(sweep.grid, 0.5) & (sweep.grid.column("init") == "reinit"))[-1])
    trainer = lottery_ticket.trainer(CFG)
    keys = common.seed_keys(CFG.seed, sweep.grid)[i:i + 1]
    hp = jax.tree.map(lambda a: a[i:i + 1], sweep.hparams)
    state, _ = trainer.run(trainer.init(hp, keys), hp, lottery_ticket.round_steps(CFG))
    np.testing.assert_allclose(np.asarray(state.params.W)[0], sweep.W[i], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.params.b)[0], sweep.b[i], rtol=1e-4, atol=1e-5)


def test_pruning_nothing_reproduces_the_dense_loss(trained):
    """Prune rate 0: the all-ones 'ticket' rewound to θ_k trains back to the dense loss."""
    lottery, _, _ = trained
    sweep = lottery.rounds[0]
    grid = sweep.grid
    dense_i = grid.index("feature_probability") * CFG.n_seeds + grid.index("seed")
    ticket = _rate(grid, 0.0) & (grid.column("init") == "rewind")
    np.testing.assert_array_equal(sweep.hparams["mask"][ticket], 1.0)
    ratio = sweep.final_loss[ticket] / lottery.dense.final_loss[dense_i[ticket]]
    assert np.all(np.abs(ratio - 1.0) < 0.05), ratio
    # and keeps the dense geometry: same represented features, nearly the same Gram matrix.
    geo = lottery_ticket.geometry_kept(sweep.W[ticket], lottery.dense.W[dense_i[ticket]], CFG.represented_threshold)
    assert np.all(geo["jaccard"] == 1.0) and np.all(geo["gram_distance"] < 0.05), geo


def test_rewound_ticket_beats_its_random_reinit_at_moderate_pruning(trained):
    """25 % of W kept: the rewound ticket's loss is closer to the dense loss than the same mask
    from a random init, at every sparsity for every seed, and by a clear margin on average."""
    _, summary, _ = trained
    for cell in summary["moderate"]["per_sparsity"]:
        ticket, control = np.array(cell["ticket_loss"]), np.array(cell["control_loss"])
        assert np.all(ticket < control), cell
        assert cell["control_excess"] > cell["ticket_excess"] + 0.15, cell
        assert cell["ticket_excess"] < 0.15, cell


def test_bad_rewind_step_fails_in_validation():
    import dataclasses

    with pytest.raises(ConfigError, match="rewind_step"):
        validate(dataclasses.replace(CFG, rewind_step=CFG.n_steps))
    with pytest.raises(ConfigError, match="prune_rates"):
        validate(dataclasses.replace(CFG, prune_rates=(1.0,)))
