"""Transcoders, skip-transcoders and Matryoshka BatchTopK against the real sae-lens 6.54.12 through
the SAELens directory layout, both ways: what we save, `sae_lens.SAE.load_from_disk` loads as its
`Transcoder` / `SkipTranscoder` / `JumpReLUSAE` computing the same latents and predictions, and
what sae-lens saves loads here computing the same."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import sae_lens
import torch
from sae_lens import saes

from superpos_jax.interop import saelens as sl
from superpos_jax.sae import architectures as archs
from superpos_jax.sae.io import load_sae, save_sae
from superpos_jax.sae.model import SAE

D_IN, D_OUT, D_SAE, BATCH = 16, 8, 32, 64
TOL = {"rtol": 1e-5, "atol": 1e-5}
HOOK, MODEL = "blocks.0.ln2.hook_normalized", "toy-model"
CLASSES = {"transcoder": saes.Transcoder, "skip_transcoder": saes.SkipTranscoder}


def _inputs(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((BATCH, D_IN)) + 0.3).astype(np.float32)


def _run_saelens(sae: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.no_grad():
        xt = torch.from_numpy(x)
        f = sae.encode(xt)
        return f.numpy(), sae.decode(f).numpy(), sae(xt).numpy()


def _run_ours(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, ...]:
    f = sae.encode(jnp.asarray(x))
    return np.asarray(f), np.asarray(sae.decode(f)), np.asarray(sae(jnp.asarray(x)))


def _assert_same(ours: tuple, theirs: tuple) -> None:
    for what, a, b in zip(("latents", "decoded latents", "prediction"), ours, theirs):
        np.testing.assert_allclose(a, b, **TOL, err_msg=what)
    active = np.mean(theirs[0] != 0)
    assert 0.02 < active < 0.9, f"the comparison needs some latents on and some off, {active:.2f} are on"


def _our_transcoder(kind: str, seed: int = 1) -> SAE:
    """A random (skip-)transcoder with d_out ≠ d_in, trained on inputs scaled by 1.7."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    leaves = {"W_enc": f32(rng.standard_normal((D_SAE, D_IN)) * 0.4), "b_enc": f32(rng.standard_normal(D_SAE) * 0.3),
              "W_dec": f32(rng.standard_normal((D_OUT, D_SAE)) * rng.uniform(0.2, 2.0, D_SAE)),
              "b_dec": f32(rng.standard_normal(D_OUT) * 0.5)}
    arch = archs.get(kind)
    if kind == "skip_transcoder":
        leaves["W_skip"] = f32(rng.standard_normal((D_OUT, D_IN)) * 0.3)
    return SAE(arch, arch.params_type(**leaves), {}, None, input_scale=1.7)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_our_saved_transcoder_loads_in_saelens_and_computes_the_same(tmp_path, kind):
    ours = _our_transcoder(kind)
    save_sae(ours, tmp_path / kind, hook_name=HOOK, model_name=MODEL)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / kind)
    assert type(theirs) is CLASSES[kind]
    assert theirs.cfg.d_out == D_OUT and theirs.cfg.apply_b_dec_to_input is False
    assert theirs.cfg.metadata.hook_name == HOOK
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))
    if kind == "skip_transcoder":  # the skip term is part of the prediction, not of decode(f)
        assert not np.allclose(_run_ours(ours, x)[2], _run_ours(ours, x)[1], atol=1e-3)


def _randomised(sae: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 0.4 if name in ("W_enc", "W_skip") else 0.3
            p.copy_((scale * torch.randn(p.shape, generator=gen)).to(p.dtype))
    return sae


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_saelens_transcoder_loads_here_and_computes_the_same(tmp_path, kind):
    cls, cfg_cls = sae_lens.registry.get_sae_class(kind)
    theirs = _randomised(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)))
    theirs.cfg.metadata.hook_name, theirs.cfg.metadata.model_name = HOOK, MODEL
    theirs.save_model(tmp_path / kind)
    ours = load_sae(tmp_path / kind)
    assert ours.architecture.name == kind and ours.architecture.d_out == D_OUT
    assert ours.d_in == D_IN and ours.decoder.shape == (D_OUT, D_SAE)
    assert ours.architecture.row_width(D_IN) == D_IN + D_OUT
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))


def test_saelens_refuses_what_it_cannot_compute_here(tmp_path):
    cls, cfg_cls = sae_lens.registry.get_sae_class("jumprelu_transcoder")
    cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)).save_model(tmp_path / "j")
    with pytest.raises(sl.SAELensFormatError, match="field 'architecture' = 'jumprelu_transcoder' is invalid"):
        load_sae(tmp_path / "j")
    save_sae(_our_transcoder("transcoder"), tmp_path / "t", hook_name=HOOK, model_name=MODEL)
    cfg = json.loads((tmp_path / "t" / "cfg.json").read_text())
    (tmp_path / "t" / "cfg.json").write_text(json.dumps({**cfg, "apply_b_dec_to_input": True}))
    with pytest.raises(sl.SAELensFormatError, match="cfg.json: field 'apply_b_dec_to_input' = True is not supported for a transcoder: must be false"):
        load_sae(tmp_path / "t")
    (tmp_path / "t" / "cfg.json").write_text(json.dumps({**cfg, "d_out": D_OUT + 1}))
    with pytest.raises(sl.SAELensFormatError, match="tensor 'W_dec' has shape"):
        load_sae(tmp_path / "t")


def test_our_matryoshka_is_saelens_jumprelu_at_its_running_threshold(tmp_path):
    arch = archs.get("matryoshka_batchtopk")
    rng = np.random.default_rng(3)
    params = arch.init(D_IN, D_SAE, key=__import__("jax").random.key(0))
    params = archs.SAEParams(W_enc=params.W_enc * 1.3, b_enc=jnp.asarray(rng.normal(size=D_SAE) * 0.3, jnp.float32),
                             W_dec=params.W_dec, b_dec=jnp.asarray(rng.normal(size=D_IN) * 0.2, jnp.float32))
    ours = SAE(arch, params, {"k": 4.0}, {"threshold": jnp.float32(0.6)}, input_scale=1.7)
    save_sae(ours, tmp_path / "m", hook_name=HOOK, model_name=MODEL)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "m")
    assert type(theirs) is saes.JumpReLUSAE
    assert json.loads((tmp_path / "m" / "cfg.json").read_text())["superpos_architecture"] == "matryoshka_batchtopk"
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))
