"""safetensors reader/writer against the format spec, and the SAELens SAE directory layout."""

import json
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from superpos_jax.interop import safetensors as st
from superpos_jax.interop import saelens as sl

BF16 = np.dtype(jnp.bfloat16)


def _bits(array: np.ndarray) -> np.ndarray:
    """The raw bit patterns of an array, for bit-exact comparison (NaN payloads included)."""
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    return array.view(np.dtype(f"u{array.dtype.itemsize}"))


def _sample(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = rng.standard_normal(shape).astype(dtype)
    flat = values.reshape(-1)
    specials = np.array([np.inf, -np.inf, np.nan, -0.0], dtype=np.float64).astype(dtype)
    n = min(flat.size, specials.size)
    flat[:n] = specials[:n]
    return values


def _raw_file(header: dict, data: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header).encode("utf-8")
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


# ----------------------------------------------------------------------------- safetensors


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.float16, BF16, np.int32, np.int64, np.uint8, np.int8, np.bool_],
    ids=lambda d: np.dtype(d).name,
)
def test_round_trip_is_bit_exact(tmp_path, rng, dtype):
    dtype = np.dtype(dtype)
    tensors = {"matrix": _sample(dtype, (3, 5), rng), "vector": _sample(dtype, (7,), rng),
               "scalar": _sample(dtype, (), rng), "empty": _sample(dtype, (0, 4), rng)}
    metadata = {"format": "np", "note": "ünïcode ✓", "empty": ""}
    path = st.save_file(tensors, tmp_path / "t.safetensors", metadata=metadata)
    loaded = st.load_file(path)
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(_bits(loaded[name]), _bits(array))
    assert st.read_metadata(path) == metadata


def test_mixed_dtypes_and_no_metadata(tmp_path, rng):
    tensors = {"a": _sample(np.dtype(np.float16), (3,), rng), "b": _sample(np.dtype(np.float64), (2, 2), rng),
               "c": _sample(BF16, (5,), rng), "d": _sample(np.dtype(np.uint8), (3,), rng)}
    path = st.save_file(tensors, tmp_path / "t.safetensors")
    loaded = st.load_file(path)
    for name, array in tensors.items():
        np.testing.assert_array_equal(_bits(loaded[name]), _bits(array))
    assert st.read_metadata(path) is None
    assert st.load_file(st.save_file({}, tmp_path / "empty.safetensors")) == {}


def test_hand_written_file_is_read(tmp_path):
    """A file assembled byte by byte from the spec (not by our writer) reads back correctly."""
    f32 = struct.pack("<4f", 1.0, -2.5, 0.0, 3.25)
    bf16 = struct.pack("<3H", 0x3F80, 0xC000, 0x7F80)  # 1.0, -2.0, +inf
    i32 = struct.pack("<2i", -7, 2**31 - 1)
    f64 = struct.pack("<d", np.pi)
    header = {
        "__metadata__": {"source": "hand"},
        "weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "half": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
        "ints": {"dtype": "I32", "shape": [2, 1], "data_offsets": [22, 30]},
        "pi": {"dtype": "F64", "shape": [], "data_offsets": [30, 38]},
    }
    for pad in (True, False):  # readers must not rely on the writer's padding
        path = tmp_path / f"hand{pad}.safetensors"
        path.write_bytes(_raw_file(header, f32 + bf16 + i32 + f64, pad=pad))
        loaded = st.load_file(path)
        np.testing.assert_array_equal(loaded["weight"], np.array([[1.0, -2.5], [0.0, 3.25]], np.float32))
        assert loaded["half"].dtype == BF16
        np.testing.assert_array_equal(loaded["half"].astype(np.float32), np.array([1.0, -2.0, np.inf], np.float32))
        np.testing.assert_array_equal(loaded["ints"], np.array([[-7], [2**31 - 1]], np.int32))
        assert loaded["pi"].shape == () and loaded["pi"].dtype == np.float64 and loaded["pi"] == np.pi
        assert st.read_metadata(path) == {"source": "hand"}


