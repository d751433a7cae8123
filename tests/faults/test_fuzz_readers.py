"""Fuzzing the file readers with seeded malformed inputs: safetensors files, SAELens cfg.json and
the transformer's config.json.

Every generated case must end in one of the readers' documented errors (`SafetensorsError`,
`SAELensFormatError`, `TransformerFormatError`) or in a successful load that agrees with the
file; a TypeError, KeyError, IndexError, RecursionError, MemoryError or any other exception
fails the case. Valid files (random dtypes, shapes, metadata, cfg variants) must still load
exactly. The reduced set (about a hundred cases) runs by default; `faults_full` runs several
hundred more. Finally a 1 GiB sparse file whose header declares 4 bytes must be refused without
reading it (bounded memory, measured with tracemalloc and the peak RSS).
"""

from __future__ import annotations

import json
import random
import resource
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from superpos_jax.interop import saelens as sl
from superpos_jax.interop import safetensors as st
from superpos_jax.lm.io import TransformerFormatError, load_transformer, save_transformer
from superpos_jax.sae.io import load_sae

N_REDUCED = {"safetensors": 50, "cfg": 35, "model": 15}
N_FULL = {"safetensors": 400, "cfg": 250, "model": 80}
_CODES = sorted(st.DTYPES)


def _raw(header: Any, data: bytes, *, pad: bool = True) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _valid_tensors(rng: random.Random) -> dict[str, np.ndarray]:
    np_rng = np.random.default_rng(rng.randrange(2**32))
    tensors = {}
    for i in range(rng.randint(1, 4)):
        code = rng.choice(_CODES)
        shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 3)))
        dtype = st.DTYPES[code]
        if code == "BOOL":
            value = np_rng.integers(0, 2, shape).astype(bool)
        elif dtype.kind in "iu":
            value = np_rng.integers(0, 100, shape).astype(dtype)
        else:
            value = np_rng.normal(size=shape).astype(dtype)
        tensors[f"t{i}.{code.lower()}"] = value
    return tensors


def _layout(tensors: dict[str, np.ndarray]) -> tuple[dict, bytes]:
    """A header dict and data buffer laid out in name order (offsets contiguous)."""
    header, chunks, offset = {}, [], 0
    for name, value in tensors.items():
        code = next(c for c, d in st.DTYPES.items() if d == value.dtype)
        data = np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": code, "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    return header, b"".join(chunks)


def _junk_value(rng: random.Random) -> Any:
    """A JSON value of a random kind, often the wrong one for wherever it goes."""
    return rng.choice([
        None, True, False, 0, -1, 1, 2**64, -(2**63), 10**30, 1.5, -0.0, float("nan"), float("inf"), "", "F32", "x" * 300,
        [], [1], [[1, 2]], [-1, 3], [0, 2**70], ["a"], [1.5, 2], [True, False], {}, {"a": 1}, {"dtype": "F32"},
    ])


def _deep(depth: int, leaf: Any = 0) -> bytes:
    return b"[" * depth + json.dumps(leaf).encode() + b"]" * depth


def _mutate_header_entry(header: dict, rng: random.Random) -> dict:
    header = json.loads(json.dumps(header))
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets", "__entry__", "__extra__", "__missing__"])
    if field == "__entry__":
        header[name] = _junk_value(rng)
    elif field == "__extra__":
        header[name]["extra"] = _junk_value(rng)
    elif field == "__missing__":
        del header[name][rng.choice(["dtype", "shape", "data_offsets"])]
    elif field == "dtype":
        header[name]["dtype"] = rng.choice([_junk_value(rng), "f32", "F32 ", "float32", "F8_E4M3FN", "I128", "",
                                            rng.choice(_CODES), ["F32"], {"F32": 1}])
    elif field == "shape":
        header[name]["shape"] = rng.choice([_junk_value(rng), [2**62, 2**62, 0], [0, 2**63], [0] * 40, [-0],
                                            [rng.randint(0, 9) for _ in range(rng.randint(0, 4))], [1.0], ["2"]])
    else:
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([
            _junk_value(rng), [end, begin], [begin, end + 1], [begin - 1, end], [begin + 1, end + 1], [0, 2**70],
            [begin, 10**40], [-8, end], [begin], [begin, end, end], [float(begin), float(end)], [str(begin), end],
        ])
    return header


