"""Our SAEs and real SAELens SAEs (sae-lens 6.54.12, PyTorch) compute the same latents and
reconstructions through the SAELens directory layout, in both directions, for every architecture
both packages have; the cfg fields real sae-lens writes that are not implemented here are refused
by name.

sae-lens and torch come with the `bench` extra, which CI installs: they are imported directly, so a
missing install fails here instead of skipping.
"""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import pytest
import sae_lens
import torch
from sae_lens import saes

from superpos_jax.interop import saelens as sl
from superpos_jax.sae import architectures as archs
from superpos_jax.sae.architectures import SAEParams
from superpos_jax.sae.io import load_sae, save_sae
from superpos_jax.sae.model import SAE

D_IN, D_SAE, BATCH, K = 16, 32, 64, 5
TOL = {"rtol": 1e-5, "atol": 1e-5}
HOOK, MODEL = "blocks.1.hook_resid_post", "toy-model"
SHARED = {"relu": saes.StandardSAE, "topk": saes.TopKSAE, "batchtopk": saes.JumpReLUSAE,
          "matryoshka_batchtopk": saes.JumpReLUSAE, "jumprelu": saes.JumpReLUSAE, "gated": saes.GatedSAE}
"""Our architecture → the SAELens class `sae_lens.SAE.load_from_disk` makes of what we save."""


def _inputs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, D_IN)) + 0.3).astype(np.float32)


def _run_saelens(sae: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents, decoding of the latents, forward) of a SAELens SAE, as numpy."""
    with torch.no_grad():
        xt = torch.from_numpy(x)
        f = sae.encode(xt)
        return f.numpy(), sae.decode(f).numpy(), sae(xt).numpy()


def _run_ours(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = sae.encode(jnp.asarray(x))
    return np.asarray(f), np.asarray(sae.decode(f)), np.asarray(sae(jnp.asarray(x)))


def _assert_same(ours: tuple, theirs: tuple) -> None:
    for what, a, b in zip(("latents", "decoded latents", "reconstruction"), ours, theirs):
        np.testing.assert_allclose(a, b, **TOL, err_msg=what)
    active = np.mean(theirs[0] != 0)
    assert 0.02 < active < 0.9, f"the comparison needs some latents on and some off, {active:.2f} are on"


# ----------------------------------------------------------------------------- ours -> SAELens


def _our_sae(kind: str, seed: int = 1) -> SAE:
    """A random SAE of our architecture `kind`: every parameter non-trivial (biases, thresholds,
    decoder norms, gate scales), trained on activations scaled by 1.7 (folded in on save)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    leaves = {"W_enc": f32(rng.standard_normal((D_SAE, D_IN)) * 0.4), "b_enc": f32(rng.standard_normal(D_SAE) * 0.3),
              "W_dec": f32(rng.standard_normal((D_IN, D_SAE)) * rng.uniform(0.2, 2.0, D_SAE)),
              "b_dec": f32(rng.standard_normal(D_IN) * 0.5)}
    arch = archs.get(kind)
    if kind == "jumprelu":
        leaves["log_threshold"] = f32(np.log(rng.uniform(0.2, 1.5, D_SAE)))
    if kind == "gated":
        leaves["r_mag"], leaves["b_mag"] = f32(rng.standard_normal(D_SAE) * 0.3), f32(rng.standard_normal(D_SAE) * 0.3)
    hparams = {"k": float(K)} if kind in ("topk", "batchtopk", "matryoshka_batchtopk") else {}
    state = {"threshold": jnp.float32(0.9)} if kind in ("batchtopk", "matryoshka_batchtopk") else None
    return SAE(arch, arch.params_type(**leaves), hparams, state, input_scale=1.7)


