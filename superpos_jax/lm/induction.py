"""Induction-head scores (Olsson et al., 2022) on repeated random sequences.

The sequences are `lm_task.RepeatedTokens`: [BOS, r_1..r_h, r_1..r_h], length 2h + 1, so the
token at position t of the repeat (h + 1 ≤ t ≤ 2h) first occurred at t − h, and the token that
followed it there — the one an induction head copies — sits at t − h + 1.

* previous-token score of a head: mean attention from position t to t − 1 (1 ≤ t ≤ 2h);
* induction score of a head: mean attention from position t of the repeat to t − h + 1;
* first-half and repeat losses: mean next-token loss on the targets r_1..r_h of the first half
  and on the predictable targets r_2..r_h of the repeat (r_1 after r_h cannot be predicted);
  their difference is the in-context learning score (negative once the model copies).

Training data: on `RepeatedTokens` the repeat is always h positions back, so a model with learned
positional embeddings can copy with one purely positional head ("attend to t − h + 1") and never
forms induction heads. `RandomPeriodRepeats` draws the period per sequence, which leaves the
content-based route (previous-token head → induction head) as the only one; the scores are then
measured on the fixed [BOS, r, r] layout.

All functions are pure and written for one model; `*lead` dims (batch, layer, head) pass through.
A uniform causal pattern gives chance scores of mean_t 1/(t + 1), ≈ 0.03–0.08 for h ≈ 20.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superpos_jax.lm.transformer import TransformerParams, forward


class RandomPeriodRepeats(eqx.Module):
    """[BOS, r_1..r_L, r_1..r_L, r_1..] cut to `seq_len`: a uniformly random segment (tokens
    1..d_vocab−1, token 0 is the BOS) repeated with a period L drawn per sequence uniformly from
    min_period..max_period. A token source for `lm_task` (`sample(key, batch_size)`)."""

    d_vocab: int = eqx.field(static=True)
    seq_len: int = eqx.field(static=True)
    min_period: int = eqx.field(static=True)
    max_period: int = eqx.field(static=True)

    def __post_init__(self) -> None:
        if self.d_vocab < 3 or not 1 <= self.min_period <= self.max_period < self.seq_len - 1:
            raise ValueError(
                "need d_vocab >= 3 and 1 <= min_period <= max_period < seq_len - 1, got "
                f"{self.d_vocab}, {self.min_period}, {self.max_period}, {self.seq_len}"
            )

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Int[Array, "batch seq"]:
        seg_key, period_key = jax.random.split(key)
        seg = jax.random.randint(seg_key, (batch_size, self.max_period), 1, self.d_vocab, jnp.int32)
        period = jax.random.randint(period_key, (batch_size, 1), self.min_period, self.max_period + 1, jnp.int32)
        index = jnp.arange(self.seq_len - 1, dtype=jnp.int32)[None, :] % period
        bos = jnp.zeros((batch_size, 1), jnp.int32)
        return jnp.concatenate([bos, jnp.take_along_axis(seg, index, axis=1)], axis=1)


def _check_pos(n_pos: int, half: int) -> None:
    if half < 1 or n_pos != 2 * half + 1:
        raise ValueError(f"a repeated sequence with half={half} has {2 * half + 1} positions, got {n_pos}")


def previous_token_score(pattern: Float[Array, "*lead pos pos"]) -> Float[Array, "*lead"]:
    """Mean attention from each position t ≥ 1 to t − 1.

    Args:
        pattern: attention pattern(s), query by key, rows summing to 1.

    Returns:
        the score per leading index (e.g. (batch, head)); 1 for a pure previous-token head.
    """
    return jnp.mean(jnp.diagonal(pattern, offset=-1, axis1=-2, axis2=-1), axis=-1)


def induction_score(pattern: Float[Array, "*lead pos pos"], half: int) -> Float[Array, "*lead"]:
    """Mean attention from each position t of the repeat (h + 1 ≤ t ≤ 2h) to t − h + 1, the
    position right after the token's earlier occurrence in [BOS, r_1..r_h, r_1..r_h].

    Args:
        pattern: attention pattern(s) on sequences of 2·half + 1 positions, query by key.
        half: h, the length of the repeated segment.

    Returns:
        the score per leading index; 1 for a perfect induction head.
    """
    _check_pos(pattern.shape[-1], half)
    q = np.arange(half + 1, 2 * half + 1)
    return jnp.mean(pattern[..., q, q - half + 1], axis=-1)


def split_losses(
    loss: Float[Array, "*lead n_pred"], half: int
) -> tuple[Float[Array, "*lead"], Float[Array, "*lead"]]:
    """Mean next-token loss on the first half and on the predictable part of the repeat.

    Args:
        loss: per-token losses of sequences of 2·half + 1 tokens, entry j the loss of predicting
            token j + 1 (n_pred = 2·half, as `per_token_loss` returns).
        half: h.

    Returns:
        (first, repeat): the mean over the targets at positions 1..h, and over h + 2..2h
        (equal to `first` for half = 1, where the repeat has no predictable target).
    """
    _check_pos(loss.shape[-1] + 1, half)
    first = jnp.mean(loss[..., :half], axis=-1)
    repeat = jnp.mean(loss[..., half + 1 :], axis=-1) if half > 1 else first
    return first, repeat


def in_context_score(loss: Float[Array, "*lead n_pred"], half: int) -> Float[Array, "*lead"]:
    """Repeat loss minus first-half loss (`split_losses`): ≈ 0 before the model uses the
    context, ≈ −log(d_vocab − 1) once it copies the repeat perfectly."""
    first, repeat = split_losses(loss, half)
    return repeat - first


def induction_observables(
    params: TransformerParams, tokens: Int[Array | np.ndarray, "batch pos"], half: int
) -> dict[str, Array]:
    """Every head's scores and the half losses of one model on a batch of repeated sequences.

    `first_loss` etc. equal `split_losses(models.transformer.per_token_loss(params, tokens))`.
    Returns a dict of `previous_token` and `induction` (layer, head), batch means, and
    `first_loss`, `repeat_loss`, `in_context_score` (scalars, batch means).
    """
    cfg = params.cfg
    names = [f"blocks.{i}.attn.pattern" for i in range(cfg.n_layers)]
    tokens = jnp.asarray(tokens)
    logits, cache = forward(params, tokens, cache_names=names)
    patterns = jnp.stack([cache[n] for n in names])  # (layer, batch, head, q, k)
    logp = jax.nn.log_softmax(logits[:, :-1, :], axis=-1)  # one forward pass for scores and losses
    loss = -jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[:, :, 0]
    first, repeat = split_losses(loss, half)
    return {
        "previous_token": jnp.mean(previous_token_score(patterns), axis=1),
        "induction": jnp.mean(induction_score(patterns, half), axis=1),
        "first_loss": jnp.mean(first),
        "repeat_loss": jnp.mean(repeat),
        "in_context_score": jnp.mean(repeat - first),
    }