def _safetensors_case(seed: int) -> tuple[str, bytes]:
    """One seeded (mutation name, file bytes) pair; some mutations leave the file valid."""
    rng = random.Random(seed)
    header, data = _layout(_valid_tensors(rng))
    if rng.random() < 0.3:
        header["__metadata__"] = {"format": "pt", "note": "ünïcode"}
    good = _raw(header, data)
    n = len(good) - 8 - len(data)  # the padded header length
    kind = rng.choice(["length", "truncate", "not_json", "entry", "overlap", "huge", "deep", "utf8", "metadata",
                       "duplicate", "flip", "constants", "top_level", "trailing", "append_entry"])
    if kind == "length":
        value = rng.choice([0, 1, 7, n - 1, n + 1, n + 8, len(good), len(good) - 7, 2**63, 2**64 - 1, 100_000_001])
        return kind, struct.pack("<Q", value) + good[8:]
    if kind == "truncate":
        return kind, good[: rng.randrange(len(good))]
    if kind == "not_json":
        junk = rng.choice([b"{", b"}", b"{'a': 1}", b"nul", b'{"a":}', b"\xef\xbb\xbf{}", b"{}}", b"[" * 50,
                           bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))])
        return kind, _raw(junk, data)
    if kind == "entry":
        return kind, _raw(_mutate_header_entry(header, rng), data)
    if kind == "overlap":
        names = [k for k in header if k != "__metadata__"]
        header[rng.choice(names)]["data_offsets"] = [0, header[names[0]]["data_offsets"][1]]
        header[f"copy.{names[0]}"] = dict(header[names[0]])
        return kind, _raw(header, data)
    if kind == "huge":
        name = next(k for k in header if k != "__metadata__")
        header[name] = {"dtype": "F64", "shape": [2**20, 2**20, 2**20], "data_offsets": [0, 8 * 2**60]}
        return kind, _raw(header, data)
    if kind == "deep":
        depth = rng.choice([9, 50, 1000, 200_000])
        where = rng.choice(["metadata", "shape", "whole"])
        if where == "whole":
            return kind, _raw(_deep(depth), data)
        if where == "metadata":
            header["__metadata__"] = {"a": "@DEEP@"}
        else:
            header[next(k for k in header if k != "__metadata__")]["shape"] = "@DEEP@"
        return kind, _raw(json.dumps(header).encode().replace(b'"@DEEP@"', _deep(depth)), data)
    if kind == "utf8":
        body = bytearray(json.dumps(header).encode())
        body[rng.randrange(1, len(body) - 1)] = rng.choice([0x80, 0xC0, 0xFF, 0xFE, 0xED])
        return kind, _raw(bytes(body), data)
    if kind == "metadata":
        header["__metadata__"] = rng.choice([_junk_value(rng), {"a": 1}, {"a": None}, {"a": ["b"]}, {"a": {"b": "c"}}])
        return kind, _raw(header, data)
    if kind == "duplicate":
        body = json.dumps(header).encode()
        first = body[1:].split(b"}", 1)[0] + b"}"
        return kind, _raw(b"{" + first + b", " + body[1:], data)
    if kind == "flip":
        raw = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(min(len(raw), 8 + n))] ^= 1 << rng.randrange(8)
        return kind, bytes(raw)
    if kind == "constants":
        name = next(k for k in header if k != "__metadata__")
        text = json.dumps(header).encode()
        token = json.dumps(header[name]["data_offsets"]).encode()
        replacement = rng.choice([b"[NaN, 1]", b"[0, Infinity]", b"[-Infinity, 0]", b"[0, 1e999]",
                                  b"[0, " + b"9" * 5000 + b"]", b"[0, 1" + b"0" * 45 + b"]"])
        return kind, _raw(text.replace(token, replacement, 1), data)
    if kind == "top_level":
        return kind, _raw(_junk_value(rng) if rng.random() < 0.5 else [header], data)
    if kind == "trailing":
        return kind, good + bytes(rng.randint(1, 64))
    header[f"new{rng.randrange(100)}"] = {"dtype": rng.choice(_CODES), "shape": [rng.randint(0, 3)],
                                           "data_offsets": [len(data), len(data) + rng.randint(0, 24)]}
    return "append_entry", _raw(header, data)


