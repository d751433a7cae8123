"""Induction heads (Olsson et al., 2022): a two-layer attention-only transformer on repeated
random token sequences forms a previous-token head (layer 0) and induction heads (layer 1) in a
phase change, seen as a sudden drop of the loss on the repeated tokens.

Setup: sequences [BOS, r_1..r_L, r_1..r_L, ...] of 2·half + 1 tokens, r uniform over
1..d_vocab−1, period L drawn per sequence from min_period..half; next-token loss over all
positions (the first occurrence is irreducible noise, log(d_vocab − 1); the repeats can be copied).
A varying period is essential: with the fixed layout [BOS, r, r] (`lm_task.RepeatedTokens`) the
repeat is always `half` positions back and a learned-positional-embedding model copies with one
positional head, never forming induction heads (their score stays at chance while the loss drops).

Every seed trains in one compiled, vmapped sweep. Inside the scan (the trainer's `observe`, every
`log_every` steps) the model is scored on a FIXED batch of `n_eval` sequences of the layout
[BOS, r_1..r_h, r_1..r_h], h = half (`superpos_jax.lm.induction`): per-head previous-token score
(attention t → t − 1), induction score (attention from t in the repeat to t − h + 1, the token
after the earlier occurrence), and the first-half and repeat losses. The phase change of a seed
is the first step whose repeat loss falls below half its initial value; the steepest rise of the
best layer-1 induction score is reported beside it.

Scale: the paper's models are trained on text for billions of tokens; this toy setting shows the
mechanism on a 2-core CPU: the phase change comes at ~250 steps, and the default (3 seeds × 1,500
steps) trains in ~3 minutes there. With a wider period range (min_period=3) or lr 2e-3 some seeds
found non-induction solutions in our probes; the defaults form induction heads in every seed tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import jax
import jax.numpy as jnp
import numpy as np

from . import common
from superpos_jax.config import NonNegativeInt, PositiveFloat, PositiveInt, fail, unit_open
from superpos_jax.engine.distributed import is_primary
from superpos_jax.engine.execution import Execution
from superpos_jax.rundir import RunDir
from superpos_jax.lm.induction import RandomPeriodRepeats, induction_observables
from superpos_jax.lm.task import RepeatedTokens, lm_task
from superpos_jax.lm.transformer import TransformerConfig, forward
from superpos_jax import plots
from superpos_jax.engine.sweep import Grid
from superpos_jax.engine.trainer import make_trainer

NAME = "induction-heads"
DESCRIPTION = "2-layer attention-only transformer on repeated random tokens: induction heads form in a phase change"


@dataclass(frozen=True)
class Config(common.TrainingConfig):
    model: TransformerConfig = TransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=33, d_vocab=64, attn_only=True)
    """The transformer; its context is BOS + a random half of (n_ctx - 1) / 2 tokens, repeated."""
    min_period: PositiveInt = 6
    n_seeds: PositiveInt = 3
    n_eval: PositiveInt = 16
    eval_seed: NonNegativeInt = 12345
    n_steps: PositiveInt = 1_500
    chunk_steps: PositiveInt = 1_500
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    log_every: PositiveInt = 10
    induction_threshold: Annotated[float, unit_open] = 0.4
    previous_threshold: Annotated[float, unit_open] = 0.3

    @property
    def half(self) -> int:
        """Length of the repeated half: the context is [BOS, r, r] with |r| = half."""
        return (self.model.n_ctx - 1) // 2

    def check(self) -> None:
        """model.n_layers >= 2, model.d_vocab >= 3, model.n_ctx odd and >= 5, min_period <= half."""
        super().check()
        if self.model.n_layers < 2:
            fail("model.n_layers", self.model.n_layers, ">= 2 (an induction head composes with an earlier layer)")
        if self.model.d_vocab < 3:
            fail("model.d_vocab", self.model.d_vocab, ">= 3")
        if self.model.n_ctx % 2 == 0 or self.model.n_ctx < 5:
            fail("model.n_ctx", self.model.n_ctx, "odd and >= 5 (BOS and two copies of a half of at least 2 tokens)")
        if self.min_period > self.half:
            fail("min_period", self.min_period, f"<= half = (model.n_ctx - 1) / 2 = {self.half}")


QUICK = {"n_seeds": 2, "n_steps": 600, "chunk_steps": 600}


def eval_tokens(cfg: Config) -> np.ndarray:
    """The fixed evaluation batch [BOS, r, r], int32 (n_eval, 2·half + 1)."""
    return np.asarray(RepeatedTokens(cfg.model.d_vocab, cfg.half).sample(jax.random.key(cfg.eval_seed), cfg.n_eval))


def build(cfg: Config):
    """The grid (seeds), per-instance hparams, keys and the observing trainer."""
    grid = Grid({"seed": range(cfg.n_seeds)})
    source = RandomPeriodRepeats(cfg.model.d_vocab, 2 * cfg.half + 1, cfg.min_period, cfg.half)
    task = lm_task(cfg.model, source, cfg.batch_size)
    tokens = eval_tokens(cfg)

    def observe(params, hparams) -> dict[str, jax.Array]:
        return induction_observables(params, tokens, cfg.half)

    trainer = make_trainer(task, cfg.optim(), log_every=cfg.log_every, observe=observe)
    hparams = {"learning_rate": np.full(grid.size, cfg.learning_rate, np.float32)}
    return grid, hparams, common.seed_keys(cfg.seed, grid), trainer


def phase_change_step(repeat_loss: np.ndarray, steps: np.ndarray, fraction: float = 0.5) -> int | None:
    """The first step whose repeat loss is below `fraction` × its initial (first-window) value,
    or None if it never is. `repeat_loss`, `steps`: (window,)."""
    below = np.flatnonzero(np.asarray(repeat_loss) < fraction * float(repeat_loss[0]))
    return int(steps[below[0]]) if below.size else None


def steepest_rise_step(score: np.ndarray, steps: np.ndarray, width: int = 3) -> int:
    """The step in the middle (rounded up) of the largest rise of `score` (window,) over `width`
    consecutive windows; `steps` (window,)."""
    score = np.asarray(score, np.float64)
    width = max(1, min(width, score.size - 1))
    rise = score[width:] - score[:-width]
    j = int(np.argmax(rise))
    return int(steps[j + (width + 1) // 2]) if rise.size else int(steps[0])


def _round(x: np.ndarray, digits: int = 4) -> Any:
    return np.round(np.asarray(x, np.float64), digits).tolist()


def run(cfg: Config, out_dir: RunDir, *, progress: bool = True, execution: Execution = Execution()) -> dict[str, Any]:
    """Train every seed in one sweep, find the phase change, write the figures, return the summary."""
    grid, hparams, keys, trainer = build(cfg)
    result = common.train(NAME, cfg, grid, hparams, keys, trainer, out_dir, progress=progress, execution=execution)
    final_loss, ok = common.final_losses(result)
    steps = (np.arange(result.losses.shape[1]) + 1) * cfg.log_every
    obs = {k: np.asarray(v) for k, v in result.observations.items()}
    induction, previous = obs["induction"], obs["previous_token"]  # (seed, window, layer, head)
    first, repeat = obs["first_loss"], obs["repeat_loss"]  # (seed, window)

    seeds = []
    for s in range(grid.size):
        best_induction = induction[s, :, 1:].reshape(induction.shape[1], -1).max(axis=1)
        final_ind, final_prev = induction[s, -1], previous[s, -1]
        seeds.append({
            "seed": s, "finite": bool(ok[s]), "final_loss": float(final_loss[s]),
            "phase_change_step": phase_change_step(repeat[s], steps),
            "induction_steepest_rise_step": steepest_rise_step(best_induction, steps),
            "initial_repeat_loss": float(repeat[s, 0]), "final_repeat_loss": float(repeat[s, -1]),
            "final_first_half_loss": float(first[s, -1]),
            "final_in_context_score": float(obs["in_context_score"][s, -1]),
            "initial_max_induction_score": float(induction[s, 0].max()),
            "final_induction_scores": _round(final_ind), "final_previous_token_scores": _round(final_prev),
            "induction_heads": [[int(l), int(h)] for l, h in zip(*np.nonzero(final_ind > cfg.induction_threshold))],
            "previous_token_heads": [[int(l), int(h)] for l, h in zip(*np.nonzero(final_prev > cfg.previous_threshold))],
        })

    # the attention figure: the seed with the strongest induction head, its best heads of each kind
    shown = int(np.argmax(np.where(ok, induction[:, -1, 1:].reshape(grid.size, -1).max(axis=1), -np.inf)))
    ind_head = np.unravel_index(int(np.argmax(induction[shown, -1])), induction.shape[2:])
    prev_head = np.unravel_index(int(np.argmax(previous[shown, -1])), previous.shape[2:])
    params = jax.tree.map(lambda x: x[shown], result.state.params)
    tokens = eval_tokens(cfg)[:1]
    names = [f"blocks.{i}.attn.pattern" for i in range(cfg.model.n_layers)]
    _, cache = jax.jit(lambda p, t: forward(p, t, cache_names=names))(params, jnp.asarray(tokens))
    pattern = {(l, h): np.asarray(cache[names[l]][0, h]) for (l, h) in (tuple(map(int, ind_head)), tuple(map(int, prev_head)))}
    prev_key, ind_key = tuple(map(int, prev_head)), tuple(map(int, ind_head))

    phase_steps = [r["phase_change_step"] for r in seeds]
    if is_primary():
        figures = out_dir.figures
        model = (f"2-layer attention-only, d_model={cfg.model.d_model}, {cfg.model.n_heads} heads, vocab {cfg.model.d_vocab}; "
                 f"repeats of period {cfg.min_period}..{cfg.half}, evaluated on [BOS, r, r] with |r|={cfg.half}")
        plots.save(plots.phase_change_loss_figure(
            steps, result.losses, first, repeat, phase_steps=phase_steps,
            chance=float(np.log(cfg.model.d_vocab - 1)), title=model + "\ndashed: phase change (repeat loss < ½ initial)",
        ), figures / "loss.png")
        plots.save(plots.score_trajectories_figure(
            steps, induction, previous, repeat, phase_steps=phase_steps,
            title=model + "\none line per head (blue: layer 0, red: layer 1); dashed: phase change",
        ), figures / "head_scores.png")
        plots.save(plots.attention_patterns_figure(
            tokens[0], [pattern[prev_key], pattern[ind_key]],
            [f"previous-token head {prev_key[0]}.{prev_key[1]} (score {previous[shown, -1][prev_key]:.2f})",
             f"induction head {ind_key[0]}.{ind_key[1]} (score {induction[shown, -1][ind_key]:.2f})"],
            title=f"seed {shown}, end of training, one evaluation sequence [BOS, r, r]",
        ), figures / "attention_patterns.png")

    return {
        **common.run_record(grid, result, ok),
        "chance_loss": float(np.log(cfg.model.d_vocab - 1)),
        "seeds": seeds,
        "n_seeds_with_induction_head": int(sum(any(l >= 1 for l, _ in r["induction_heads"]) for r in seeds)),
        "attention_figure": {"seed": shown, "previous_token_head": list(prev_key), "induction_head": list(ind_key),
                             "tokens": tokens[0].tolist(), "previous_token_pattern": _round(pattern[prev_key], 3),
                             "induction_pattern": _round(pattern[ind_key], 3)},
        "trajectories": {
            "steps": steps.tolist(), "loss": _round(result.losses), "first_half_loss": _round(first),
            "repeat_loss": _round(repeat), "induction": _round(induction, 3), "previous_token": _round(previous, 3),
        },
    }
