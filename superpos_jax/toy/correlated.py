"""Toy models trained on correlated and anticorrelated feature pairs (*Toy Models of
Superposition*, "Superposition and correlated features").

The model is the tied-weight toy model of `superpos_jax.toy.models` (same params, init and
loss); only the data differ: features (2k, 2k+1) form pair k, whose members fire together
(correlated), never together (anticorrelated) or independently, as drawn by
`superpos_jax.toy.samplers.sample_paired_features`. The pair structure is a per-instance int32 code
vector `pair_kind` (n_pairs,), so setups with different structures share one compiled sweep.

Setups with fewer features than the sweep's n are padded with *unused* features: firing
probability 0 and importance 0. Their columns of W start (and, receiving no gradient and
only weight decay, stay) exactly zero, so they never count as represented.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from superpos_jax.toy.samplers import check_pair_probabilities, pair_kind_codes, sample_paired_features
from superpos_jax.toy.models import ToyParams, init_toy, toy_hparams, toy_loss
from superpos_jax.engine.prng import Generator
from superpos_jax.engine.task import Task


def correlated_hparams(
    feature_probability: npt.ArrayLike | float,
    importance: npt.ArrayLike,
    pair_kind: npt.ArrayLike,
    kinds: Sequence[str] | np.ndarray,
    learning_rate: npt.ArrayLike | float | None = None,
) -> dict[str, np.ndarray]:
    """Per-instance hparams of `correlated_task` for I instances, on the host.

    Args:
        feature_probability: marginal firing rate per feature, shape (I,) or (I, n_features).
        importance: (n_features,) or (I, n_features); 0 marks an unused (padding) feature.
        pair_kind: pair-kind names or codes (see `superpos_jax.toy.samplers.PAIR_KINDS`), shape
            (n_pairs,) shared or (I, n_pairs); 2·n_pairs <= n_features.
        kinds: I toy model kind names (`superpos_jax.toy.models.MODEL_KINDS`).
        learning_rate: optional scalar or (I,).

    Returns:
        `toy_hparams`' dict (`feature_probability` (I, n), `importance` (I, n), `flags` (I, 2),
        maybe `learning_rate` (I,)) plus `pair_kind` (I, n_pairs) int32.

    Raises:
        ValueError: on probabilities outside [0, 1], unknown pair kinds, too few features
            for the pairs, or an anticorrelated pair whose rates sum above 1.
    """
    hparams = toy_hparams(np.asarray(feature_probability, np.float32), importance, kinds, learning_rate)
    n_instances = hparams["flags"].shape[0]
    codes = pair_kind_codes(pair_kind)
    if codes.ndim == 1:
        codes = np.repeat(codes[None, :], n_instances, axis=0)
    if codes.ndim != 2 or codes.shape[0] != n_instances:
        raise ValueError(f"pair_kind has shape {codes.shape}; expected (n_pairs,) or ({n_instances}, n_pairs)")
    check_pair_probabilities(hparams["feature_probability"], codes)
    return {**hparams, "pair_kind": codes}


def correlated_task(n_features: int, d_hidden: int, batch_size: int, *, generator: Generator = "hash") -> Task:
    """The `Task` of a tied-weight toy model on paired features.

    Per-instance hparams (a dict, see `correlated_hparams`): `feature_probability`
    (n_features,), `importance` (n_features,), `flags` (2,), `pair_kind` (n_pairs,) int32,
    optionally `learning_rate` ().
    """

    def init(hparams, *, key) -> ToyParams:
        params = init_toy(n_features, d_hidden, key=key)
        used = (jnp.asarray(hparams["importance"]) > 0).astype(jnp.float32)
        return ToyParams(W=params.W * used[None, :], b=params.b)

    def sample(hparams, *, key):
        return sample_paired_features(
            key, hparams["feature_probability"], hparams["pair_kind"], n_features, batch_size, generator=generator
        )

    def loss(params, x, hparams):
        return toy_loss(params, x, hparams["importance"], hparams["flags"])

    return Task(init=init, sample=sample, loss=loss)
