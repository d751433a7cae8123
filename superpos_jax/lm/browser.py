"""A static feature browser (SAEDashboard-style dashboards, Neuronpedia-style JSON) for the
units of a model: SAE features or MLP neurons. Host-side NumPy; nothing is downloaded and the
pages load nothing: self-contained HTML, inline CSS and SVG, no JavaScript, a Content-Security-
Policy that forbids scripts and remote resources, and every piece of text `html.escape`d.

Inputs are a unit's activations over a set of token windows, `acts` (window, pos, unit), the
windows' token ids (window, pos), each unit's direct logit effect (unit, vocab)
(`direct_logit_effects`), and a tokenizer to render the ids: any object with `vocab_size` and
`token_str(id)` (`ByteTokenizer`, `BPETokenizer`, `HFTokenizer`; one with only `decode` also
works). Positions where a unit is > 0 are its firings; `density` is their fraction.

Per unit (`describe_units` → `Unit`, one page and one JSON file each):

* the activation histogram (of the firings) and the density;
* example contexts in bins: the top activations, then `n_intervals` equal-width intervals of
  (0, max] from the highest down (SAEDashboard's "interval" bins), each a seeded uniform sample
  with the fraction of firings that fall in it; the token each context is about is underlined,
  and every token shows its activation on hover (a CSS tooltip);
* the logits the unit's output direction promotes and suppresses, and their histogram over the
  vocabulary, computed through the final LayerNorm (`direct_logit_effects`);
* its top-token purity (below).

`describe_prompt` → `Prompt` is a prompt page: the features that fire on a given text (overall,
by maximum activation, each with the prompt coloured by it) and per token (its top features in
the token's tooltip and in a table); the activations are computed offline by the caller.

`write_browser(out_dir, title, sections, tokenizer=...)` writes, for each `Section` (slug S)::

    index.html, index.json                  the overview: every unit (a `class=unit` row), prompts
    S/<unit>.html, S/<unit>.json            one unit's dashboard and its data
    S/prompt-<k>.html, S/prompt-<k>.json    prompt k

Unit JSON (schema "superpos_jax.browser.unit/1"; the field names are Neuronpedia's where it
has one, so a feature can be uploaded or read by its tools; lists are parallel where they say so)::

    schema, section, kind ("feature" | "neuron"), feature_index (int),
    n_tokens (positions read), frac_nonzero (density), maxActApprox (max activation),
    mean_nonzero_activation, top_token_purity,
    freq_hist_data_bar_values / freq_hist_data_bar_heights   bin centres / counts of the firings
    freq_hist_edges                                           the n + 1 bin edges
    logits_hist_data_bar_values / logits_hist_data_bar_heights / logits_hist_edges
                                                              the same for the vocabulary's logit effects
    pos_str, pos_values, pos_ids        promoted tokens (display text), effects, ids; largest first
    neg_str, neg_values, neg_ids        suppressed tokens; most negative first
    logits_method                       how the effects were computed (a sentence)
    activations: [                      examples, bin after bin, in page order
      {bin_name ("top" | "interval k/n"), bin_min, bin_max, bin_contains (fraction of the
       firings in the bin), tokens (display text), token_ids, values (activation per token),
       qualifying_token_index (the example's token within `tokens`), window, position
       (its place in the input windows), maxValue, maxValueTokenIndex}]

Prompt JSON ("superpos_jax.browser.prompt/1"): name, text, tokens, token_ids,
top_features [{index, max_value, values (per token)}], per_token [{token, features [[index,
value], ...]}]. index.json ("superpos_jax.browser.index/1"): title, notes and per section its
title, slug, kind, logits_method, units [{index, frac_nonzero, maxActApprox, top_token_purity,
page, json}] and prompts [{name, page, json}].

Display text is the tokenizer's `token_str` (see `superpos_jax.lm.tokenizers`): spaces stay
spaces, invisible characters and stray bytes are escapes such as `\\n` and `\\xc3`; ids are the
exact record.

`top_token_purity` is a crude monosemanticity proxy used to contrast features with neurons:
among a unit's top activations, the fraction whose current token is the unit's most common
one (1 = it fires on one token only; polysemantic units score low).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float, Integer

from superpos_jax.interop.safetensors import write_atomic

__all__ = [
    "Context", "ContextBin", "Histogram", "Prompt", "Section", "Unit", "describe_prompt", "describe_units",
    "direct_logit_effects", "prompt_record", "token_text", "top_token_purity", "unit_record", "write_browser",
]

UNIT_SCHEMA = "superpos_jax.browser.unit/1"
PROMPT_SCHEMA = "superpos_jax.browser.prompt/1"
INDEX_SCHEMA = "superpos_jax.browser.index/1"
LOGITS_METHOD = ("direct path through the final LayerNorm with its scale frozen: (d - mean(d)) * ln_final.w @ W_U / "
                 "scale, centred over the vocabulary (TransformerLens fold_ln + center_unembed, as SAEDashboard)")
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass(frozen=True)
class Histogram:
    """Counts (n,) in bins with edges (n + 1,)."""

    edges: np.ndarray
    counts: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


@dataclass(frozen=True)
class Context:
    """One example: `tokens` (ids) and `values` (the unit's activation on each) of a slice of
    input window `window`; `peak` indexes, within the slice, the token at `position` of the window
    that the example was chosen for."""

    window: int
    position: int
    peak: int
    tokens: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class ContextBin:
    """Examples of activations in (lo, hi] ("top": the largest ones); `n_tokens` positions of
    the data fall in the bin, a `fraction` of all the unit's firings."""

    name: str
    lo: float
    hi: float
    n_tokens: int
    fraction: float
    contexts: tuple[Context, ...]


@dataclass(frozen=True)
class Unit:
    """One unit's dashboard data (module docstring). `promoted` / `suppressed` are (token id,
    logit effect) pairs, strongest first."""

    index: int
    n_tokens: int
    density: float
    max_activation: float
    mean_activation: float
    activation_histogram: Histogram
    bins: tuple[ContextBin, ...]
    promoted: tuple[tuple[int, float], ...]
    suppressed: tuple[tuple[int, float], ...]
    logit_histogram: Histogram
    purity: float

    @property
    def top(self) -> tuple[Context, ...]:
        """The top-activation examples (the first bin), largest first."""
        return self.bins[0].contexts if self.bins else ()


@dataclass(frozen=True)
class Prompt:
    """A prompt page: `tokens` (pos,) ids; `top_units` (k,) the units with the largest
    activation on the prompt, largest first, and `top_values` (k, pos) their activations;
    `token_units` / `token_values` (pos, per_token) each token's top units (firing ones, -1 pads)."""

    name: str
    tokens: np.ndarray
    top_units: np.ndarray
    top_values: np.ndarray
    token_units: np.ndarray
    token_values: np.ndarray


@dataclass(frozen=True)
class Section:
    """A group of units on the index (e.g. "SAE features", "MLP neurons"); `slug` names its
    folder; `kind` is "feature" or "neuron"; `prompts` are prompt pages over these units."""

    title: str
    slug: str
    units: Sequence[Unit]
    kind: str = "feature"
    prompts: Sequence[Prompt] = field(default_factory=tuple)
    logits_method: str = LOGITS_METHOD


def direct_logit_effects(
    directions: Float[np.ndarray, "unit d_model"],
    W_U: Float[np.ndarray, "d_model vocab"],
    *,
    ln_w: Float[np.ndarray, " d_model"] | None = None,
    ln_scale: float = 1.0,
    center: bool = True,
) -> np.ndarray:
    """Each unit's direct effect on the logits, per unit of activation, through the final LayerNorm.

    A unit adds `a · d` to the residual stream (d = W_dec[f] for a residual SAE, W_dec[f] @ W_out
    for an SAE on MLP neurons, W_out[n] for a neuron). LN_final(x) = (x − mean x) / s · w + b is
    linear in x once its scale s is frozen (it is a positive per-position scalar that no single
    unit controls), so the effect is ((d − mean d) ⊙ w) @ W_U / s: TransformerLens's fold_ln
    (w folded into W_U, LN centring as centred writes), which SAEDashboard's logit tables use.
    `ln_scale` is s (e.g. the median `ln_final.scale` over the data, for values in logits; 1 keeps
    the ranking and shapes); with `center` each row is also centred over the vocabulary
    (center_unembed: softmax ignores a constant shift). Returns (unit, vocab) float64.

    Args:
        directions: each unit's write direction in the residual stream.
        W_U: the unembedding.
        ln_w: LN_final's scale vector (None: the direct path without LayerNorm, W_U only).
        ln_scale: the frozen LayerNorm scale s (> 0).
        center: subtract each row's mean over the vocabulary.
    """
    if not ln_scale > 0:
        raise ValueError(f"ln_scale must be > 0, got {ln_scale}")
    d = np.asarray(directions, np.float64)
    W = np.asarray(W_U, np.float64)
    if ln_w is not None:
        d = (d - d.mean(axis=1, keepdims=True)) * np.asarray(ln_w, np.float64)[None, :]
    effects = d @ W / ln_scale
    if center:
        effects = effects - effects.mean(axis=1, keepdims=True)
    return effects


def top_token_purity(
    acts: Float[np.ndarray, "window pos unit"], tokens: Integer[np.ndarray, "window pos"], top: int = 50
) -> np.ndarray:
    """(unit,) purity of each unit (module docstring); 0 for a unit that never fires.

    Args: acts (window, pos, unit); tokens (window, pos) ints; top: how many of the
    largest positive activations to look at."""
    flat = acts.reshape(-1, acts.shape[-1])
    tok = tokens.reshape(-1)
    k = min(top, flat.shape[0])
    idx = np.argpartition(-flat, k - 1, axis=0)[:k]  # (k, unit)
    out = np.zeros(flat.shape[1])
    for u in range(flat.shape[1]):
        rows = idx[:, u][flat[idx[:, u], u] > 0]
        if rows.size:
            out[u] = np.bincount(tok[rows]).max() / rows.size
    return out


def describe_units(
    acts: Float[np.ndarray, "window pos unit"],
    tokens: Integer[np.ndarray, "window pos"],
    logit_effects: Float[np.ndarray, "unit vocab"],
    units: Integer[np.ndarray, " n"] | Sequence[int],
    *,
    n_top: int = 16,
    n_intervals: int = 5,
    n_per_interval: int = 5,
    before: int = 24,
    after: int = 4,
    n_logits: int = 10,
    hist_bins: int = 40,
    seed: int = 0,
) -> list[Unit]:
    """Dashboard data (`Unit`) for each unit index in `units`.

    Args:
        acts: activations (window, pos, unit) over the input windows.
        tokens: their token ids (window, pos).
        logit_effects: each unit's direct logit effect (unit, vocab) (`direct_logit_effects`).
        units: which units to describe (indices into the last axis of `acts`).
        n_top: examples in the top bin (the largest activations, one example per position).
        n_intervals: equal-width intervals of (0, max] after the top bin (0: none).
        n_per_interval: examples sampled (uniformly, seeded by `seed` and the unit) per interval.
        before, after: tokens of context either side of an example's token.
        n_logits: promoted and suppressed tokens listed.
        hist_bins: bins of the activation and logit histograms.
        seed: the interval samples' seed.
    """
    for name, v in (("n_top", n_top), ("n_intervals", n_intervals), ("n_per_interval", n_per_interval),
                    ("before", before), ("after", after), ("n_logits", n_logits)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0, got {v}")
    if hist_bins < 1:
        raise ValueError(f"hist_bins must be >= 1, got {hist_bins}")
    n_windows, n_pos, _ = acts.shape
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    purity = top_token_purity(acts[:, :, units], tokens) if units.size else np.zeros(0)

    def context(flat: int | np.integer, a: np.ndarray) -> Context:
        w, p = divmod(int(flat), n_pos)
        lo, hi = max(0, p - before), min(n_pos, p + after + 1)
        return Context(window=w, position=p, peak=p - lo, tokens=np.asarray(tokens[w, lo:hi]),
                       values=np.asarray(a[w, lo:hi], np.float64))

    entries = []
    for j, u in enumerate(units.tolist()):
        a = np.asarray(acts[:, :, u], np.float64)
        flat = a.reshape(-1)
        firing = flat > 0
        n_firing = int(firing.sum())
        peak = float(flat.max()) if flat.size else 0.0
        positive = flat[firing]
        act_hist = Histogram(*np.histogram(positive, bins=hist_bins, range=(0.0, peak if peak > 0 else 1.0))[::-1])
        bins = []
        if n_firing:
            k = min(n_top, n_firing)
            part = np.argpartition(-flat, k - 1)[:k]
            order = part[np.lexsort((part, -flat[part]))]  # largest first, ties by position
            bins.append(ContextBin("top", float(flat[order[-1]]) if k else peak, peak, k, k / n_firing,
                                   tuple(context(i, a) for i in order)))
            rng = np.random.default_rng([seed, u])
            edges = np.linspace(0.0, peak, n_intervals + 1)
            for i in range(n_intervals - 1, -1, -1):
                inside = np.flatnonzero(firing & (flat > edges[i]) & (flat <= edges[i + 1]))
                chosen = rng.choice(inside, size=min(n_per_interval, inside.size), replace=False) if inside.size else inside
                chosen = chosen[np.argsort(-flat[chosen], kind="stable")]
                bins.append(ContextBin(f"interval {i + 1}/{n_intervals}", float(edges[i]), float(edges[i + 1]),
                                       int(inside.size), inside.size / n_firing, tuple(context(c, a) for c in chosen)))
        effect = np.asarray(logit_effects[u], np.float64)
        m = min(n_logits, effect.size)
        up, down = np.argsort(-effect, kind="stable")[:m], np.argsort(effect, kind="stable")[:m]
        entries.append(Unit(
            index=int(u), n_tokens=int(flat.size), density=n_firing / max(flat.size, 1), max_activation=peak,
            mean_activation=float(positive.mean()) if n_firing else 0.0, activation_histogram=act_hist,
            bins=tuple(bins), promoted=tuple((int(t), float(effect[t])) for t in up),
            suppressed=tuple((int(t), float(effect[t])) for t in down),
            logit_histogram=Histogram(*np.histogram(effect, bins=hist_bins)[::-1]), purity=float(purity[j]),
        ))
    return entries


def describe_prompt(
    tokens: Integer[np.ndarray, " pos"],
    acts: Float[np.ndarray, "pos unit"],
    *,
    name: str = "",
    top_k: int = 12,
    per_token: int = 3,
    units: Integer[np.ndarray, " unit"] | None = None,
) -> Prompt:
    """A prompt page's data from the prompt's token ids (pos,) and every unit's activation on
    them (pos, unit), computed offline by the caller (e.g. the model's hook, then `SAE.encode`).

    Args:
        tokens, acts: the prompt and the activations.
        name: the page's title (default: the prompt's position in its section).
        top_k: units listed overall, by maximum activation over the prompt (only firing ones).
        per_token: units listed per token.
        units: the unit index of each column of `acts` (default 0..unit-1).
    """
    acts = np.asarray(acts, np.float64)
    tokens = np.asarray(tokens).reshape(-1)
    if acts.shape[0] != tokens.size:
        raise ValueError(f"acts has {acts.shape[0]} positions for {tokens.size} tokens")
    ids = np.arange(acts.shape[1]) if units is None else np.asarray(units, np.int64)
    peak = acts.max(axis=0) if acts.size else np.zeros(acts.shape[1])
    order = np.argsort(-peak, kind="stable")[:top_k]
    order = order[peak[order] > 0]
    k = min(per_token, acts.shape[1])
    per = np.argsort(-acts, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(acts, per, axis=1)
    token_units = np.where(vals > 0, ids[per], -1)
    return Prompt(name=name, tokens=tokens, top_units=ids[order], top_values=acts[:, order].T,
                  token_units=token_units, token_values=np.where(vals > 0, vals, 0.0))


def token_text(tokenizer: Any, token_id: int | np.integer) -> str:
    """The display text of one token: `tokenizer.token_str(id)`, or for a tokenizer without it its
    `decode([id])` with invisible characters escaped; an id outside the vocabulary (a model's
    padded vocabulary) is shown as ⟨id N⟩."""
    i = int(token_id)
    size = getattr(tokenizer, "vocab_size", None)
    if i < 0 or (size is not None and i >= size):
        return f"⟨id {i}⟩"
    if hasattr(tokenizer, "token_str"):
        return tokenizer.token_str(i)
    from superpos_jax.lm.tokenizers import display_text

    return display_text(tokenizer.decode([i]).encode("utf-8"))


class _Texts:
    """Memoised `token_text` for one tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int | np.integer) -> str:
        i = int(token_id)
        if i not in self.cache:
            self.cache[i] = token_text(self.tokenizer, i)
        return self.cache[i]


def _round(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else 0.0


def _floats(xs: Any) -> list[float]:
    return [_round(float(x)) for x in np.asarray(xs).reshape(-1)]


def unit_record(unit: Unit, tokenizer: Any, *, section: str = "", kind: str = "feature",
                logits_method: str = LOGITS_METHOD) -> dict[str, Any]:
    """The unit's JSON object (schema in the module docstring)."""
    text = tokenizer if isinstance(tokenizer, _Texts) else _Texts(tokenizer)
    activations = []
    for b in unit.bins:
        for c in b.contexts:
            activations.append({
                "bin_name": b.name, "bin_min": _round(b.lo), "bin_max": _round(b.hi), "bin_contains": _round(b.fraction),
                "tokens": [text(t) for t in c.tokens.tolist()], "token_ids": [int(t) for t in c.tokens.tolist()],
                "values": _floats(c.values), "qualifying_token_index": c.peak, "window": c.window,
                "position": c.position, "maxValue": _round(float(c.values.max())) if c.values.size else 0.0,
                "maxValueTokenIndex": int(np.argmax(c.values)) if c.values.size else 0,
            })
    return {
        "schema": UNIT_SCHEMA, "section": section, "kind": kind, "feature_index": unit.index,
        "n_tokens": unit.n_tokens, "frac_nonzero": _round(unit.density), "maxActApprox": _round(unit.max_activation),
        "mean_nonzero_activation": _round(unit.mean_activation), "top_token_purity": _round(unit.purity),
        "freq_hist_data_bar_values": _floats(unit.activation_histogram.centres),
        "freq_hist_data_bar_heights": [int(c) for c in unit.activation_histogram.counts],
        "freq_hist_edges": _floats(unit.activation_histogram.edges),
        "logits_hist_data_bar_values": _floats(unit.logit_histogram.centres),
        "logits_hist_data_bar_heights": [int(c) for c in unit.logit_histogram.counts],
        "logits_hist_edges": _floats(unit.logit_histogram.edges),
        "pos_str": [text(t) for t, _ in unit.promoted], "pos_values": [_round(v) for _, v in unit.promoted],
        "pos_ids": [t for t, _ in unit.promoted],
        "neg_str": [text(t) for t, _ in unit.suppressed], "neg_values": [_round(v) for _, v in unit.suppressed],
        "neg_ids": [t for t, _ in unit.suppressed],
        "logits_method": logits_method, "activations": activations,
    }


def prompt_record(prompt: Prompt, tokenizer: Any) -> dict[str, Any]:
    """The prompt's JSON object (schema in the module docstring)."""
    text = tokenizer if isinstance(tokenizer, _Texts) else _Texts(tokenizer)
    return {
        "schema": PROMPT_SCHEMA, "name": prompt.name, "text": "".join(text(t) for t in prompt.tokens.tolist()),
        "tokens": [text(t) for t in prompt.tokens.tolist()], "token_ids": [int(t) for t in prompt.tokens.tolist()],
        "top_features": [{"index": int(u), "max_value": _round(float(v.max())), "values": _floats(v)}
                         for u, v in zip(prompt.top_units.tolist(), prompt.top_values)],
        "per_token": [{"token": text(t), "features": [[int(u), _round(float(v))] for u, v in zip(us, vs) if u >= 0]}
                      for t, us, vs in zip(prompt.tokens.tolist(), prompt.token_units.tolist(), prompt.token_values.tolist())],
    }


# ----------------------------------------------------------------------------------------- HTML

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;max-width:1180px;margin:0 auto;padding:10px 18px}
h1{font-size:22px;margin:8px 0}h2{font-size:18px;margin:18px 0 6px}h3{font-size:14px;margin:12px 0 4px}
a{color:#0b5cad;text-decoration:none}a:hover{text-decoration:underline}
nav{font-size:13px;color:#555}.stats{color:#333}.muted{color:#777;font-size:12px}
.grid{display:grid;grid-template-columns:350px minmax(0,1fr);gap:22px;align-items:start}
.panel{border:1px solid #e3e3e3;border-radius:6px;padding:8px 10px;margin-bottom:12px;background:#fff}
.tok{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace;font-size:12.5px;white-space:pre-wrap;
 border-radius:2px;padding:1px 0}
.tok:hover{outline:1px solid #222;z-index:2}[data-tip]{position:relative}
[data-tip]:hover::after{content:attr(data-tip);position:absolute;left:0;top:1.9em;background:#222;color:#fff;padding:3px 7px;
 border-radius:4px;font:12px/1.35 ui-monospace,"DejaVu Sans Mono",monospace;white-space:pre;z-index:20;pointer-events:none}
.peak{text-decoration:underline;text-decoration-thickness:2px;text-underline-offset:2px}
.ctx{word-break:break-all;margin:1px 0;padding:1px 0 1px 60px;text-indent:-60px;border-bottom:1px solid #f3f3f3}
.ctx .val{display:inline-block;width:52px;color:#666;font-size:11px;text-align:right;margin-right:8px;text-indent:0}
.bin{margin-bottom:10px}.bin h3{margin-bottom:2px}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;text-align:left;vertical-align:top}
th{border-bottom:1px solid #ccc;font-weight:600}tr.unit td{border-bottom:1px solid #f0f0f0}
.logits td.v{text-align:right;font-variant-numeric:tabular-nums}
.chip{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px;white-space:pre;background:#eef1f5;
 border-radius:3px;padding:0 3px}
.prompt{font-size:15px;line-height:2.1;padding:6px 0}
svg text{font-size:10px;fill:#555}
"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _chip(text: str, tip: str | None = None) -> str:
    """A token on its own (tables): a token of spaces only is drawn as ␣s so that it shows."""
    shown = "␣" * len(text) if text and not text.strip(" ") else text
    tip_attr = f' data-tip="{_esc(tip)}"' if tip else ""
    return f"<span class=chip{tip_attr}>{_esc(shown)}</span>"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _colour(value: float, peak: float) -> str:
    if peak <= 0 or value == 0:
        return "transparent"
    alpha = max(0.0, min(1.0, abs(value) / peak))
    return f"rgba(255,120,0,{alpha:.2f})" if value > 0 else f"rgba(40,110,255,{alpha:.2f})"


def _token_span(text: str, value: float, peak: float, tip: str, *, is_peak: bool = False, href: str | None = None) -> str:
    cls = "tok peak" if is_peak else "tok"
    body = f'<span class="{cls}" style="background:{_colour(value, peak)}" data-tip="{_esc(tip)}">{_esc(text)}</span>'
    return f'<a href="{_esc(href)}">{body}</a>' if href else body


def _context_html(c: Context, peak: float, text: _Texts) -> str:
    spans = []
    for j, (t, v) in enumerate(zip(c.tokens.tolist(), c.values.tolist())):
        spans.append(_token_span(text(t), v, peak, f'"{text(t)}"  id {t}\nactivation {v:.4g}', is_peak=j == c.peak))
    value = c.values[c.peak] if c.values.size else 0.0
    return f'<div class=ctx><span class=val>{_fmt(float(value))}</span>{"".join(spans)}</div>'


def _trim(c: Context, before: int, after: int) -> Context:
    lo, hi = max(0, c.peak - before), min(c.tokens.size, c.peak + after + 1)
    return Context(c.window, c.position, c.peak - lo, c.tokens[lo:hi], c.values[lo:hi])


def _svg_histogram(hist: Histogram, *, colour: str, label: str, width: int = 330, height: int = 120) -> str:
    counts = np.asarray(hist.counts, np.float64)
    edges = np.asarray(hist.edges, np.float64)
    top = counts.max() if counts.size and counts.max() > 0 else 1.0
    pad_l, pad_b, pad_t = 6, 30, 6
    inner_w, inner_h = width - 2 * pad_l, height - pad_b - pad_t
    bar_w = inner_w / max(counts.size, 1)
    bars = []
    for i, c in enumerate(counts.tolist()):
        h = inner_h * c / top
        bars.append(f'<rect x="{pad_l + i * bar_w:.1f}" y="{pad_t + inner_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{_esc(f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {int(c)}")}'
                    f"</title></rect>")
    axis_y = pad_t + inner_h
    zero = ""
    if edges.size and edges[0] < 0 < edges[-1]:
        x0 = pad_l + inner_w * (0 - edges[0]) / (edges[-1] - edges[0])
        zero = f'<line x1="{x0:.1f}" y1="{pad_t}" x2="{x0:.1f}" y2="{axis_y}" stroke="#999" stroke-dasharray="2,2"/>'
    lo, hi = (_fmt(float(edges[0])), _fmt(float(edges[-1]))) if edges.size else ("", "")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_esc(label)}">'
            f'{"".join(bars)}{zero}<line x1="{pad_l}" y1="{axis_y}" x2="{width - pad_l}" y2="{axis_y}" stroke="#999"/>'
            f'<text x="{pad_l}" y="{axis_y + 12}">{_esc(lo)}</text>'
            f'<text x="{width - pad_l}" y="{axis_y + 12}" text-anchor="end">{_esc(hi)}</text>'
            f'<text x="{width / 2:.0f}" y="{axis_y + 25}" text-anchor="middle">{_esc(label)}</text></svg>')


def _logit_table(pairs: Sequence[tuple[int, float]], text: _Texts, colour: str) -> str:
    peak = max((abs(v) for _, v in pairs), default=1.0) or 1.0
    rows = []
    for t, v in pairs:
        width = 100 * abs(v) / peak
        rows.append(f'<tr><td>{_chip(text(t), f"id {t}")}</td>'
                    f'<td class=v style="background:linear-gradient(90deg,{colour} {width:.0f}%,transparent {width:.0f}%)">'
                    f"{v:+.3f}</td></tr>")
    return f'<table class=logits>{"".join(rows)}</table>'


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang=en><head><meta charset=utf-8>'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f'<meta name=viewport content="width=device-width,initial-scale=1"><title>{_esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _unit_page(unit: Unit, section: Section, text: _Texts, prev: Unit | None, nxt: Unit | None, site_title: str) -> str:
    kind = section.kind
    nav = [f'<a href="../index.html">{_esc(site_title)}</a>', _esc(section.title)]
    if prev is not None:
        nav.append(f'<a href="{prev.index}.html">&larr; #{prev.index}</a>')
    if nxt is not None:
        nav.append(f'<a href="{nxt.index}.html">#{nxt.index} &rarr;</a>')
    nav.append(f'<a href="{unit.index}.json">JSON</a>')
    log_density = f"10<sup>{math.log10(unit.density):.2f}</sup>" if unit.density > 0 else "0"
    stats = (f"<p class=stats>density <b>{unit.density:.3e}</b> ({log_density}) of {unit.n_tokens:,} tokens · "
             f"max activation <b>{_fmt(unit.max_activation)}</b> · mean when firing {_fmt(unit.mean_activation)} · "
             f"top-token purity {unit.purity:.2f}</p>")
    left = (f'<div class=panel><h3>Activations when firing</h3>'
            f'{_svg_histogram(unit.activation_histogram, colour="#f08a24", label="activation")}</div>'
            f'<div class=panel><h3>Logit effects over the vocabulary</h3>'
            f'{_svg_histogram(unit.logit_histogram, colour="#6c8ebf", label="direct logit effect")}'
            f'<p class=muted>{_esc(section.logits_method)}</p></div>'
            f'<div class=panel><h3>Promoted tokens</h3>{_logit_table(unit.promoted, text, "rgba(60,160,90,.28)")}'
            f'<h3>Suppressed tokens</h3>{_logit_table(unit.suppressed, text, "rgba(220,70,70,.25)")}</div>')
    bins = []
    for b in unit.bins:
        heading = ("Top activations" if b.name == "top" else f"Interval {_fmt(b.lo)} – {_fmt(b.hi)}")
        meta = (f"{b.n_tokens:,} tokens, {100 * b.fraction:.3g}% of firings"
                + ("" if b.name == "top" else f", {len(b.contexts)} sampled"))
        rows = "".join(_context_html(c, unit.max_activation, text) for c in b.contexts)
        bins.append(f'<div class="bin panel"><h3>{_esc(heading)} <span class=muted>{_esc(meta)}</span></h3>{rows}</div>')
    right = "".join(bins) or "<p><i>never fires on these tokens</i></p>"
    body = (f"<nav>{' · '.join(nav)}</nav><h1>{_esc(kind.capitalize())} #{unit.index}</h1>{stats}"
            f'<div class=grid><div>{left}</div><div>{right}</div></div>')
    return _page(f"{kind} {unit.index} · {site_title}", body)


def _prompt_page(k: int, prompt: Prompt, section: Section, text: _Texts, pages: dict[int, Unit], site_title: str) -> str:
    name = prompt.name or f"prompt {k}"
    overall_peak = float(prompt.top_values.max()) if prompt.top_values.size else 0.0
    spans = []
    for p, t in enumerate(prompt.tokens.tolist()):
        feats = [(int(u), float(v)) for u, v in zip(prompt.token_units[p], prompt.token_values[p]) if u >= 0]
        tip = f'"{text(t)}"  id {t}\n' + ("\n".join(f"#{u}  {v:.4g}" for u, v in feats) or "no unit fires")
        spans.append(_token_span(text(t), feats[0][1] if feats else 0.0, overall_peak, tip))

    def unit_link(u: int) -> str:
        return f'<a href="{u}.html">#{u}</a>' if u in pages else f"#{u}"

    rows = []
    for u, values in zip(prompt.top_units.tolist(), prompt.top_values):
        scale = pages[u].max_activation if u in pages and pages[u].max_activation > 0 else float(values.max())
        rel = f"{100 * values.max() / pages[u].max_activation:.0f}%" if u in pages and pages[u].max_activation > 0 else "–"
        toks = "".join(_token_span(text(t), v, scale, f'"{text(t)}"\n#{u}  {v:.4g}')
                       for t, v in zip(prompt.tokens.tolist(), values.tolist()))
        rows.append(f"<tr class=pf><td>{unit_link(u)}</td><td>{_fmt(float(values.max()))}</td><td>{rel}</td>"
                    f'<td class=prompt style="line-height:1.6">{toks}</td></tr>')
    per_token = []
    for p, t in enumerate(prompt.tokens.tolist()):
        feats = ", ".join(f"{unit_link(int(u))} {v:.3g}" for u, v in zip(prompt.token_units[p], prompt.token_values[p]) if u >= 0)
        per_token.append(f"<tr><td class=muted>{p}</td><td>{_chip(text(t))}</td><td>{feats or '–'}</td></tr>")
    body = (f'<nav><a href="../index.html">{_esc(site_title)}</a> · {_esc(section.title)} · '
            f'<a href="prompt-{k}.json">JSON</a></nav>'
            f"<h1>{_esc(name)}</h1><p class=muted>Hover a token for the {_esc(section.kind)}s most active on it; the "
            f"colour is the strongest one's activation relative to the prompt's maximum.</p>"
            f'<div class="panel prompt">{"".join(spans)}</div>'
            f"<h2>Top {_esc(section.kind)}s on this prompt</h2><p class=muted>by maximum activation over the prompt; "
            f"% of the {_esc(section.kind)}'s maximum on the browser's data where it has a page; each row coloured by "
            f"that {_esc(section.kind)}.</p>"
            f"<table><tr><th>{_esc(section.kind)}</th><th>max</th><th>of max</th><th>activations</th></tr>{''.join(rows)}</table>"
            f"<h2>Per token</h2><table><tr><th>pos</th><th>token</th><th>top {_esc(section.kind)}s</th></tr>"
            f"{''.join(per_token)}</table>")
    return _page(f"{name} · {site_title}", body)


def _index_page(title: str, notes: str, sections: Sequence[Section], texts: list[_Texts]) -> str:
    parts = [f"<h1>{_esc(title)}</h1>"]
    if notes:
        parts.append(f"<p>{_esc(notes)}</p>")
    for s, text in zip(sections, texts):
        parts.append(f"<h2>{_esc(s.title)}</h2>")
        if s.prompts:
            links = " · ".join(f'<a href="{_esc(s.slug)}/prompt-{k}.html">{_esc(p.name or f"prompt {k}")}</a>'
                               for k, p in enumerate(s.prompts))
            parts.append(f"<p>Prompts: {links}</p>")
        rows = []
        for u in s.units:
            snippet = _context_html(_trim(u.top[0], 12, 3), u.max_activation, text) if u.top else "<i>never fires</i>"
            promotes = " ".join(_chip(text(t)) for t, _ in u.promoted[:4])
            rows.append(f'<tr class=unit><td><a href="{_esc(s.slug)}/{u.index}.html">#{u.index}</a></td>'
                        f"<td>{u.density:.2e}</td><td>{_fmt(u.max_activation)}</td><td>{u.purity:.2f}</td>"
                        f"<td>{snippet}</td><td>{promotes}</td></tr>")
        parts.append(f"<table><tr><th>{_esc(s.kind)}</th><th>density</th><th>max</th><th>top-token purity</th>"
                     f"<th>top example</th><th>promotes</th></tr>{''.join(rows)}</table>")
    return _page(title, "".join(parts))


def _slug_ok(slug: str) -> bool:
    return bool(slug) and all(c.isalnum() or c in "-_" for c in slug)


def write_browser(
    out_dir: str | Path,
    title: str,
    sections: Sequence[Section],
    *,
    tokenizer: Any,
    notes: str = "",
) -> Path:
    """Write the browser (index, one page and one JSON per unit, prompt pages; layout in the
    module docstring) under `out_dir`; returns the path of index.html.

    Args:
        out_dir: the folder to write (created).
        title: the site's title.
        sections: the unit groups (`Section`); slugs must be distinct, letters, digits, - and _.
        tokenizer: renders the token ids (`token_text`).
        notes: a paragraph under the title (plain text, escaped).
    """
    slugs = [s.slug for s in sections]
    bad = [s for s in slugs if not _slug_ok(s)]
    if bad or len(set(slugs)) != len(slugs):
        raise ValueError(f"section slugs must be distinct and use only letters, digits, - and _; got {slugs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [_Texts(tokenizer) for _ in sections]
    index: dict[str, Any] = {"schema": INDEX_SCHEMA, "title": title, "notes": notes, "sections": []}

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, [text.encode("utf-8")])

    for s, text in zip(sections, texts):
        folder = out / s.slug
        pages = {u.index: u for u in s.units}
        entry: dict[str, Any] = {"title": s.title, "slug": s.slug, "kind": s.kind, "logits_method": s.logits_method,
                                 "units": [], "prompts": []}
        for j, u in enumerate(s.units):
            prev = s.units[j - 1] if j > 0 else None
            nxt = s.units[j + 1] if j + 1 < len(s.units) else None
            put(folder / f"{u.index}.html", _unit_page(u, s, text, prev, nxt, title))
            put(folder / f"{u.index}.json", json.dumps(unit_record(u, text, section=s.slug, kind=s.kind,
                                                                   logits_method=s.logits_method)))
            entry["units"].append({"index": u.index, "frac_nonzero": _round(u.density), "maxActApprox": _round(u.max_activation),
                                   "top_token_purity": _round(u.purity), "page": f"{s.slug}/{u.index}.html",
                                   "json": f"{s.slug}/{u.index}.json"})
        for k, p in enumerate(s.prompts):
            put(folder / f"prompt-{k}.html", _prompt_page(k, p, s, text, pages, title))
            record = prompt_record(p, text)
            put(folder / f"prompt-{k}.json", json.dumps(record))
            entry["prompts"].append({"name": p.name or f"prompt {k}", "page": f"{s.slug}/prompt-{k}.html",
                                     "json": f"{s.slug}/prompt-{k}.json"})
        index["sections"].append(entry)
    put(out / "index.json", json.dumps(index))
    put(out / "index.html", _index_page(title, notes, sections, texts))
    return out / "index.html"