@pytest.mark.parametrize("kind", sorted(SHARED))
def test_our_saved_sae_loads_in_saelens_and_computes_the_same(tmp_path, kind):
    # every registered architecture is covered (transcoders: test_saelens_transcoders.py; the
    # crosscoder has no SAELens counterpart)
    ours_only = {n for n in archs.hook_names() if type(archs.get(n)).__module__.startswith("superpos_jax.")}
    assert set(SHARED) == ours_only  # (tests may register architectures of their own)
    ours = _our_sae(kind)
    save_sae(ours, tmp_path / kind, hook_name=HOOK, model_name=MODEL)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / kind)
    assert type(theirs) is SHARED[kind]
    assert theirs.cfg.metadata.hook_name == HOOK and theirs.cfg.metadata.model_name == MODEL
    assert theirs.cfg.metadata.sae_lens_version == sl.SAELENS_VERSION  # read as the v6 layout
    assert theirs.cfg.apply_b_dec_to_input is True and theirs.cfg.normalize_activations == "none"
    if kind == "topk":
        assert theirs.cfg.k == K and theirs.cfg.rescale_acts_by_decoder_norm is False
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))


def test_our_batchtopk_is_saelens_jumprelu_at_its_running_threshold(tmp_path):
    """BatchTopK is saved as SAELens saves its own BatchTopK for inference: a JumpReLU whose every
    threshold is the running threshold; each row is then encoded on its own."""
    ours = _our_sae("batchtopk")
    save_sae(ours, tmp_path / "b", hook_name=HOOK, model_name=MODEL)
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "b")
    np.testing.assert_array_equal(theirs.threshold.detach().numpy(), np.full(D_SAE, 0.9, np.float32))
    x = _inputs()
    f_rows = np.concatenate([_run_saelens(theirs, x[i : i + 1])[0] for i in range(4)])
    np.testing.assert_allclose(f_rows, _run_ours(ours, x)[0][:4], **TOL)


# ----------------------------------------------------------------------------- SAELens -> ours