def test_written_file_follows_spec(tmp_path):
    """Parse our writer's output by hand: u64 LE length, space-padded JSON, contiguous LE C-order data."""
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))
    bf = np.array([1.0, -2.0], dtype=BF16)
    path = st.save_file({"be": big_endian, "fortran": fortran, "bf": bf}, tmp_path / "t.safetensors", {"k": "v"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0
    text = raw[8 : 8 + n].decode("utf-8")
    assert text.startswith("{") and text.rstrip(" ").endswith("}")
    header = json.loads(text)
    assert header["__metadata__"] == {"k": "v"}
    assert header["be"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": header["be"]["data_offsets"]}
    data = raw[8 + n :]
    begin, end = header["be"]["data_offsets"]
    assert struct.unpack("<6f", data[begin:end]) == tuple(range(6))
    begin, end = header["fortran"]["data_offsets"]
    assert header["fortran"]["dtype"] == "I64"
    assert struct.unpack("<6q", data[begin:end]) == tuple(range(6))  # C order
    begin, end = header["bf"]["data_offsets"]
    assert header["bf"]["dtype"] == "BF16" and struct.unpack("<2H", data[begin:end]) == (0x3F80, 0xC000)
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for key, value in header.items():  # each tensor aligned to its item size
        if key != "__metadata__":
            assert value["data_offsets"][0] % st.DTYPES[value["dtype"]].itemsize == 0


_GOOD = {
    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "y": {"dtype": "I32", "shape": [1], "data_offsets": [8, 12]},
}
_DATA = bytes(12)


def _corrupt_cases() -> list:
    good = _raw_file(_GOOD, _DATA)
    return [
        pytest.param(b"", "truncated.*8-byte", id="empty"),
        pytest.param(b"\x10\x00\x00", "truncated.*8-byte", id="short-prefix"),
        pytest.param(struct.pack("<Q", 4096) + b"{}", "header length 4096 runs past", id="header-past-eof"),
        pytest.param(struct.pack("<Q", 2**62) + b"{}", "exceeds the limit", id="huge-header-length"),
        pytest.param(good[:-3], "truncated: tensor 'y' ends at byte 12", id="truncated-data"),
        pytest.param(struct.pack("<Q", 8) + b"{not js}", "header: not valid JSON", id="bad-json"),
        pytest.param(struct.pack("<Q", 8) + b"[1,2,3] ", "must be a JSON object", id="json-array"),
        pytest.param(_raw_file({"x": {**_GOOD["x"], "dtype": "F33"}}, bytes(8)), "unknown dtype 'F33'", id="dtype"),
        pytest.param(_raw_file({"x": {**_GOOD["x"], "shape": [3]}}, bytes(8)), "span 8 bytes.*needs 12", id="shape"),
        pytest.param(_raw_file({"x": {**_GOOD["x"], "shape": [-2]}}, bytes(8)), "shape must be a list of at most 32 non-negative ints", id="neg-shape"),
        pytest.param(_raw_file({"x": {"dtype": "F32", "shape": [2]}}, bytes(8)), "exactly dtype, shape", id="no-offs"),
        pytest.param(_raw_file({"x": {**_GOOD["x"], "data_offsets": [8, 0]}}, bytes(8)), "invalid data_off", id="rev"),
        pytest.param(_raw_file({"x": _GOOD["x"], "y": {**_GOOD["y"], "data_offsets": [12, 16]}}, bytes(16)),
                     "not contiguous \\(gap", id="gap"),
        pytest.param(_raw_file({"x": _GOOD["x"], "y": {**_GOOD["y"], "data_offsets": [4, 8]}}, bytes(8)),
                     "not contiguous \\(overlap", id="overlap"),
        pytest.param(_raw_file(_GOOD, _DATA + b"junk"), "4 trailing bytes", id="trailing"),
        pytest.param(_raw_file({**_GOOD, "__metadata__": {"a": 1}}, _DATA), "__metadata__ must map str", id="metadata"),
        pytest.param(struct.pack("<Q", 16) + b'{"a":{},"a":{}} ', "repeats the key 'a'", id="duplicate-key"),
        pytest.param(_raw_file({"b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"),
                     "BOOL data holds bytes", id="bool-bytes"),
    ]


@pytest.mark.parametrize("raw, message", _corrupt_cases())
def test_corrupt_files_give_clear_errors(tmp_path, raw, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(raw)
    with pytest.raises(st.SafetensorsError, match=message) as info:
        st.load_file(path)
    assert str(path) in str(info.value)
    if "BOOL data" not in message:  # read_metadata validates the header, not the tensor bytes
        with pytest.raises(st.SafetensorsError):
            st.read_metadata(path)


def test_save_rejects_bad_input(tmp_path):
    path = tmp_path / "t.safetensors"
    with pytest.raises(st.SafetensorsError, match="'z'.*complex"):
        st.save_file({"z": np.zeros(2, np.complex64)}, path)
    with pytest.raises(st.SafetensorsError, match="invalid tensor name '__metadata__'"):
        st.save_file({"__metadata__": np.zeros(2, np.float32)}, path)
    with pytest.raises(st.SafetensorsError, match="metadata must map str to str"):
        st.save_file({"x": np.zeros(2, np.float32)}, path, metadata={"n": 3})
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        st.load_file(tmp_path / "missing.safetensors")


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    original = {"x": np.arange(4, dtype=np.float32)}
    st.save_file(original, path, metadata={"v": "1"})
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(st.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        st.save_file({"x": np.ones(1000, np.float64)}, path, metadata={"v": "2"})
    monkeypatch.undo()
    with pytest.raises(st.SafetensorsError):  # fails validation after nothing was written
        st.save_file({"x": np.zeros(2, np.complex128)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary files left
    np.testing.assert_array_equal(st.load_file(path)["x"], original["x"])


def _our_weights(architecture: str, d_in: int, d_sae: int, rng: np.random.Generator, dtype=np.float32) -> dict:
    """SAE weights in OUR convention: W_enc (d_sae, d_in), W_dec (d_in, d_sae)."""
    shapes = {"W_enc": (d_sae, d_in), "W_dec": (d_in, d_sae), "b_dec": (d_in,), "W_skip": (d_in, d_in)}
    shapes = {name: shape for name, shape in shapes.items() if name in sl.ARCHITECTURES[architecture]}
    shapes.update({name: (d_sae,) for name in sl.ARCHITECTURES[architecture] if name not in shapes})
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in shapes.items()}


def _cfg(architecture: str, **extra) -> dict:
    cfg = {"architecture": architecture, "hook_name": "blocks.0.hook_resid_post", "model_name": "toy"}
    if architecture == "topk":
        cfg["k"] = 3
    return {**cfg, **extra}


@pytest.mark.parametrize("architecture", sorted(sl.ARCHITECTURES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, BF16], ids=lambda d: np.dtype(d).name)
def test_saelens_round_trip_is_exact(tmp_path, rng, architecture, dtype):
    d_in, d_sae = 5, 12
    weights = _our_weights(architecture, d_in, d_sae, rng, dtype)
    directory = sl.save_saelens(tmp_path / "sae", weights, _cfg(architecture, custom_field={"a": [1, 2]}))
    assert sorted(p.name for p in directory.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    on_disk = st.load_file(directory / "sae_weights.safetensors")
    assert set(on_disk) == set(sl.ARCHITECTURES[architecture])
    assert on_disk["W_enc"].shape == (d_in, d_sae) and on_disk["W_dec"].shape == (d_sae, d_in)
    np.testing.assert_array_equal(_bits(on_disk["W_enc"]), _bits(weights["W_enc"].T))
    np.testing.assert_array_equal(_bits(on_disk["W_dec"]), _bits(weights["W_dec"].T))

    cfg_json = json.loads((directory / "cfg.json").read_text())
    assert cfg_json["architecture"] == architecture
    assert (cfg_json["d_in"], cfg_json["d_sae"]) == (d_in, d_sae)
    assert cfg_json["dtype"] == np.dtype(dtype).name and cfg_json["device"] == "cpu"
    transcoder = architecture in ("transcoder", "skip_transcoder")  # no b_dec centring; d_out = d_in here
    assert cfg_json["apply_b_dec_to_input"] is not transcoder and cfg_json["normalize_activations"] == "none"
    assert cfg_json.get("d_out") == (d_in if transcoder else None)
    assert cfg_json["reshape_activations"] == "none"
    assert cfg_json["metadata"] == {"sae_lens_version": sl.SAELENS_VERSION, "sae_lens_training_version": None,
                                    "hook_head_index": None, "hook_name": "blocks.0.hook_resid_post",
                                    "model_name": "toy"}
    assert cfg_json["hook_name"] == "blocks.0.hook_resid_post" and cfg_json["model_name"] == "toy"
    assert cfg_json["custom_field"] == {"a": [1, 2]}
    if architecture == "topk":
        assert cfg_json["k"] == 3 and cfg_json["rescale_acts_by_decoder_norm"] is False
    assert "activation_fn_kwargs" not in cfg_json and "activation_fn_str" not in cfg_json

    loaded, cfg = sl.from_saelens(directory)
    assert cfg == cfg_json  # what is written here is already in the form the reader returns
    assert set(loaded) == set(weights)
    for name, array in weights.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(_bits(loaded[name]), _bits(array))


def test_saelens_pure_conversion_matches_math(rng):
    """SAELens computes x @ W_enc; we compute W_enc @ x: both give the same pre-activations."""
    weights = _our_weights("standard", 4, 6, rng, np.float64)
    tensors, cfg_json = sl.to_saelens(weights, _cfg("standard"))
    x = rng.standard_normal(4)
    np.testing.assert_allclose(x @ tensors["W_enc"] + tensors["b_enc"], weights["W_enc"] @ x + weights["b_enc"])
    latents = rng.standard_normal(6)
    np.testing.assert_allclose(latents @ tensors["W_dec"], weights["W_dec"] @ latents)
    back = sl.weights_from_saelens(tensors, cfg_json)
    assert all(np.array_equal(back[name], weights[name]) for name in weights)


def test_saelens_loads_unknown_fields_and_v6_metadata(tmp_path, rng):
    weights = _our_weights("jumprelu", 3, 4, rng)
    tensors, _ = sl.to_saelens(weights, _cfg("jumprelu"))
    directory = tmp_path / "v6"
    directory.mkdir()
    st.save_file(tensors, directory / "sae_weights.safetensors")
    cfg = {"architecture": "jumprelu", "d_in": 3, "d_sae": 4, "dtype": "float32", "reshape_activations": "none",
           "l0_coefficient": 2.0, "jumprelu_sparsity_loss_mode": "tanh", "decoder_init_norm": None,
           "metadata": {"hook_name": "blocks.2.hook_mlp_out", "model_name": "gpt2", "extra": 1,
                        "seqpos_slice": [None], "training_architecture": "jumprelu"}}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    loaded, cfg_loaded = sl.from_saelens(directory)
    assert cfg_loaded["hook_name"] == "blocks.2.hook_mlp_out" and cfg_loaded["model_name"] == "gpt2"
    assert cfg_loaded["reshape_activations"] == "none" and cfg_loaded["metadata"]["extra"] == 1
    assert cfg_loaded["jumprelu_sparsity_loss_mode"] == "tanh"  # a training-only field: kept, not read
    np.testing.assert_array_equal(loaded["threshold"], weights["threshold"])


def _write_dir(directory: Path, tensors: dict, cfg: dict) -> Path:
    directory.mkdir()
    st.save_file(tensors, directory / "sae_weights.safetensors")
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory


def test_saelens_hook_name_may_be_unknown_but_not_contradictory(tmp_path, rng):
    tensors, cfg = sl.to_saelens(_our_weights("standard", 3, 4, rng), _cfg("standard"))
    bare = {k: v for k, v in cfg.items() if k not in ("hook_name", "model_name", "metadata")}
    versioned = {**bare, "metadata": {"sae_lens_version": "6.1"}}
    _, loaded = sl.from_saelens(_write_dir(tmp_path / "bare", tensors, versioned))
    assert loaded["hook_name"] is None and loaded["model_name"] is None
    _, legacy = sl.from_saelens(_write_dir(tmp_path / "legacy", tensors, {**bare, "hook_point": "blocks.1.hook_z"}))
    assert legacy["hook_name"] == "blocks.1.hook_z"
    clash = {**cfg, "metadata": {**cfg["metadata"], "hook_name": "blocks.9.hook_resid_pre"}}
    with pytest.raises(sl.SAELensFormatError, match="'hook_name' and 'metadata.hook_name' disagree"):
        sl.from_saelens(_write_dir(tmp_path / "clash", tensors, clash))
    with pytest.raises(sl.SAELensFormatError, match="field 'metadata.hook_name' = 3 is invalid: must be a string"):
        sl.from_saelens(_write_dir(tmp_path / "type", tensors, {**bare, "metadata": {"hook_name": 3}}))
    written = sl.saelens_cfg({"architecture": "standard"}, d_in=3, d_sae=4, dtype="float32")
    assert written["hook_name"] is None and written["metadata"]["hook_name"] is None


def _pre_activations_saelens(tensors: dict, cfg: dict, x: np.ndarray) -> np.ndarray:
    """SAELens's standard/topk pre-activations (float64), from its cfg fields."""
    x_in = x - tensors["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    z = x_in @ tensors["W_enc"] + tensors["b_enc"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        z = z * np.linalg.norm(tensors["W_dec"], axis=1)
    return z


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("rescale", [None, False, True])
def test_saelens_folds_b_dec_and_decoder_norm_rescaling_exactly(rng, apply_b_dec, rescale):
    """apply_b_dec_to_input false and rescale_acts_by_decoder_norm true load as equivalent weights in
    our convention: the same pre-activations and the same decoding of SAELens's latents."""
    tensors = {"W_enc": rng.standard_normal((5, 7)), "b_enc": rng.standard_normal(7),
               "W_dec": rng.standard_normal((7, 5)) * rng.uniform(0.2, 3.0, (7, 1)), "b_dec": rng.standard_normal(5)}
    cfg = {"architecture": "topk", "d_in": 5, "d_sae": 7, "k": 3, "apply_b_dec_to_input": apply_b_dec}
    if rescale is not None:
        cfg["rescale_acts_by_decoder_norm"] = rescale
    weights, out = sl.from_saelens_tensors(tensors, cfg)
    assert out["apply_b_dec_to_input"] is True and out.get("rescale_acts_by_decoder_norm", False) is False
    x = rng.standard_normal((9, 5))
    z_ours = (x - weights["b_dec"]) @ weights["W_enc"].T + weights["b_enc"]
    np.testing.assert_allclose(z_ours, _pre_activations_saelens(tensors, cfg, x), rtol=1e-12, atol=1e-12)
    f = np.maximum(z_ours, 0.0)
    scale = 1.0 / np.linalg.norm(tensors["W_dec"], axis=1) if rescale else 1.0
    np.testing.assert_allclose(f @ weights["W_dec"].T + weights["b_dec"],
                               (f * scale) @ tensors["W_dec"] + tensors["b_dec"], rtol=1e-12, atol=1e-12)


def test_saelens_gated_b_dec_fold(rng):
    t = {"W_enc": rng.standard_normal((4, 6)), "b_gate": rng.standard_normal(6), "r_mag": rng.standard_normal(6) * 0.3,
         "b_mag": rng.standard_normal(6), "W_dec": rng.standard_normal((6, 4)), "b_dec": rng.standard_normal(4)}
    cfg = {"architecture": "gated", "d_in": 4, "d_sae": 6, "apply_b_dec_to_input": False}
    weights, _ = sl.from_saelens_tensors(t, cfg)
    x = rng.standard_normal((5, 4))
    xw = (x - weights["b_dec"]) @ weights["W_enc"].T
    np.testing.assert_allclose(xw + weights["b_gate"], x @ t["W_enc"] + t["b_gate"], atol=1e-12)
    np.testing.assert_allclose(np.exp(weights["r_mag"]) * xw + weights["b_mag"],
                               x @ (t["W_enc"] * np.exp(t["r_mag"])) + t["b_mag"], atol=1e-12)


def test_saelens_training_checkpoint_tensors(rng):
    """A batchtopk checkpoint loads as the JumpReLU SAELens's save_inference_model makes of it;
    an older jumprelu checkpoint's log_threshold becomes the threshold; a legacy scaling_factor of
    ones is dropped, any other refused."""
    base = {"W_enc": rng.standard_normal((4, 6)).astype(np.float32), "b_enc": rng.standard_normal(6).astype(np.float32),
            "W_dec": rng.standard_normal((6, 4)).astype(np.float32), "b_dec": rng.standard_normal(4).astype(np.float32)}
    cfg = {"architecture": "batchtopk", "d_in": 4, "d_sae": 6, "k": 2.5, "rescale_acts_by_decoder_norm": False,
           "topk_threshold_lr": 0.01}
    weights, out = sl.from_saelens_tensors({**base, "topk_threshold": np.array(0.375, np.float64)}, cfg)
    assert out["architecture"] == "jumprelu" and out["k"] == 2.5
    np.testing.assert_array_equal(weights["threshold"], np.full(6, 0.375, np.float32))
    assert weights["threshold"].dtype == np.float32
    with pytest.raises(sl.SAELensFormatError, match=r"'topk_threshold' has shape \(1,\), expected \(\)"):
        sl.from_saelens_tensors({**base, "topk_threshold": np.array([0.375])}, cfg)
    with pytest.raises(sl.SAELensFormatError, match="batchtopk field 'k' = None is invalid: must be a number > 0"):
        sl.from_saelens_tensors({**base, "topk_threshold": np.array(0.375)}, {**cfg, "k": None})

    log_threshold = rng.standard_normal(6).astype(np.float32)
    weights, _ = sl.from_saelens_tensors({**base, "log_threshold": log_threshold}, {**cfg, "architecture": "jumprelu"})
    np.testing.assert_allclose(weights["threshold"], np.exp(log_threshold), rtol=1e-7)

    ones = {**base, "scaling_factor": np.ones(6, np.float32)}
    assert set(sl.weights_from_saelens(ones, {**cfg, "architecture": "standard"})) == set(base)
    with pytest.raises(sl.SAELensFormatError, match="'scaling_factor'.*finetuning_scaling_factor is not supported"):
        sl.weights_from_saelens({**ones, "scaling_factor": np.full(6, 2.0, np.float32)},
                                {**cfg, "architecture": "standard"})


def test_saelens_pre_6_topk_is_read_as_sae_lens_reads_it(rng):
    tensors, _ = sl.to_saelens(_our_weights("standard", 3, 4, rng), _cfg("standard"))
    legacy = {"architecture": "standard", "d_in": 3, "d_sae": 4, "activation_fn_str": "topk",
              "activation_fn_kwargs": {"k": 2}, "hook_point": "blocks.0.hook_resid_pre",
              "sae_lens_training_version": "4.1"}
    _, out = sl.from_saelens_tensors(tensors, legacy)
    assert out["architecture"] == "topk" and out["hook_name"] == "blocks.0.hook_resid_pre"
    v6 = {**legacy, "metadata": {"sae_lens_version": "6.2.0"}}  # SAELens 6 ignores activation_fn_str there
    with pytest.raises(sl.SAELensFormatError, match="'activation_fn_str' = 'topk' is not supported for a standard SAE"):
        sl.from_saelens_tensors(tensors, v6)


def test_saelens_load_errors(tmp_path, rng):
    tensors, cfg = sl.to_saelens(_our_weights("jumprelu", 3, 4, rng), _cfg("jumprelu"))
    missing = {k: v for k, v in tensors.items() if k != "threshold"}
    with pytest.raises(sl.SAELensFormatError, match=r"jumprelu SAE is missing tensor\(s\) \['threshold'\]"):
        sl.from_saelens(_write_dir(tmp_path / "missing", missing, cfg))
    with pytest.raises(sl.SAELensFormatError, match=r"unexpected tensor\(s\) \['extra'\]"):
        sl.from_saelens(_write_dir(tmp_path / "extra", {**tensors, "extra": np.zeros(4, np.float32)}, cfg))
    ours_on_disk = {**tensors, "W_enc": np.ascontiguousarray(tensors["W_enc"].T)}  # forgot to transpose
    with pytest.raises(sl.SAELensFormatError, match=r"'W_enc' has shape \(4, 3\), expected \(3, 4\)"):
        sl.from_saelens(_write_dir(tmp_path / "transposed", ours_on_disk, cfg))
    with pytest.raises(sl.SAELensFormatError, match=r"'b_dec' has shape \(3,\), expected \(5,\)"):
        bad = {**tensors, "W_enc": np.zeros((5, 4), np.float32), "W_dec": np.zeros((4, 5), np.float32)}
        sl.from_saelens(_write_dir(tmp_path / "dims", bad, {**cfg, "d_in": 5}))
    with pytest.raises(sl.SAELensFormatError, match="field 'd_sae' = '4' is invalid: must be a positive int"):
        sl.from_saelens(_write_dir(tmp_path / "dsae", tensors, {**cfg, "d_sae": "4"}))
    with pytest.raises(sl.SAELensFormatError, match="missing required field 'd_in'"):
        sl.from_saelens(_write_dir(tmp_path / "nodin", tensors, {k: v for k, v in cfg.items() if k != "d_in"}))
    with pytest.raises(sl.SAELensFormatError, match="field 'architecture' = 'relu' is invalid: must be one of"):
        sl.from_saelens(_write_dir(tmp_path / "arch", tensors, {**cfg, "architecture": "relu"}))
    with pytest.raises(sl.SAELensFormatError, match="field 'dtype' = 'int8' is invalid: must be a string naming"):
        sl.from_saelens(_write_dir(tmp_path / "dtype", tensors, {**cfg, "dtype": "int8"}))
    topk_tensors = {k: v for k, v in tensors.items() if k != "threshold"}
    with pytest.raises(sl.SAELensFormatError, match="topk cfg is missing 'k'"):
        sl.from_saelens(_write_dir(tmp_path / "nok", topk_tensors, {**cfg, "architecture": "topk", "k": None}))
    with pytest.raises(FileNotFoundError, match="has no cfg.json"):
        directory = tmp_path / "nocfg"
        directory.mkdir()
        sl.from_saelens(directory)
    bad_json = _write_dir(tmp_path / "badjson", tensors, cfg)
    (bad_json / "cfg.json").write_text("{oops")
    with pytest.raises(sl.SAELensFormatError, match="cfg.json: not valid JSON"):
        sl.from_saelens(bad_json)
    corrupt = _write_dir(tmp_path / "corrupt", tensors, cfg)
    (corrupt / "sae_weights.safetensors").write_bytes((corrupt / "sae_weights.safetensors").read_bytes()[:-1])
    with pytest.raises(st.SafetensorsError, match="truncated"):
        sl.from_saelens(corrupt)


def test_saelens_save_errors(tmp_path, rng):
    weights = _our_weights("standard", 3, 4, rng)
    cases = [
        ({k: v for k, v in weights.items() if k != "b_enc"}, _cfg("standard"), r"missing tensor\(s\) \['b_enc'\]"),
        ({**weights, "threshold": np.zeros(4, np.float32)}, _cfg("standard"), r"unexpected tensor\(s\) \['thresh"),
        ({**weights, "W_dec": weights["W_dec"].T}, _cfg("standard"), r"'W_dec' has shape \(4, 3\), expected \(3, 4\)"),
        ({**weights, "b_dec": np.zeros(4, np.float32)}, _cfg("standard"), r"'b_dec' has shape \(4,\), expected \(3,\)"),
        (weights, _cfg("standard", d_in=7), "'d_in' is 7 but the weights give 3"),
        (weights, _cfg("standard", dtype="float16"), "'dtype' is 'float16' but the weights give 'float32'"),
        (weights, _cfg("standard", hook_name=3), "field 'hook_name' = 3 is invalid: must be a string or null"),
        (weights, _cfg("standard", metadata={"model_name": "other"}), "'model_name' = 'toy' disagrees with 'metadata"),
        (weights, {"hook_name": "h", "model_name": "toy"}, "missing required field 'architecture'"),
        (weights, _cfg("batchtopk"), r"'batchtopk' is not one of \['gated', 'jumprelu', 'skip_transcoder', 'standard', 'topk', 'transcoder'\]"),
        (weights, _cfg("standard", apply_b_dec_to_input=False), "'apply_b_dec_to_input' = False is not supported when"),
        (weights, _cfg("topk", rescale_acts_by_decoder_norm=True), "'rescale_acts_by_decoder_norm' = True is not supp"),
        (weights, _cfg("standard", normalize_activations="layer_norm"), "'normalize_activations' = 'layer_norm' is"),
        (weights, _cfg("topk", k=9), r"k must be an int in \[1, d_sae=4\]"),
        (weights, _cfg("topk", activation_fn_kwargs={"k": 2}), r"conflicting k values \[2, 3\]"),
        ({**weights, "W_enc": weights["W_enc"].astype(np.int32)}, _cfg("standard"), "not a SAELens float dtype"),
    ]
    for bad_weights, cfg, message in cases:
        with pytest.raises(sl.SAELensFormatError, match=message):
            sl.save_saelens(tmp_path / "sae", bad_weights, cfg)
    assert not (tmp_path / "sae").exists()  # validation precedes any write
    tensors, cfg_json = sl.to_saelens(weights, {**_cfg("topk", activation_fn_kwargs={"k": 3}), "k": None})
    assert cfg_json["k"] == 3 and "activation_fn_kwargs" not in cfg_json  # the legacy spelling of k
    _, cfg_json = sl.to_saelens(weights, _cfg("standard", metadata={"sae_lens_version": "5.0", "l0": 3.5}))
    assert cfg_json["metadata"]["sae_lens_version"] == sl.SAELENS_VERSION and cfg_json["metadata"]["l0"] == 3.5


def test_saelens_accepts_jax_arrays(tmp_path, rng):
    weights = _our_weights("gated", 3, 4, rng)
    directory = sl.save_saelens(tmp_path / "sae", {k: jnp.asarray(v) for k, v in weights.items()}, _cfg("gated"))
    loaded, _ = sl.from_saelens(directory)
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)


_REFUSED = [
    ("normalize_activations", "layer_norm"),
    ("normalize_activations", "constant_norm_rescale"),
    ("normalize_activations", "expected_average_only_in"),
    ("normalize_activations", "covariance_whitening"),
    ("normalize_activations", True),
    ("rescale_acts_by_decoder_norm", True),
    ("reshape_activations", "hook_z"),
    ("finetuning_scaling_factor", True),
    ("hook_head_index", 3),
    ("hook_point_head_index", 3),
    ("metadata.hook_head_index", 3),
    ("activation_fn_str", "tanh-relu"),
    ("activation_fn", "tanh-relu"),
]
_IMPLEMENTED = {"normalize_activations": "none", "rescale_acts_by_decoder_norm": False, "reshape_activations": "none",
                "finetuning_scaling_factor": False, "hook_head_index": None, "hook_point_head_index": None,
                "metadata.hook_head_index": None, "activation_fn_str": "relu", "activation_fn": "relu"}


def _with(cfg: dict, field: str, value) -> dict:
    if field.startswith("metadata."):
        return {**cfg, "metadata": {**cfg.get("metadata", {}), field.removeprefix("metadata."): value}}
    return {**cfg, field: value}


@pytest.mark.parametrize(("field", "value"), _REFUSED)
def test_saelens_cfg_asking_for_unimplemented_behaviour_is_refused(tmp_path, rng, field, value):
    """Loading and saving refuse a field whose value would make our encodings wrong, naming it."""
    weights = _our_weights("standard", 3, 4, rng)
    tensors, cfg = sl.to_saelens(weights, _cfg("standard"))
    directory = _write_dir(tmp_path / "sae", tensors, _with(cfg, field, value))
    with pytest.raises(sl.SAELensFormatError, match=rf"field '{field}' = .* is not supported.*: must be"):
        sl.from_saelens(directory)
    with pytest.raises(sl.SAELensFormatError, match=rf"'{field}' = .* is not supported"):
        sl.to_saelens(weights, _with(_cfg("standard"), field, value))
    # the implemented values of the same fields load
    loaded, _ = sl.from_saelens(_write_dir(tmp_path / "ok", tensors, _with(cfg, field, _IMPLEMENTED[field])))
    np.testing.assert_array_equal(loaded["W_enc"], weights["W_enc"])


def test_saelens_activation_fn_must_match_the_architecture(tmp_path, rng):
    tensors, cfg = sl.to_saelens(_our_weights("topk", 3, 4, rng), {**_cfg("topk"), "k": 2})
    with pytest.raises(sl.SAELensFormatError, match="'activation_fn_str' = 'relu' is not supported for a topk SAE"):
        sl.from_saelens(_write_dir(tmp_path / "sae", tensors, {**cfg, "activation_fn_str": "relu"}))