def _check_loaded(raw: bytes, tensors: dict[str, np.ndarray]) -> None:
    """A successful load must agree with the header it came from."""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert set(tensors) == set(header) - {"__metadata__"}
    for name, value in tensors.items():
        assert isinstance(value, np.ndarray) and value.dtype == st.DTYPES[header[name]["dtype"]].newbyteorder("=")
        assert list(value.shape) == header[name]["shape"]
        begin, end = header[name]["data_offsets"]
        assert value.tobytes() == raw[8 + n + begin : 8 + n + end]


def _expect_documented(call: Callable[[], Any], errors: tuple[type[Exception], ...]) -> Any:
    """`call()`'s result, None for one of `errors`; anything else fails the case."""
    try:
        return call()
    except errors:
        return None


def _seeds(kind: str) -> list:
    reduced = [pytest.param(s, id=f"{kind}-{s}") for s in range(N_REDUCED[kind])]
    full = [pytest.param(s, id=f"{kind}-{s}", marks=pytest.mark.faults_full)
            for s in range(N_REDUCED[kind], N_REDUCED[kind] + N_FULL[kind])]
    return reduced + full


@pytest.mark.parametrize("seed", _seeds("safetensors"))
def test_malformed_safetensors_give_documented_errors(tmp_path, seed):
    kind, raw = _safetensors_case(seed)
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(raw)
    loaded = _expect_documented(lambda: st.load_file(path), (st.SafetensorsError,))
    metadata = _expect_documented(lambda: st.read_metadata(path), (st.SafetensorsError,))
    if loaded is not None:
        _check_loaded(raw, loaded)
        assert metadata is None or isinstance(metadata, dict)


_ONE = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}


