"""The feature browser: purity, context bins, histograms, logits through the final LayerNorm
(against the model's own forward with the LN scale frozen), prompt pages, the JSON schema,
escaping and self-containment, and rendering in a real headless Chromium (no console errors,
byte-level BPE tokens shown as text, screenshots)."""

import inspect
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.lm import browser
from superpos_jax.lm.tokenizers import ByteTokenizer, HFTokenizer
from superpos_jax.lm.transformer import TransformerConfig, forward, init_transformer

EVIL = "<script>document.title='pwned'</script>"
INSTALL = ("the browser tests need a headless Chromium: install it with `apt-get install -y chromium` "
           "(Debian/Ubuntu; `chromium-browser` or Google Chrome on PATH also work)")


def test_top_token_purity_and_contexts():
    tokens = np.asarray([[1, 2, 3, 1, 2, 3]])
    acts = np.zeros((1, 6, 2))
    acts[0, [0, 3], 0] = [1.0, 2.0]  # unit 0 fires only on token 1: purity 1
    acts[0, [0, 1, 2], 1] = [1.0, 1.0, 1.0]  # unit 1 fires on three different tokens: purity 1/3
    np.testing.assert_allclose(browser.top_token_purity(acts, tokens), [1.0, 1 / 3])
    effects = np.eye(2, 4)
    (u,) = browser.describe_units(acts, tokens, effects, np.asarray([0]), n_top=3, before=2, after=0)
    assert u.density == pytest.approx(2 / 6) and u.max_activation == 2.0
    assert len(u.top) == 2 and u.top[0].tokens.tolist() == [2, 3, 1]  # strongest first, 2 tokens before
    assert u.top[0].peak == 2 and u.top[0].values.tolist() == [0.0, 0.0, 2.0]
    assert u.promoted[0][0] == 0