def _randomised(sae: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    """`sae` with every parameter random and non-trivial: biases, thresholds in (0.2, 1.5), gate
    scales, decoder rows of norms in (0.2, 2) (which decoder-norm rescaling sees)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            shape = p.shape
            if name == "threshold":
                value = 0.2 + 1.3 * torch.rand(shape, generator=gen)
            elif name == "W_dec":
                value = torch.randn(shape, generator=gen) * (0.2 + 1.8 * torch.rand(shape[0], 1, generator=gen))
            elif name == "W_enc":
                value = 0.4 * torch.randn(shape, generator=gen)
            else:
                value = 0.3 * torch.randn(shape, generator=gen)
            p.copy_(value.to(p.dtype))
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = torch.tensor(0.9, dtype=torch.float64)
    return sae


def _inference(architecture: str, **fields) -> torch.nn.Module:
    cls, cfg_cls = sae_lens.registry.get_sae_class(architecture)
    return _randomised(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **fields)))


def _training(architecture: str, **fields) -> torch.nn.Module:
    cls, cfg_cls = sae_lens.registry.get_sae_training_class(architecture)
    return _randomised(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **fields)))


INFERENCE_CASES: dict[str, Callable[[], torch.nn.Module]] = {
    "standard": lambda: _inference("standard"),
    "topk": lambda: _inference("topk", k=K),
    "topk-rescaled": lambda: _inference("topk", k=K, rescale_acts_by_decoder_norm=True),
    "jumprelu": lambda: _inference("jumprelu"),
    "gated": lambda: _inference("gated"),
    "standard-no-b_dec": lambda: _inference("standard", apply_b_dec_to_input=False),
    "topk-no-b_dec": lambda: _inference("topk", k=K, apply_b_dec_to_input=False),
    "topk-rescaled-no-b_dec": lambda: _inference("topk", k=K, apply_b_dec_to_input=False,
                                                  rescale_acts_by_decoder_norm=True),
    "jumprelu-no-b_dec": lambda: _inference("jumprelu", apply_b_dec_to_input=False),
    "gated-no-b_dec": lambda: _inference("gated", apply_b_dec_to_input=False),
}
EXPECTED = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


@pytest.mark.parametrize("case", sorted(INFERENCE_CASES))
def test_saelens_inference_sae_loads_here_and_computes_the_same(tmp_path, case):
    theirs = INFERENCE_CASES[case]()
    theirs.cfg.metadata.hook_name, theirs.cfg.metadata.model_name = HOOK, MODEL
    theirs.save_model(tmp_path / case)
    ours = load_sae(tmp_path / case)
    architecture = theirs.cfg.architecture()
    assert ours.architecture.name == EXPECTED[architecture]
    if architecture == "topk":
        assert float(ours.hparams["k"]) == K
    _, cfg = sl.from_saelens(tmp_path / case)
    assert cfg["hook_name"] == HOOK and cfg["model_name"] == MODEL
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))


TRAINING_CASES: dict[str, Callable[[], torch.nn.Module]] = {
    "standard": lambda: _training("standard", l1_coefficient=3.0, lp_norm=1.0),
    "topk": lambda: _training("topk", k=K),  # rescale_acts_by_decoder_norm defaults to true
    "topk-not-rescaled-no-b_dec": lambda: _training("topk", k=K, rescale_acts_by_decoder_norm=False,
                                                    apply_b_dec_to_input=False),
    "jumprelu": lambda: _training("jumprelu", jumprelu_bandwidth=0.01, l0_coefficient=2.0),
    "gated": lambda: _training("gated", l1_coefficient=2.0),
    "batchtopk": lambda: _training("batchtopk", k=K),
    "batchtopk-not-rescaled": lambda: _training("batchtopk", k=float(K) + 0.5, rescale_acts_by_decoder_norm=False),
    "matryoshka_batchtopk": lambda: _training("matryoshka_batchtopk", k=K, matryoshka_widths=[8, D_SAE]),
}


def _inference_reference(theirs: torch.nn.Module, directory) -> torch.nn.Module:
    """What SAELens computes at inference for a training SAE: itself, except for the BatchTopK
    family, whose inference form is the JumpReLU that SAELens's own `save_inference_model` writes,
    as SAELens loads it."""
    if "batchtopk" not in theirs.cfg.architecture():
        return theirs
    theirs.save_inference_model(directory)
    reference = sae_lens.SAE.load_from_disk(directory)
    assert type(reference) is saes.JumpReLUSAE
    return reference


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_saelens_training_checkpoint_loads_here_and_computes_the_same(tmp_path, case):
    """`save_model` of a training SAE (training fields in cfg.json; TopK weights not yet folded by
    their decoder norms; BatchTopK's scalar topk_threshold) loads as SAELens computes it."""
    theirs = TRAINING_CASES[case]()
    theirs.save_model(tmp_path / "checkpoint")
    ours = load_sae(tmp_path / "checkpoint")
    _, cfg = sl.from_saelens(tmp_path / "checkpoint")
    assert cfg["hook_name"] is None and cfg["model_name"] is None  # not trained by a runner: unknown
    reference = _inference_reference(theirs, tmp_path / "inference")
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(reference, x))


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_saelens_inference_export_loads_here_and_computes_the_same(tmp_path, case):
    """`save_inference_model` (TopK folded by decoder norms, BatchTopK as a JumpReLU) loads as
    SAELens loads it, and as the training SAE computes."""
    theirs = TRAINING_CASES[case]()
    theirs.save_inference_model(tmp_path / "inference")
    ours = load_sae(tmp_path / "inference")
    x = _inputs()
    _assert_same(_run_ours(ours, x), _run_saelens(sae_lens.SAE.load_from_disk(tmp_path / "inference"), x))
    if "batchtopk" not in case:
        _assert_same(_run_ours(ours, x), _run_saelens(theirs, x))


@pytest.mark.parametrize("rescale", [False, True])
def test_batchtopk_training_encode_matches_saelens(tmp_path, rescale):
    """The batch-level TopK of training: our BatchTopK on the checkpoint's weights (decoder norms
    folded in) keeps the same k·batch latents of the batch as SAELens's BatchTopK training SAE."""
    theirs = _training("batchtopk", k=K, rescale_acts_by_decoder_norm=rescale)
    theirs.save_model(tmp_path / "checkpoint")
    weights, _ = sl.from_saelens(tmp_path / "checkpoint")
    params = SAEParams(**{name: jnp.asarray(weights[name]) for name in ("W_enc", "b_enc", "W_dec", "b_dec")})
    batchtopk = archs.get("batchtopk")
    x = _inputs()
    f = batchtopk.encode(params, jnp.asarray(x), {"k": jnp.float32(K)})
    x_hat = batchtopk.decode(params, f)
    with torch.no_grad():
        f_theirs = theirs.encode(torch.from_numpy(x))
        x_hat_theirs = theirs.decode(f_theirs)
    assert int(np.sum(np.asarray(f) != 0)) == K * BATCH == int(torch.count_nonzero(f_theirs))
    np.testing.assert_allclose(np.asarray(f), f_theirs.numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(x_hat), x_hat_theirs.numpy(), **TOL)


def test_saelens_metadata_is_read(tmp_path):
    theirs = _inference("jumprelu")
    theirs.cfg.metadata.hook_name, theirs.cfg.metadata.model_name = "blocks.0.hook_mlp_out", "gpt2"
    theirs.cfg.metadata.context_size, theirs.cfg.metadata.prepend_bos = 128, True
    theirs.save_model(tmp_path / "sae")
    _, cfg = sl.from_saelens(tmp_path / "sae")
    assert (cfg["hook_name"], cfg["model_name"]) == ("blocks.0.hook_mlp_out", "gpt2")
    assert cfg["metadata"]["context_size"] == 128 and cfg["metadata"]["sae_lens_version"] == sae_lens.__version__


# ----------------------------------------------------------------------------- refused


REFUSED: dict[str, tuple[Callable[[], torch.nn.Module], str]] = {
    "layer_norm": (lambda: _inference("standard", normalize_activations="layer_norm"),
                   "field 'normalize_activations' = 'layer_norm' is not supported"),
    "constant_norm_rescale": (lambda: _inference("topk", k=K, normalize_activations="constant_norm_rescale"),
                              "field 'normalize_activations' = 'constant_norm_rescale' is not supported"),
    "expected_average_only_in": (lambda: _training("standard", normalize_activations="expected_average_only_in"),
                                 "field 'normalize_activations' = 'expected_average_only_in' is not supported"),
    "covariance_whitening": (lambda: _inference("jumprelu", normalize_activations="covariance_whitening"),
                             "field 'normalize_activations' = 'covariance_whitening' is not supported"),
    "hook_z": (lambda: _inference("gated", reshape_activations="hook_z"),
               "field 'reshape_activations' = 'hook_z' is not supported"),
    "abstopk": (lambda: _inference("abstopk", k=K), "field 'architecture' = 'abstopk' is invalid: must be one of"),
    "abstopk-training": (lambda: _training("abstopk", k=K), "field 'architecture' = 'abstopk' is invalid"),
    "matching_pursuit": (lambda: _inference("matching_pursuit"),
                         "field 'architecture' = 'matching_pursuit' is invalid"),
    "jumprelu_transcoder": (lambda: _inference("jumprelu_transcoder", d_out=8, apply_b_dec_to_input=False),
                            "field 'architecture' = 'jumprelu_transcoder' is invalid"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_saelens_files_asking_for_unimplemented_behaviour_are_refused(tmp_path, case):
    build, message = REFUSED[case]
    theirs = build()
    theirs.save_model(tmp_path / case)
    with pytest.raises(sl.SAELensFormatError, match=message) as info:
        load_sae(tmp_path / case)
    assert "cfg.json" in str(info.value)


def test_saelens_single_head_hook_is_refused(tmp_path):
    theirs = _inference("standard")
    theirs.cfg.metadata.hook_name, theirs.cfg.metadata.hook_head_index = "blocks.0.attn.hook_z", 1
    theirs.save_model(tmp_path / "sae")
    message = "field 'metadata.hook_head_index' = 1 is not supported: must be null"
    with pytest.raises(sl.SAELensFormatError, match=message):
        load_sae(tmp_path / "sae")
