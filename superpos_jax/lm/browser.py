"""A static feature browser: per unit (SAE feature or MLP neuron) its density, its
top-activating contexts with the activating bytes highlighted, and the logits it promotes.

Host-side NumPy. Inputs are activations over a set of token windows, `acts` (n_windows,
pos, n_units), and the windows' tokens (n_windows, pos) from a byte-level tokenizer.

`top_token_purity` is a crude monosemanticity proxy used to contrast features with neurons:
among a unit's top activations, the fraction whose current token is the unit's most common
one (1 = it fires on one byte only; polysemantic units score low).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from superpos_jax.interop.safetensors import write_atomic


@dataclass(frozen=True)
class Unit:
    """One unit's page entry: id, density (fraction of tokens where it is > 0), max activation,
    top contexts (list of (bytes tokens, activations, position of the max)), promoted and
    suppressed tokens with their direct logit effects, and its top-token purity."""

    index: int
    density: float
    max_activation: float
    contexts: list[tuple[np.ndarray, np.ndarray, int]]
    promoted: list[tuple[int, float]]
    suppressed: list[tuple[int, float]]
    purity: float


def top_token_purity(acts: np.ndarray, tokens: np.ndarray, top: int = 50) -> np.ndarray:
    """(n_units,) purity of each unit (module docstring); 0 for a unit that never fires.

    Args: acts (n_windows, pos, n_units); tokens (n_windows, pos) ints; top: how many of the
    largest positive activations to look at."""
    flat = acts.reshape(-1, acts.shape[-1])
    tok = tokens.reshape(-1)
    k = min(top, flat.shape[0])
    idx = np.argpartition(-flat, k - 1, axis=0)[:k]  # (k, n_units)
    out = np.zeros(flat.shape[1])
    for u in range(flat.shape[1]):
        rows = idx[:, u][flat[idx[:, u], u] > 0]
        if rows.size:
            out[u] = np.bincount(tok[rows]).max() / rows.size
    return out


def describe_units(
    acts: np.ndarray,
    tokens: np.ndarray,
    logit_effects: np.ndarray,
    units: np.ndarray,
    *,
    n_contexts: int = 8,
    before: int = 24,
    after: int = 4,
    n_logits: int = 8,
) -> list[Unit]:
    """Entries for `units` (indices) from acts (n_windows, pos, n_units), tokens (n_windows,
    pos) and logit_effects (n_units, d_vocab) (each unit's direct effect on the logits)."""
    n_windows, n_pos, _ = acts.shape
    purity = top_token_purity(acts[:, :, units], tokens)
    entries = []
    for j, u in enumerate(units):
        a = acts[:, :, u]
        order = np.argsort(-a, axis=None)[:n_contexts]
        contexts = []
        for flat in order:
            w, p = divmod(int(flat), n_pos)
            if a[w, p] <= 0:
                break
            lo, hi = max(0, p - before), min(n_pos, p + after + 1)
            contexts.append((tokens[w, lo:hi], a[w, lo:hi], p - lo))
        effect = logit_effects[u]
        up = np.argsort(-effect)[:n_logits]
        down = np.argsort(effect)[:n_logits]
        entries.append(Unit(
            index=int(u), density=float(np.mean(a > 0)), max_activation=float(a.max()), contexts=contexts,
            promoted=[(int(t), float(effect[t])) for t in up], suppressed=[(int(t), float(effect[t])) for t in down],
            purity=float(purity[j]),
        ))
    return entries


def _byte(t: int) -> str:
    c = chr(t)
    if c == "\n":
        return "⏎"
    if c == "\t":
        return "⇥"
    if c == " ":
        return "·"
    if not c.isprintable() or t > 126:
        return f"\\x{t:02x}"
    return c


def _context_html(tokens: np.ndarray, acts: np.ndarray, peak: float) -> str:
    spans = []
    for t, a in zip(tokens.tolist(), acts.tolist()):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, a / peak))
        spans.append(f'<span style="background: rgba(255,120,0,{alpha:.2f})" title="{a:.3g}">'
                     f"{html.escape(_byte(t))}</span>")
    return "".join(spans)


def _section(title: str, entries: list[Unit]) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    for e in entries:
        promoted = " ".join(f"<code>{html.escape(_byte(t))}</code> {v:+.2f}" for t, v in e.promoted)
        suppressed = " ".join(f"<code>{html.escape(_byte(t))}</code> {v:+.2f}" for t, v in e.suppressed)
        rows = "".join(f"<div class=ctx>{_context_html(tok, act, e.max_activation)}</div>" for tok, act, _ in e.contexts)
        parts.append(
            f"<div class=unit><h3>#{e.index}</h3><p>density {e.density:.2e} · max {e.max_activation:.3g} · "
            f"top-token purity {e.purity:.2f}</p>{rows or '<p><i>never fires</i></p>'}"
            f"<p>promotes: {promoted}</p><p>suppresses: {suppressed}</p></div>"
        )
    return "\n".join(parts)


def write_browser(path: Path, title: str, sections: list[tuple[str, list[Unit]]], notes: str = "") -> Path:
    """Write a self-contained HTML page with one section per (title, entries); returns `path`."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto} .unit{border-top:1px solid #ccc;"
             "padding:4px 0} .ctx{font-family:monospace;white-space:pre;margin:2px 0} h3{margin:4px 0}")
    body = "\n".join(_section(t, e) for t, e in sections)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><p>{notes}</p>{body}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, [page.encode("utf-8")])
    return path
