"""feature-completeness: the single-latent F1 criterion against brute force, the keyword labels,
the size-needed / fit / rank statistics on hand-made cases, and the study end to end on a
reduced config (one shared run)."""

import json
import keyword

import numpy as np
import pytest

from superpos_experiments import feature_completeness as fc
from superpos_jax import cli
from superpos_jax.config import ConfigError, validate
from superpos_jax.lm.transformer import TransformerConfig
from superpos_jax.rundir import RunDir

REDUCED = dict(max_bytes=400_000, model=TransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64,
                                                          n_ctx=32, d_vocab=256, act="relu"),
               n_steps=400, lm_batch=32, eval_windows=32, harvest_windows=256, dictionary_sizes=(16, 32, 64, 128, 256),
               k=4, sae_steps=300, sae_batch=256, probe_windows=256, min_count=8, chunk_steps=100, log_every=50,
               dictionary_sweep="masked")


def _codes(dense):
    row, latent = np.nonzero(dense > 0)
    return fc.SparseCodes(row, latent, dense[row, latent], dense.shape[0])


def _brute_force(dense, y):
    """Best (F1, latent, threshold) per concept over every latent and every observed value."""
    out = []
    for c in range(y.shape[1]):
        best = (0.0, -1, np.inf)
        for j in range(dense.shape[1]):
            for t in np.unique(dense[:, j][dense[:, j] > 0]):
                pred = dense[:, j] >= t
                f1 = 2.0 * np.sum(pred & y[:, c]) / (pred.sum() + y[:, c].sum())
                if f1 > best[0] + 1e-12:
                    best = (f1, j, t)
        out.append(best)
    return out


def test_best_latents_matches_brute_force_and_held_out_f1():
    rng = np.random.default_rng(0)
    n, d = 300, 12
    dense = np.where(rng.random((n, d)) < 0.2, rng.random((n, d)), 0.0)
    dense[:40, 3] = np.round(dense[:40, 3], 1)  # ties: a threshold must sit at the end of a run of equal values
    y = np.stack([dense[:, 5] > 0.5, rng.random(n) < 0.1, dense[:, 3] > 0.0, np.zeros(n, bool) | (np.arange(n) < 2)],
                 axis=1)
    latent, threshold, f1 = fc.best_latents(_codes(dense), y, chunk=3)
    for c, (bf1, bj, bt) in enumerate(_brute_force(dense, y)):
        np.testing.assert_allclose(f1[c], bf1, rtol=1e-12)
        pred = dense[:, latent[c]] >= threshold[c]  # the returned classifier attains that F1
        np.testing.assert_allclose(2.0 * np.sum(pred & y[:, c]) / (pred.sum() + y[:, c].sum()), bf1, rtol=1e-12)
    assert latent[0] == 5 and f1[0] == 1.0 and threshold[0] > 0.5  # a latent that IS the concept
    assert latent[2] == 3 and f1[2] == 1.0
    # classifier_f1 on other rows equals the direct count
    other = np.where(rng.random((n, d)) < 0.3, rng.random((n, d)), 0.0)
    got = fc.classifier_f1(_codes(other), y, latent, threshold)
    for c in range(y.shape[1]):
        pred = other[:, latent[c]] >= threshold[c]
        np.testing.assert_allclose(got[c], 2.0 * np.sum(pred & y[:, c]) / (pred.sum() + y[:, c].sum()))
    none = fc.best_latents(_codes(np.zeros((5, 3))), np.ones((5, 2), bool))
    assert none[0].tolist() == [-1, -1] and none[2].tolist() == [0.0, 0.0]
    assert fc.classifier_f1(_codes(dense), y[:, :2], none[0], none[1]).tolist() == [0.0] * 2