def test_bins_histograms_and_density():
    acts = np.zeros((2, 50, 2), np.float32)
    acts[0, 5:25, 0] = np.arange(1, 21)  # unit 0 fires 20 times with values 1..20
    tokens = np.arange(100).reshape(2, 50) % 7
    effects = np.asarray([[0.0, 3.0, -2.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    u, dead = browser.describe_units(acts, tokens, effects, [0, 1], n_top=3, n_intervals=4, n_per_interval=2,
                                     before=3, after=1, n_logits=2, hist_bins=10, seed=1)
    assert (u.n_tokens, u.density, u.max_activation, u.mean_activation) == (100, 0.2, 20.0, 10.5)
    assert u.activation_histogram.counts.tolist() == [1] + [2] * 8 + [3]  # bins of width 2 on [0, 20], last closed
    assert u.activation_histogram.edges[0] == 0.0 and u.activation_histogram.edges[-1] == 20.0
    names = [b.name for b in u.bins]
    assert names == ["top", "interval 4/4", "interval 3/4", "interval 2/4", "interval 1/4"]
    top = u.bins[0]
    assert [c.values[c.peak] for c in top.contexts] == [20.0, 19.0, 18.0] and (top.lo, top.hi) == (18.0, 20.0)
    assert top.fraction == pytest.approx(3 / 20)
    for b, (lo, hi) in zip(u.bins[1:], [(15, 20), (10, 15), (5, 10), (0, 5)]):
        assert (b.lo, b.hi, b.n_tokens, b.fraction) == (lo, hi, 5, 0.25)
        peaks = [c.values[c.peak] for c in b.contexts]
        assert len(peaks) == 2 and all(lo < v <= hi for v in peaks) and peaks == sorted(peaks, reverse=True)
        for c in b.contexts:
            assert c.tokens.tolist() == tokens[c.window, c.position - c.peak: c.position - c.peak + c.tokens.size].tolist()
    again = browser.describe_units(acts, tokens, effects, [0], n_intervals=4, n_per_interval=2, seed=1)[0]
    assert [c.position for b in again.bins[1:] for c in b.contexts] == [c.position for b in u.bins[1:] for c in b.contexts]
    assert u.promoted == ((1, 3.0), (3, 1.0)) and u.suppressed == ((2, -2.0), (0, 0.0))
    assert u.logit_histogram.counts.sum() == 4
    assert dead.density == 0 and dead.bins == () and dead.top == () and dead.purity == 0
    with pytest.raises(ValueError, match="n_top"):
        browser.describe_units(acts, tokens, effects, [0], n_top=-1)


def test_direct_logit_effects_match_the_forward_with_the_final_ln_scale_frozen():
    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=20)
    params = init_transformer(cfg, key=jax.random.key(0))
    w = 1.0 + 0.5 * jax.random.normal(jax.random.key(1), (16,))
    params = eqx.tree_at(lambda p: (p.ln_final.w, p.ln_final.b), params, (w, jnp.full((16,), 0.3)))
    tokens = jnp.arange(8)[None, :] % 20
    clean, cache = forward(params, tokens, cache_names=("ln_final.scale",))
    scale = cache["ln_final.scale"]  # (1, pos, 1)
    d = jax.random.normal(jax.random.key(2), (16,))
    hooks = {"blocks.0.resid_post": lambda x: x + 0.5 * d[None, None, :], "ln_final.scale": lambda s: scale}
    steered, _ = forward(params, tokens, hooks)
    diff = np.asarray(steered - clean, np.float64)[0] / 0.5  # (pos, vocab): exactly linear in d with s frozen
    d_np, W_U, w_np = np.asarray(d)[None, :], np.asarray(params.W_U), np.asarray(w)
    for p in range(8):
        s = float(scale[0, p, 0])
        raw = browser.direct_logit_effects(d_np, W_U, ln_w=w_np, ln_scale=s, center=False)[0]
        np.testing.assert_allclose(diff[p], raw, rtol=1e-4, atol=1e-4)
        centred = browser.direct_logit_effects(d_np, W_U, ln_w=w_np, ln_scale=s)[0]
        np.testing.assert_allclose(centred, raw - raw.mean(), atol=1e-12)
    naive = d_np @ W_U
    np.testing.assert_allclose(browser.direct_logit_effects(d_np, W_U, center=False), naive, rtol=1e-6)
    assert not np.allclose(browser.direct_logit_effects(d_np, W_U, ln_w=w_np, center=False), naive, rtol=1e-2)
    with pytest.raises(ValueError, match="ln_scale"):
        browser.direct_logit_effects(d_np, W_U, ln_scale=0.0)


def test_describe_prompt():
    acts = np.asarray([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0], [3.0, 0.5, 0.0]])
    p = browser.describe_prompt(np.asarray([7, 8, 9]), acts, name="x", top_k=5, per_token=2, units=np.asarray([10, 11, 12]))
    assert p.top_units.tolist() == [10, 11, 12]  # by max over the prompt: 3, 2, 1
    np.testing.assert_array_equal(p.top_values, acts.T)
    assert p.token_units.tolist() == [[11, 12], [-1, -1], [10, 11]]
    assert p.token_values.tolist() == [[2.0, 1.0], [0.0, 0.0], [3.0, 0.5]]
    assert browser.describe_prompt(np.asarray([1]), np.zeros((1, 3))).top_units.size == 0  # nothing fires
    with pytest.raises((ValueError, TypeError)):  # TypeError: the shape check under jaxtyping (tests)
        browser.describe_prompt(np.asarray([1, 2]), acts)


def test_token_text_for_any_tokenizer(tmp_path):
    byte = ByteTokenizer()
    assert [browser.token_text(byte, t) for t in (65, 10, 0x80, 256, -1)] == ["A", "\\n", "\\x80", "⟨id 256⟩", "⟨id -1⟩"]

    class DecodeOnly:  # a tokenizer without token_str: its decode, made visible
        def decode(self, ids):
            return {0: "a\tb", 1: "<&>"}[ids[0]]

    assert [browser.token_text(DecodeOnly(), t) for t in (0, 1)] == ["a\\tb", "<&>"]
    tokens = np.frombuffer(b"x\n\x80<y", np.uint8)[None, :].astype(np.int32)
    acts = np.ones((1, 5, 1), np.float32)
    units = browser.describe_units(acts, tokens, np.zeros((1, 260)), [0])  # a model vocabulary padded past 256
    browser.write_browser(tmp_path, "bytes", [browser.Section("s", "s", units)], tokenizer=byte)
    page = (tmp_path / "s" / "0.html").read_text()
    assert ">\\n</span>" in page and ">\\x80</span>" in page and ">&lt;</span>" in page


# ------------------------------------------------------------------ a site with a real BPE vocabulary


def _byte_level_bpe() -> HFTokenizer:
    import json.decoder
    import json.encoder

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([inspect.getsource(m) for m in (json.encoder, json.decoder, textwrap)], trainer)
    tok.add_tokens([EVIL])
    return HFTokenizer(tok)


def _acts(ids: np.ndarray, ret: int, evil: int, rng: np.random.Generator) -> np.ndarray:
    acts = np.zeros(ids.shape + (4,), np.float32)
    acts[..., 0] = (ids == ret) * rng.uniform(1.0, 3.0, ids.shape)
    acts[..., 1] = (ids == evil) * 2.0
    acts[..., 2] = rng.exponential(1.0, ids.shape) * (rng.random(ids.shape) < 0.05)
    return acts  # unit 3 never fires


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tok = _byte_level_bpe()
    ret, evil = int(tok.encode(" return")[0]), int(tok.encode(EVIL)[0])
    ids = tok.encode(inspect.getsource(textwrap))
    n_pos = 40
    windows = ids[: ids.size // n_pos * n_pos].reshape(-1, n_pos).copy()
    windows[::7, 20] = evil
    rng = np.random.default_rng(0)
    acts = _acts(windows, ret, evil, rng)
    effects = rng.normal(size=(4, tok.vocab_size))
    effects[0, ret] = 6.0
    units = browser.describe_units(acts, windows, effects, np.arange(4), n_top=8, n_intervals=4, n_per_interval=3)
    prompt_ids = tok.encode("def f(self, width):\n    return " + EVIL)
    prompt = browser.describe_prompt(prompt_ids, _acts(prompt_ids, ret, evil, rng), name="a prompt " + EVIL)
    sections = [browser.Section("Features <img src=x onerror=alert(1)>", "features", units, prompts=[prompt]),
                browser.Section("Neurons", "neurons", units[2:], kind="neuron")]
    out = tmp_path_factory.mktemp("site")
    index = browser.write_browser(out, "browser " + EVIL, sections, tokenizer=tok, notes="notes <b>" + EVIL)
    return dict(out=out, index=index, tok=tok, ret=ret, evil=evil, units=units, sections=sections, prompt=prompt)


UNIT_KEYS = {
    "schema", "section", "kind", "feature_index", "n_tokens", "frac_nonzero", "maxActApprox", "mean_nonzero_activation",
    "top_token_purity", "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "freq_hist_edges",
    "logits_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_edges", "pos_str", "pos_values",
    "pos_ids", "neg_str", "neg_values", "neg_ids", "logits_method", "activations",
}
EXAMPLE_KEYS = {"bin_name", "bin_min", "bin_max", "bin_contains", "tokens", "token_ids", "values",
                "qualifying_token_index", "window", "position", "maxValue", "maxValueTokenIndex"}


def test_layout_and_json_schema(site):
    out, tok, units = site["out"], site["tok"], site["units"]
    index = json.loads((out / "index.json").read_text())
    assert index["schema"] == "superpos_jax.browser.index/1" and [s["slug"] for s in index["sections"]] == ["features", "neurons"]
    for section in index["sections"]:
        for entry in section["units"] + section["prompts"]:
            assert (out / entry["page"]).is_file() and (out / entry["json"]).is_file()
    assert [u["index"] for u in index["sections"][0]["units"]] == [0, 1, 2, 3]
    for u in units:
        rec = json.loads((out / "features" / f"{u.index}.json").read_text())
        assert set(rec) == UNIT_KEYS and rec["schema"] == "superpos_jax.browser.unit/1" and rec["feature_index"] == u.index
        assert rec == json.loads(json.dumps(browser.unit_record(u, tok, section="features")))
        heights = rec["freq_hist_data_bar_heights"]
        assert len(heights) == len(rec["freq_hist_data_bar_values"]) == len(rec["freq_hist_edges"]) - 1 == 40
        assert sum(heights) == round(rec["frac_nonzero"] * rec["n_tokens"])
        assert len(rec["logits_hist_data_bar_heights"]) == len(rec["logits_hist_data_bar_values"])
        assert sum(rec["logits_hist_data_bar_heights"]) == tok.vocab_size
        assert rec["pos_values"] == sorted(rec["pos_values"], reverse=True) and rec["neg_values"] == sorted(rec["neg_values"])
        assert rec["pos_str"] == [tok.token_str(i) for i in rec["pos_ids"]]
        assert len(rec["activations"]) == sum(len(b.contexts) for b in u.bins)
        for ex in rec["activations"]:
            assert set(ex) == EXAMPLE_KEYS
            assert len(ex["tokens"]) == len(ex["values"]) == len(ex["token_ids"])
            assert ex["tokens"] == [tok.token_str(i) for i in ex["token_ids"]]
            v = ex["values"][ex["qualifying_token_index"]]
            assert ex["bin_min"] - 1e-5 <= v <= ex["bin_max"] + 1e-5 and v <= ex["maxValue"]
            assert not any("Ġ" in t or "Ċ" in t for t in ex["tokens"])
    first = json.loads((out / "features" / "0.json").read_text())
    assert first["pos_str"][0] == " return" and first["pos_ids"][0] == site["ret"]  # a merged BPE token, as text
    assert first["activations"][0]["bin_name"] == "top" and first["activations"][0]["tokens"][
        first["activations"][0]["qualifying_token_index"]] == " return"
    dead = json.loads((out / "features" / "3.json").read_text())
    assert dead["frac_nonzero"] == 0 and dead["activations"] == [] and sum(dead["freq_hist_data_bar_heights"]) == 0
    prompt = json.loads((out / "features" / "prompt-0.json").read_text())
    assert prompt["schema"] == "superpos_jax.browser.prompt/1" and len(prompt["per_token"]) == len(prompt["token_ids"])
    assert {0, 1} <= {f["index"] for f in prompt["top_features"]} and 3 not in {f["index"] for f in prompt["top_features"]}
    assert EVIL in prompt["tokens"] and " return" in prompt["tokens"]


def _html_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.html"))


def test_pages_are_escaped_and_self_contained(site):
    out = site["out"]
    pages = _html_files(out)
    assert len(pages) == 1 + 4 + 1 + 2
    for page in pages:
        text = page.read_text()
        assert "<script" not in text.lower() and "<img" not in text.lower() and "notes <b>" not in text
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//|data:|javascript:)""", text, re.I)
        assert "url(" not in text and "@import" not in text
        for href in re.findall(r'href="([^"#]+)', text):  # every link is to a page or file of the site
            assert (page.parent / href).resolve().is_file(), (page, href)
    escaped = html_escaped(EVIL)
    assert escaped in (out / "features" / "1.html").read_text() and escaped in (out / "features" / "prompt-0.html").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in site["index"].read_text() and "notes &lt;b&gt;" in site["index"].read_text()
    assert "[data-tip]:hover::after{content:attr(data-tip)" in site["index"].read_text()  # the hover tooltip


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


# --------------------------------------------------------------------------- a real headless browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(INSTALL, pytrace=False)


def _render(page: Path, profile: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """(the DOM after load, the console lines) of `page` in headless Chromium; with `screenshot`,
    also a 1200x1600 screenshot there. Inline-script errors, CSP violations and console output
    all appear as ":CONSOLE" lines in Chromium's stderr log."""
    args = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
            "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,1600"]
    runs = [args + ["--dump-dom", page.as_uri()]]
    if screenshot is not None:
        runs.append(args + [f"--screenshot={screenshot}", page.as_uri()])
    dom, console = "", []
    for i, cmd in enumerate(runs):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        console += [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
        if i == 0:
            dom = done.stdout
    return dom, console


def test_console_error_detection_catches_broken_pages(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    _, console = _render(broken, tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in console), console
    injected = tmp_path / "injected.html"  # a script that escaped escaping is blocked by the pages' CSP, and reported
    injected.write_text(browser._page("t", "<p>x</p><script>document.title='pwned'</script>"))
    dom, console = _render(injected, tmp_path / "profile")
    assert any("Content Security Policy" in line for line in console), console
    assert "<title>t</title>" in dom
    clean = tmp_path / "clean.html"
    clean.write_text(browser._page("t", "<p>fine</p>"))
    assert _render(clean, tmp_path / "profile")[1] == []


def test_missing_chromium_fails_with_install_instructions(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _chromium()


def test_pages_render_in_headless_chromium(site, tmp_path):
    from PIL import Image

    out = site["out"]
    shots = {}
    for name, page in [("index", site["index"]), ("feature", out / "features" / "0.html"),
                       ("evil", out / "features" / "1.html"), ("prompt", out / "features" / "prompt-0.html")]:
        shots[name] = tmp_path / f"browser_{name}.png"
        dom, console = _render(page, tmp_path / "profile", shots[name])
        assert console == [], (name, console)
        assert "Ġ" not in dom and "Ċ" not in dom, name
        assert "<script" not in dom.lower(), name
        if name != "index":
            n_tokens = dom.count('class="tok')
            tips = re.findall(r'class="tok[^"]*" style="[^"]*" data-tip="([^"]*)"', dom)
            assert n_tokens > 10 and len(tips) == n_tokens  # every token has a hover tooltip with its value(s)
            assert all(re.search(r"(?:activation|#\d+) +-?[0-9.e+-]+|no unit fires", t) for t in tips), name
        if name in ("feature", "prompt", "index"):
            assert "> return</span>" in dom, name  # the merged BPE token " return" as text
    feature_dom, _ = _render(out / "features" / "0.html", tmp_path / "profile")
    assert f'data-tip="&quot; return&quot;  id {site["ret"]}\nactivation' in feature_dom  # value per token on hover
    assert "Top activations" in feature_dom and "Interval" in feature_dom and "<svg" in feature_dom
    evil_dom, _ = _render(out / "features" / "1.html", tmp_path / "profile")
    assert html_escaped(EVIL).replace("&#x27;", "'") in evil_dom  # shown as text, never run
    for name, path in shots.items():
        img = Image.open(path).convert("RGB")
        assert img.size == (1200, 1600), name
        pixels = np.asarray(img).reshape(-1, 3).astype(int)
        assert len(np.unique(pixels[::7], axis=0)) > 20, f"{name} screenshot looks blank"
        orange = (pixels[:, 0] > 240) & (np.abs(pixels[:, 1] - 120) < 25) & (pixels[:, 2] < 40)
        assert orange.sum() > 50, f"{name}: no activation highlight visible"
    print("screenshots:", *map(str, shots.values()))
