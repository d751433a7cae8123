"""A frozen language model inside the SAE training loop: activations computed per step, never stored.

`LMActivations` is a `sae.sources.FedSource`. Its `shared` arrays — the frozen model's params
(with their static config) and the tokenized corpus — are arguments of the compiled call, never
constants of the program. Once per step, for every instance of the sweep (`Task.feed`, outside
the instance vmap), `feed` draws `n_contexts` corpus windows of `seq_len` tokens at offsets from
`fold_in(key(seed), step)`, runs the model forward once, and returns the activations of every
requested hook point, positions `skip` onwards, stacked as

    data: (n_hooks, pool, d)        pool = n_contexts · (seq_len − skip)

(row r of a hook's pool is window r // (seq_len − skip), position skip + r % (seq_len − skip);
with `buffer_steps` R > 1, once per R steps, (R, n_hooks, pool // R, d): see Mixing).
Each instance then `take`s `batch_size` rows of hook `hparams["hook"]` (an index into `hooks`)
without replacement with its own key. Several hook points of one model — e.g. every layer's
`resid_post` — therefore train as instances of one program, sharing one forward pass per step;
their widths must match (checked at construction).

Mixing. The pool plays the role of SAELens's shuffling buffer. By default (`buffer_steps=1`)
it is refreshed every step and holds about `mix` × batch_size rows (at least 64 contexts), so a
batch of B rows drawn from it comes from about min(B, n_contexts) different contexts and
neighbouring positions of one context rarely share a batch; the price is that every step runs
the model on `mix` times as many tokens as the SAE trains on. With `buffer_steps=R` one pool
serves R steps (`Task.feed_every`): it holds at least R × batch_size rows from
⌈R · batch_size / positions⌉ (≥ 64) contexts, is shuffled once and cut into R disjoint slices,
one per step, so every row is trained on once (forward work ≈ 1× the SAE's rows) and a
batch is a uniform sample of R · batch_size rows, i.e. of about min(B, n_contexts) contexts
again. Memory: n_hooks × pool × d float32 on the device (e.g. 2 hooks × 32,768 rows × 64 =
16 MiB for R = 64, B = 512). Unlike SAELens's buffer, which refills half of itself and keeps
the rest, the pool is replaced whole every R steps, and it is a function of the step alone
(recomputed at a call's start), so no activation enters the checkpoint and resume stays exact.
The forward runs only up to the deepest requested hook: the later blocks and the unembedding
are dead code in the compiled step (`tests/lm/test_feed.py` checks the compiled program).

`skip` drops the first positions of every window (position 0 attends only to itself, like a
BOS-like context start, and its activations are distributed unlike the rest); it applies to
`feed` and `stats` alike.

Any model. The source takes `forward(params, tokens) -> cache`, a pure function of a params
pytree and int32 tokens (n_windows, seq_len) returning a mapping of hook name to activations
(n_windows, seq_len, d). The default is `lm.transformer.forward` recording only the requested
hooks (TransformerLens spellings accepted); a GPT-2-family model slots in by passing its own
forward (which must read arrays only through `params`, never from its closure).
Nothing here copies activations to the host or writes them to disk. With the instance axis
sharded over several devices, every device computes the (replicated) feed itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
from jaxtyping import Array, Float, Int, PRNGKeyArray

from superpos_jax.lm.corpus import sample_windows
from superpos_jax.lm.transformer import TransformerParams, canonical_name, forward as transformer_forward
from superpos_jax.sae.sources import FedSource

__all__ = ["CacheForward", "LMActivations", "transformer_cache"]

CacheForward = Callable[[Any, Array], Mapping[str, Array]]
"""`(params, tokens (n, seq_len) int32) -> {hook name: (n, seq_len, d)}`."""

DEFAULT_MIN_CONTEXTS = 64
_SHUFFLE_SALT = 0x5B0F


def transformer_cache(hooks: Sequence[str]) -> CacheForward:
    """The cache forward of `lm.transformer` recording only `hooks`, keyed by the names given
    (TransformerLens spellings allowed; the forward raises on an unknown name, naming it)."""
    hooks = tuple(hooks)
    short = tuple(canonical_name(h) for h in hooks)

    def cache(p: TransformerParams, tokens: Array) -> dict[str, Array]:
        _, c = transformer_forward(p, tokens, cache_names=short)
        return {name: c[s] for name, s in zip(hooks, short, strict=True)}

    return cache


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class LMActivations(FedSource):
    """Activations of a frozen model at one or more hook points, computed in the loop.

    Args:
        params: the frozen model (for the default forward, a `TransformerParams`).
        tokens: the tokenized corpus, a 1-D integer array (uint8 bytes stay uint8 on the device).
        hooks: hook-point names; instance i trains on `hooks[int(hparams["hook"][i])]`
            (`hook_hparam` builds that column). All must have the same width d.
        batch_size: rows each instance trains on per step (the SAE's batch size).
        seq_len: window length (default: the model's n_ctx when it has one).
        skip: leading positions of every window left out (default 0).
        mix: the pool holds at least `mix` × batch_size rows (default 4).
        buffer_steps: the steps one pool serves (default 1: a fresh pool every step). With
            R > 1 the pool holds at least R × batch_size rows (and `mix` × batch_size), is
            computed once per R steps, shuffled once, and step t of the group reads its own
            slice t % R of `rows_per_step` rows: each row is used once, so the forward pass
            costs about one row per row trained on instead of `mix`.
        n_contexts: windows per pool (default: enough for the pool, and at least 64).
        seed: the windows of step t come from `fold_in(key(seed), t)`.
        forward: `(params, tokens) -> cache` (default: `transformer_cache(hooks)`).

    Attributes:
        d_in: the hooks' width. pool: rows per hook per pool (per `buffer_steps` steps).
        rows_per_step: the rows of one step's draw (pool // buffer_steps). positions: seq_len − skip.
        feed_every: `buffer_steps`.
        shared: {"params", "tokens"}, the arrays every compiled call receives.

    Raises:
        ValueError: an unknown hook, hooks of different widths (or not (n, seq_len, d)),
            a window longer than the corpus or the model's context, or a pool smaller
            than the batch.
    """

    def __init__(
        self,
        params: Any,
        tokens: npt.ArrayLike,
        hooks: Sequence[str] | str,
        *,
        batch_size: int,
        seq_len: int | None = None,
        skip: int = 0,
        mix: int = 4,
        buffer_steps: int = 1,
        n_contexts: int | None = None,
        seed: int = 0,
        forward: CacheForward | None = None,
    ):
        hooks = (hooks,) if isinstance(hooks, str) else tuple(hooks)
        if not hooks:
            raise ValueError("hooks must name at least one hook point")
        if len(set(hooks)) != len(hooks):
            raise ValueError(f"hooks must be distinct, got {list(hooks)}")
        n_ctx = getattr(getattr(params, "cfg", None), "n_ctx", None)
        if seq_len is None:
            if n_ctx is None:
                raise ValueError("seq_len is required for a model without cfg.n_ctx")
            seq_len = n_ctx
        self.seq_len = _positive_int("seq_len", seq_len)
        if n_ctx is not None and self.seq_len > n_ctx:
            raise ValueError(f"seq_len={self.seq_len} exceeds the model's n_ctx={n_ctx}")
        if isinstance(skip, bool) or not isinstance(skip, (int, np.integer)) or not 0 <= skip < self.seq_len:
            raise ValueError(f"skip must be an integer in [0, seq_len={self.seq_len}), got {skip!r}")
        self.skip = int(skip)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.mix = _positive_int("mix", mix)
        self.feed_every = _positive_int("buffer_steps", buffer_steps)
        self.positions = self.seq_len - self.skip
        rows = max(self.mix, self.feed_every) * self.batch_size
        needed = max(DEFAULT_MIN_CONTEXTS, math.ceil(rows / self.positions))
        self.n_contexts = needed if n_contexts is None else _positive_int("n_contexts", n_contexts)
        self.pool = self.n_contexts * self.positions
        self.rows_per_step = self.pool // self.feed_every
        if self.rows_per_step < self.batch_size:
            raise ValueError(
                f"the pool of {self.n_contexts} contexts x {self.positions} positions = {self.pool} rows is smaller "
                f"than batch_size={self.batch_size}" + (f" x buffer_steps={self.feed_every}" if self.feed_every > 1 else "")
                + "; raise n_contexts"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer) or tokens.shape[0] < self.seq_len:
            raise ValueError(
                f"tokens must be a 1-D integer array of at least seq_len={self.seq_len} tokens, got "
                f"{tokens.dtype} {tokens.shape}"
            )
        self.hooks = hooks
        self.forward = transformer_cache(hooks) if forward is None else forward
        self.shared = {"params": params, "tokens": jnp.asarray(tokens)}
        self.d_in = self._check_widths()

    def _check_widths(self) -> int:
        spec = jax.ShapeDtypeStruct((1, self.seq_len), jnp.int32)
        shapes = jax.eval_shape(self.forward, self.shared["params"], spec)
        missing = [h for h in self.hooks if h not in shapes]
        if missing:
            raise ValueError(f"the forward's cache lacks hooks {missing}; it has {sorted(shapes)}")
        bad = {h: tuple(shapes[h].shape) for h in self.hooks if len(shapes[h].shape) != 3 or shapes[h].shape[:2] != (1, self.seq_len)}
        if bad:
            raise ValueError(f"hooks must give (n, seq_len, d) activations, got shapes (for n=1) {bad}")
        widths = {h: int(shapes[h].shape[2]) for h in self.hooks}
        if len(set(widths.values())) != 1:
            raise ValueError(
                f"hooks trained as instances of one program need one width, got {widths}; "
                "train hooks of different widths in separate sweeps"
            )
        return next(iter(widths.values()))

    def index(self, hook: str) -> int:
        """The position of `hook` in `hooks` (its `hparams["hook"]` value)."""
        if hook not in self.hooks:
            raise ValueError(f"hook {hook!r} is not one of this source's hooks {list(self.hooks)}")
        return self.hooks.index(hook)

    def hook_hparam(self, hooks: Sequence[str | int]) -> np.ndarray:
        """The float32 `hparams["hook"]` column for instances training on `hooks` (names or
        indices into `self.hooks`), e.g. `sae_hparams(training, k=..., hook=src.hook_hparam(...))`."""
        out = []
        for h in hooks:
            if isinstance(h, str):
                out.append(self.index(h))
            elif isinstance(h, (int, np.integer)) and not isinstance(h, bool) and 0 <= h < len(self.hooks):
                out.append(int(h))
            else:
                raise ValueError(f"hook index must be a name or an integer in [0, {len(self.hooks)}), got {h!r}")
        return np.asarray(out, np.float32)

    def activations(self, shared: Any, windows: Int[Array, "n seq"]) -> Float[Array, "hook rows d"]:
        """Every hook's activations on `windows`, positions `skip` onwards, stacked: (n_hooks,
        n · positions, d) float32, rows in window-major order."""
        cache = self.forward(shared["params"], windows)
        stacked = jnp.stack([jnp.asarray(cache[h], jnp.float32)[:, self.skip :, :] for h in self.hooks])
        return stacked.reshape(len(self.hooks), windows.shape[0] * self.positions, self.d_in)

    def windows(self, step: Int[Array, ""] | int, shared: Any) -> Int[Array, "n_contexts seq"]:
        """The corpus windows of global `step` (uniform offsets from `fold_in(key(seed), step)`)."""
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        return sample_windows(shared["tokens"], key=key, batch_size=self.n_contexts, seq_len=self.seq_len)

    def feed(self, step: Array, streamed: Any, shared: Any) -> Float[Array, "..."]:
        """The pool of every hook from one forward pass on `n_contexts` windows: (n_hooks, pool,
        d) for this step; with `buffer_steps` R > 1, the pool of the R steps from `step` on,
        shuffled (its own key, folded from the windows') and cut into their slices: (R,
        n_hooks, rows_per_step, d)."""
        acts = self.activations(shared, self.windows(step, shared))
        r = self.feed_every
        if r == 1:
            return acts
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), step), _SHUFFLE_SALT)
        order = jax.random.permutation(key, self.pool)[: r * self.rows_per_step]
        sliced = acts[:, order].reshape(len(self.hooks), r, self.rows_per_step, self.d_in)
        return jnp.moveaxis(sliced, 1, 0)

    def take(
        self, data: Float[Array, "hook pool d"], key: PRNGKeyArray, batch_size: int, hparams: Any, shared: Any
    ) -> Float[Array, "batch d"]:
        """`batch_size` distinct rows of hook `hparams["hook"]`'s pool, drawn with the instance's key."""
        if batch_size > data.shape[1]:
            raise ValueError(f"batch_size={batch_size} exceeds the pool of {data.shape[1]} rows per step; "
                             "build the source with this batch_size (or more n_contexts)")
        rows = jax.random.choice(key, data.shape[1], (batch_size,), replace=False)
        return data[jnp.asarray(hparams["hook"]).astype(jnp.int32), rows]

    def stats(self, key: PRNGKeyArray, n: int, hparams: Any, shared: Any) -> Float[Array, "n d"]:
        """n rows of the instance's hook from ⌈n / positions⌉ windows drawn with `key`."""
        n_windows = math.ceil(n / self.positions)
        windows = sample_windows(shared["tokens"], key=key, batch_size=n_windows, seq_len=self.seq_len)
        acts = self.activations(shared, windows)[:, :n, :]
        return acts[jnp.asarray(hparams["hook"]).astype(jnp.int32)]