def test_keyword_ends_and_statistics():
    text = b"def f(x):\n    return not x  # classify\n"
    mask = np.zeros(len(text), bool)
    for word in (b"def", b"return", b"not"):
        a = text.index(word)
        mask[a: a + len(word)] = True
    kw = fc.keyword_ends(np.frombuffer(text, np.uint8), mask)
    ends = {int(i): keyword.kwlist[v] for i, v in enumerate(kw) if v >= 0}
    assert ends == {2: "def", text.index(b"return") + 5: "return", text.index(b"not") + 2: "not"}
    scores = np.asarray([[0.9, 0.2, 0.9], [0.1, 0.6, 0.7], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(fc.size_needed(scores, np.asarray([8, 16, 32]), 0.5), [8, 16, np.nan])
    np.testing.assert_array_equal(fc.size_needed_stable(scores, np.asarray([8, 16, 32]), 0.5), [32, 16, np.nan])
    freq = np.asarray([0.1, 0.01, 0.001, 0.0001])
    fit = fc.fit_exponent(freq, 1.0 / freq)  # N = 1 / f exactly
    np.testing.assert_allclose([fit["exponent"], fit["intercept"], fit["r2"]], [-1.0, 0.0, 1.0], atol=1e-12)
    assert fc.fit_exponent(freq, np.asarray([8.0, 8.0, np.nan, 8.0])) is None
    assert fc.censored_spearman(freq, np.full(4, np.nan), 32) is None
    assert fc.censored_spearman(freq, np.asarray([8.0, 16.0, 32.0, np.nan]), 32) == pytest.approx(-1.0)
    assert fc.censored_spearman(freq, np.asarray([np.nan, 32.0, 16.0, 8.0]), 32) == pytest.approx(1.0)


def test_config_errors_name_the_field(capsys, tmp_path):
    for bad, field in ((dict(k=64, dictionary_sizes=(32, 64, 128)), "k"), (dict(dictionary_sizes=(64, 32, 128)),
                                                                            "dictionary_sizes"),
                       (dict(f1_threshold=0.0), "f1_threshold"), (dict(skip_positions=64), "skip_positions")):
        with pytest.raises(ConfigError, match=field):
            validate(fc.Config(**bad))
    assert cli.main(["run", "feature-completeness", "--set", "min_count=0", "--out", str(tmp_path / "o")]) == 2
    assert "superpos: error:" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("completeness")
    cfg = fc.Config(**REDUCED)
    validate(cfg)
    return out, fc.run(cfg, RunDir(out), progress=False)


@pytest.mark.slow
def test_summary_and_figures(reduced_run):
    out, s = reduced_run
    sizes = list(REDUCED["dictionary_sizes"])
    assert s["dictionary_sizes"] == sizes and s["dictionary_sweep"] == "masked" and s["sae"]["programs"] == 1
    assert s["lm"]["val_loss"] < s["lm"]["unigram_baseline"]
    assert [r["d_sae"] for r in s["sae"]["per_size"]] == sizes
    fvu = [r["fvu"] for r in s["sae"]["per_size"]]
    assert fvu[-1] < fvu[0]  # larger dictionaries reconstruct better
    assert all(0 < r["l0"] <= REDUCED["k"] + 1e-6 for r in s["sae"]["per_size"]), s["sae"]["per_size"]
    groups = {c["group"] for c in s["concepts"]}
    assert groups == {"syntax", "byte", "keyword"} and s["n_concepts"] == len(s["concepts"]) >= 30
    for c in s["concepts"]:
        assert c["n_fit_positives"] >= REDUCED["min_count"] and c["n_test_positives"] >= REDUCED["min_count"]
        assert 0 < c["frequency"] < 1 and len(c["test_f1_per_size"]) == len(sizes)
        assert all(0.0 <= v <= 1.0 for v in c["test_f1_per_size"] + c["fit_f1_per_size"])
        hit = [n for n, v in zip(sizes, c["test_f1_per_size"]) if v >= s["f1_threshold"]]
        assert c["size_needed"] == (hit[0] if hit else None)  # the smallest size reaching the threshold
        stable = [n for i, n in enumerate(sizes) if all(v >= s["f1_threshold"] for v in c["test_f1_per_size"][i:])]
        assert c["size_needed_stable"] == (stable[0] if stable else None)
        assert c["lost_at_larger_size"] == (hit != [] and (not stable or stable[0] != hit[0]))
        assert all(0 <= j < n for j, n in zip(c["latent_per_size"], sizes) if j >= 0)
    assert s["n_resolved"] == sum(c["size_needed"] is not None for c in s["concepts"])
    # the byte classes with certain concepts: the newline byte is one latent in every dictionary
    newline = next(c for c in s["concepts"] if c["name"] == "byte '\\n'")
    assert min(newline["test_f1_per_size"]) > 0.9
    # resolved fractions grow with the dictionary overall (not by construction: separate SAEs)
    frac = s["resolved_fraction_per_size"]
    assert frac[-1] > frac[0]
    for name in ("completeness", "scores", "lm_loss", "sae_loss"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
    assert "Spearman" in s["finding"] and json.loads(json.dumps(s)) == s


@pytest.mark.slow
def test_rare_concepts_need_larger_dictionaries(reduced_run):
    """The science claim, on the token-identity concepts (byte values and keywords): the rarer
    the concept, the larger the dictionary that first has a latent for it (negative rank
    correlation, unresolved concepts ranked above every size; and a negative fitted exponent over
    the resolved ones). The broad syntactic contexts (string, comment, indentation) are a
    different story in a model this small: most are resolved by no single latent at any size
    (see `by_group`), so the test does not assert the trend for them."""
    _, s = reduced_run
    tokens = [c for c in s["concepts"] if c["group"] in ("byte", "keyword")]
    freq = np.asarray([c["frequency"] for c in tokens])
    needed = np.asarray([np.nan if c["size_needed"] is None else c["size_needed"] for c in tokens])
    rho = fc.censored_spearman(freq, needed, max(REDUCED["dictionary_sizes"]))
    assert rho < -0.2, (rho, s["finding"], s["by_group"])
    assert s["by_group"]["byte"]["spearman_censored"] < 0
    assert s["exponent"] is not None and s["exponent"] < 0
