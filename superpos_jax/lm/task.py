"""Language-model training on the engine: token sources and the `Task` of a tiny transformer.

A token source is an equinox module whose arrays reach the compiled loop as call arguments
(`Task.shared`, given to every callable of the task as `shared=`) and whose
`sample(key, batch_size)` draws int32 (batch, seq_len) sequences:

* `CorpusWindows`: random windows of a tokenised corpus (`superpos_jax.lm.corpus`);
* `RepeatedTokens`: sequences whose second half repeats a uniformly random first half. With a
  fixed period a model with learned positions solves it by positional copying, without
  induction heads; `induction.RandomPeriodRepeats` (random period) is the induction task.

`lm_task(cfg, source, batch_size)` trains `models.transformer` on next-token cross-entropy
(optionally only on the positions `loss_from` onwards); seeds and learning rates are swept
like every other task (`hparams["learning_rate"]`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Int, Integer, PRNGKeyArray, Scalar

from superpos_jax.lm.corpus import sample_windows
from superpos_jax.lm.transformer import TransformerConfig, TransformerParams, init_transformer, per_token_loss
from superpos_jax.engine.task import Task


class CorpusWindows(eqx.Module):
    """Uniformly random windows of `seq_len` tokens from one long token array.

    Attributes: tokens (n,) integer (uint8 bytes stay uint8 on the device); seq_len (static).
    """

    tokens: Integer[Array, " n"]
    seq_len: int = eqx.field(static=True)

    def __init__(self, tokens: npt.ArrayLike, seq_len: int):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.shape[0] <= seq_len or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"need a 1-D integer token array longer than seq_len={seq_len}, got {tokens.dtype} {tokens.shape}"
            )
        self.tokens = jnp.asarray(tokens)
        self.seq_len = int(seq_len)

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Int[Array, "batch seq"]:
        return sample_windows(self.tokens, key=key, batch_size=batch_size, seq_len=self.seq_len)


class RepeatedTokens(eqx.Module):
    """[BOS, r_1..r_h, r_1..r_h]: a random segment of `half` tokens drawn uniformly from
    1..d_vocab−1, then repeated; token 0 is the BOS. seq_len = 2·half + 1."""

    d_vocab: int = eqx.field(static=True)
    half: int = eqx.field(static=True)

    def __post_init__(self) -> None:
        if self.d_vocab < 3 or self.half < 1:
            raise ValueError(f"need d_vocab >= 3 and half >= 1, got {self.d_vocab}, {self.half}")

    @property
    def seq_len(self) -> int:
        return 2 * self.half + 1

    def sample(self, key: PRNGKeyArray, batch_size: int) -> Int[Array, "batch seq"]:
        seg = jax.random.randint(key, (batch_size, self.half), 1, self.d_vocab, jnp.int32)
        bos = jnp.zeros((batch_size, 1), jnp.int32)
        return jnp.concatenate([bos, seg, seg], axis=1)


def lm_task(cfg: TransformerConfig, source: eqx.Module, batch_size: int, *, loss_from: int = 0) -> Task:
    """The `Task` of a transformer of `cfg` trained on `source` (its seq_len ≤ n_ctx), mean
    next-token cross-entropy over predicted positions ≥ `loss_from` (0: all)."""
    seq_len = int(getattr(source, "seq_len"))
    if seq_len > cfg.n_ctx:
        raise ValueError(f"the source's seq_len={seq_len} exceeds n_ctx={cfg.n_ctx}")
    if not 0 <= loss_from < seq_len - 1:
        raise ValueError(f"loss_from must be in [0, {seq_len - 1}), got {loss_from}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def init(hparams: dict, *, key: PRNGKeyArray, shared: eqx.Module) -> TransformerParams:
        return init_transformer(cfg, key=key)

    def sample(hparams: dict, *, key: PRNGKeyArray, shared: eqx.Module) -> Array:
        return shared.sample(key, batch_size)

    def loss(params: TransformerParams, tokens: Array, hparams: dict, *, shared: eqx.Module) -> Scalar:
        return jnp.mean(per_token_loss(params, tokens)[:, loss_from:])

    return Task(init=init, sample=sample, loss=loss, shared=source)