@pytest.mark.parametrize("header, message", [
    pytest.param({"x": {**_ONE["x"], "dtype": ["F32"]}}, "unknown dtype \\['F32'\\]", id="dtype-list"),
    pytest.param({"x": {**_ONE["x"], "dtype": {"F32": 1}}}, "unknown dtype \\{'F32': 1\\}", id="dtype-dict"),
    pytest.param(b'{"x": ' + _deep(100_000) + b"}", "nested 100001 levels deep; at most 8", id="deep"),
    pytest.param(b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4' + b"0" * 5000 + b"]}}",
                 "integer of 5001 digits", id="5000-digit-int"),
])
def test_the_reported_header_cases(tmp_path, header, message):
    """Issue 12: a dtype given as a list/dict raised TypeError, deep JSON RecursionError."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_raw(header, bytes(4)))
    for read in (st.load_file, st.read_metadata):
        with pytest.raises(st.SafetensorsError, match=message):
            read(path)


@pytest.mark.parametrize("field, value, message", [
    ("architecture", ["topk"], "field 'architecture' = \\['topk'\\] is invalid: must be one of"),
    ("architecture", {"name": "topk"}, "field 'architecture' = \\{'name': 'topk'\\} is invalid"),
    ("dtype", ["float32"], "field 'dtype' = \\['float32'\\] is invalid: must be a string"),
    ("dtype", {"float32": True}, "field 'dtype' = .* is invalid: must be a string"),
    ("k", [2], "field 'k' = \\[2\\] is invalid: must be an int or null"),
    ("activation_fn_kwargs", {"k": [2]}, "topk cfg k must be an int"),
    ("hook_name", ["blocks.0"], "field 'hook_name' = .* must be a string"),
])
def test_the_reported_cfg_cases(tmp_path, sae_template, field, value, message):
    """Issue 12: a dtype or architecture given as a list/dict in cfg.json raised TypeError."""
    template, cfg = sae_template
    directory = tmp_path / "sae"
    directory.mkdir()
    (directory / sl.WEIGHTS_FILENAME).write_bytes((template / sl.WEIGHTS_FILENAME).read_bytes())
    (directory / sl.CFG_FILENAME).write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(sl.SAELensFormatError, match=message):
        load_sae(directory)


def test_deeply_nested_cfg_json_is_refused(tmp_path, sae_template):
    template, cfg = sae_template
    directory = tmp_path / "sae"
    directory.mkdir()
    (directory / sl.WEIGHTS_FILENAME).write_bytes((template / sl.WEIGHTS_FILENAME).read_bytes())
    (directory / sl.CFG_FILENAME).write_bytes(b'{"extra": ' + _deep(100_000) + b", " + json.dumps(cfg).encode()[1:])
    with pytest.raises(sl.SAELensFormatError, match="cfg.json: JSON nested 100001 levels deep; at most 32"):
        load_sae(directory)


@pytest.mark.parametrize("seed", range(20))
def test_random_valid_safetensors_round_trip(tmp_path, seed):
    rng = random.Random(10_000 + seed)
    tensors = _valid_tensors(rng)
    metadata = {"k": "v", "ü": "ñ"} if seed % 2 else None
    path = st.save_file(tensors, tmp_path / "ok.safetensors", metadata=metadata)
    loaded = st.load_file(path)
    assert st.read_metadata(path) == metadata and set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert loaded[name].tobytes() == value.tobytes()
    header, data = _layout(tensors)  # a hand-laid file (other order, no padding) loads too
    hand = tmp_path / "hand.safetensors"
    hand.write_bytes(_raw(header, data, pad=False))
    assert all(st.load_file(hand)[k].tobytes() == v.tobytes() for k, v in tensors.items())


# ---------------------------------------------------------------- SAELens cfg.json


def _sae_dir(root: Path, architecture: str = "topk") -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    d_in, d_sae = 3, 5
    weights = {"W_enc": rng.normal(size=(d_sae, d_in)), "b_enc": rng.normal(size=d_sae),
               "W_dec": rng.normal(size=(d_in, d_sae)), "b_dec": rng.normal(size=d_in)}
    if architecture == "jumprelu":
        weights["threshold"] = np.abs(rng.normal(size=d_sae))
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    extra = {"k": 2} if architecture == "topk" else {}
    directory = sl.save_saelens(root, weights, {"architecture": architecture, "hook_name": "blocks.0.mlp.post",
                                                "model_name": "fuzz", **extra})
    return directory, json.loads((directory / sl.CFG_FILENAME).read_text())


def _cfg_case(seed: int, cfg: dict) -> tuple[str, bytes]:
    rng = random.Random(seed)
    cfg = dict(cfg)
    kind = rng.choice(["missing", "extra", "wrong_type", "container", "nan", "huge", "deep", "not_json",
                       "utf8", "top_level", "duplicate", "v6", "k_conflict"])
    fields = sorted(sl.CFG_FIELDS)
    if kind == "missing":
        for field in rng.sample(sorted(cfg), rng.randint(1, 3)):
            del cfg[field]
    elif kind == "extra":
        for i in range(rng.randint(1, 4)):
            cfg[f"extra_{i}_{rng.randrange(1000)}"] = _junk_value(rng)
    elif kind == "wrong_type":
        cfg[rng.choice(fields)] = _junk_value(rng)
    elif kind == "container":
        cfg[rng.choice(fields)] = rng.choice([[cfg.get("d_in", 3)], {"value": 1}, ["topk"], {"k": 2}, [], {}])
    elif kind == "nan":
        cfg[rng.choice(fields + ["extra"])] = rng.choice([float("nan"), float("inf"), -float("inf")])
    elif kind == "huge":
        field = rng.choice(["d_in", "d_sae", "k", "hook_layer", "context_size", "extra"])
        literal = rng.choice([b"1e400", b"-1e400", b"9" * 60, b"1" + b"0" * 30, b"9" * 5000])
        return kind, json.dumps({**cfg, field: "@HUGE@"}).encode().replace(b'"@HUGE@"', literal)
    elif kind == "deep":
        text = json.dumps(cfg).encode()
        depth = rng.choice([33, 100, 100_000])
        target = rng.choice(["model_from_pretrained_kwargs", "extra", "whole"])
        if target == "whole":
            return kind, _deep(depth)
        return kind, b'{"' + target.encode() + b'": ' + _deep(depth) + b", " + text[1:]
    elif kind == "not_json":
        return kind, rng.choice([b"", b"{", b"nul", b"{'architecture': 'topk'}", json.dumps(cfg).encode()[:-1]])
    elif kind == "utf8":
        body = bytearray(json.dumps(cfg, ensure_ascii=False).encode())
        body[rng.randrange(1, len(body) - 1)] = 0xFF
        return kind, bytes(body)
    elif kind == "top_level":
        return kind, json.dumps(rng.choice([[cfg], "cfg", 3, None])).encode()
    elif kind == "duplicate":
        return kind, b'{"d_in": 3, ' + json.dumps(cfg).encode()[1:]
    elif kind == "v6":  # valid: SAELens v6 moves hook_name/model_name into "metadata"
        cfg["metadata"] = {"hook_name": cfg.pop("hook_name"), "model_name": cfg.pop("model_name"), "extra": [1, {}]}
    else:
        cfg["activation_fn_kwargs"] = {"k": rng.choice([1, 3, 2.0, "2", None, [2], 99])}
    return kind, json.dumps(cfg).encode()


@pytest.fixture(scope="module")
def sae_template(tmp_path_factory) -> tuple[Path, dict]:
    return _sae_dir(tmp_path_factory.mktemp("sae") / "template")


@pytest.mark.parametrize("seed", _seeds("cfg"))
def test_malformed_saelens_cfg_gives_documented_errors(tmp_path, sae_template, seed):
    template, cfg = sae_template
    kind, raw = _cfg_case(seed, cfg)
    directory = tmp_path / "sae"
    directory.mkdir()
    (directory / sl.WEIGHTS_FILENAME).write_bytes((template / sl.WEIGHTS_FILENAME).read_bytes())
    (directory / sl.CFG_FILENAME).write_bytes(raw)
    loaded = _expect_documented(lambda: sl.from_saelens(directory), (sl.SAELensFormatError,))
    sae = _expect_documented(lambda: load_sae(directory), (sl.SAELensFormatError,))
    assert (loaded is None) == (sae is None)
    if loaded is not None:
        weights, cfg_loaded = loaded
        # hook_name is optional (real SAELens files may lack it): absent is None, present is a string
        assert (cfg_loaded["hook_name"] is None or isinstance(cfg_loaded["hook_name"], str)) and sae.d_sae == 5
        assert all(w.dtype == np.float32 and np.all(np.isfinite(w)) for w in weights.values())


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, "nan", "inf"])
@pytest.mark.parametrize("tensor", ["W_enc", "b_dec"])
def test_non_float_or_non_finite_weights_are_refused(tmp_path, sae_template, dtype, tensor):
    template, cfg = sae_template
    tensors = st.load_file(template / sl.WEIGHTS_FILENAME)
    if dtype in ("nan", "inf"):
        tensors[tensor] = tensors[tensor].copy()
        tensors[tensor].flat[1] = float(dtype)
        message = "non-finite"
    else:
        tensors[tensor] = np.ones(tensors[tensor].shape, dtype)
        message = f"tensor '{tensor}' has dtype {np.dtype(dtype).name}"
    directory = tmp_path / "sae"
    directory.mkdir()
    st.save_file(tensors, directory / sl.WEIGHTS_FILENAME)
    (directory / sl.CFG_FILENAME).write_text(json.dumps(cfg))
    with pytest.raises(sl.SAELensFormatError, match=message):
        load_sae(directory)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_valid_saelens_directories_still_load(tmp_path, architecture):
    directory, cfg = _sae_dir(tmp_path / architecture, architecture)
    (directory / sl.CFG_FILENAME).write_text(json.dumps({**cfg, "unknown": {"nested": [1, 2]}, "lp": float("nan")}))
    sae = load_sae(directory)
    assert sae.d_sae == 5 and sl.from_saelens(directory)[1]["unknown"] == {"nested": [1, 2]}


# ---------------------------------------------------------------- the transformer's config.json


@pytest.fixture(scope="module")
def model_template(tmp_path_factory) -> tuple[Path, dict]:
    import jax

    from superpos_jax.lm.transformer import TransformerConfig, init_transformer

    cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_ctx=8, d_vocab=12)
    directory = save_transformer(tmp_path_factory.mktemp("model") / "m", init_transformer(cfg, key=jax.random.key(0)))
    return directory, json.loads((directory / "config.json").read_text())


def _model_case(seed: int, cfg: dict) -> bytes:
    rng = random.Random(seed)
    cfg = dict(cfg)
    kind = rng.choice(["missing", "extra", "wrong_type", "huge", "deep", "not_json", "valid_float"])
    if kind == "missing":
        del cfg[rng.choice(sorted(cfg))]
    elif kind == "extra":
        cfg["extra"] = _junk_value(rng)
    elif kind == "wrong_type":
        cfg[rng.choice(sorted(cfg))] = _junk_value(rng)
    elif kind == "huge":
        cfg[rng.choice(["n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab"])] = rng.choice(
            [10**9, 2**31 - 1, 2**31, 10**30, 0, -1])
    elif kind == "deep":
        return b'{"extra": ' + _deep(rng.choice([5, 1000, 100_000])) + b", " + json.dumps(cfg).encode()[1:]
    elif kind == "not_json":
        return rng.choice([b"", b"garbage", b"\xff\xfe", json.dumps([cfg]).encode()])
    else:
        cfg["init_std"] = rng.choice([1, 0.5, 1e-300])  # an int where a float goes is fine
    return json.dumps(cfg).encode()


@pytest.mark.parametrize("seed", _seeds("model"))
def test_malformed_model_config_gives_documented_errors(tmp_path, model_template, seed):
    template, cfg = model_template
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "weights.safetensors").write_bytes((template / "weights.safetensors").read_bytes())
    (directory / "config.json").write_bytes(_model_case(seed, cfg))
    model = _expect_documented(lambda: load_transformer(directory), (TransformerFormatError, st.SafetensorsError))
    if model is not None:
        assert model.cfg.d_model == 8


# ---------------------------------------------------------------- the 1 GiB file with a 4-byte header


def test_huge_sparse_file_with_a_tiny_header_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 4) + b"{}  ")
        f.truncate(1 << 30)  # 1 GiB, sparse: the data blocks do not exist on disk
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        for read in (st.load_file, st.read_metadata):
            with pytest.raises(st.SafetensorsError, match="1073741812 trailing bytes"):
                read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated to refuse a file by its header"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 64 << 10  # < 64 MiB more peak RSS
    header = {"x": {"dtype": "F32", "shape": [2**28], "data_offsets": [0, 2**30]}}
    path.write_bytes(_raw(header, b""))  # declares 1 GiB of data, holds none
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) + 100)
    tracemalloc.start()
    try:
        with pytest.raises(st.SafetensorsError, match="truncated: tensor 'x' ends at byte 1073741824"):
            st.load_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
