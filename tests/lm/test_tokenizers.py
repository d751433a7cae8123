"""The byte / BPE tokenizers (moved from test_corpus.py), display text, and `HFTokenizer` on
tokenizer.json files built in the test (a BPE trained with `tokenizers` on standard-library
source, a hand-built GPT-2-style byte-level BPE, a SentencePiece-style byte-fallback BPE)."""

import inspect
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from superpos_jax.lm.corpus import SEPARATOR, load_corpus
from superpos_jax.lm.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer, display_text, gpt2_byte_alphabet, train_bpe




def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    for text in ["", "plain ascii", "héllo wörld", "日本語テキスト", "emoji 🙂 mix\n\ttabs", "\x00nul"]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.size == len(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.decode(tok.encode("日")[:2]) == "\ufffd"
    with pytest.raises(ValueError):
        tok.decode([256])


def test_bpe_merges_closed_form_and_overlaps():
    tok = train_bpe(b"aaabdaaabac", 1)
    assert tok.merges == ((97, 97),)  # "aa": 4 overlapping occurrences, the most frequent pair
    np.testing.assert_array_equal(tok.encode("aaab"), [256, 97, 98])
    np.testing.assert_array_equal(tok.encode("aaaa"), [256, 256])
    tok3 = train_bpe(b"ab\x00ab\x00ab\x00", 5)
    assert all(SEPARATOR not in pair for pair in tok3.merges)
    assert tok3.merges[0] == (97, 98)


def test_bpe_round_trip_and_json(tmp_path, rng):
    corpus = load_corpus(max_bytes=120_000)
    tok = train_bpe(corpus.train, 200)
    assert tok.vocab_size == 456
    ids = tok.encode_bytes(corpus.val)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size
    assert ids.size < 0.6 * corpus.val.size  # merges learned on train compress held-out code
    assert tok.decode_bytes(ids) == corpus.val.tobytes()
    random_bytes = rng.integers(0, 256, size=2000).astype(np.uint8)
    assert tok.decode_bytes(tok.encode_bytes(random_bytes)) == random_bytes.tobytes()
    text = "naïve café 日本 — def f(self):\n    return 1"
    assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "merges.json")
    loaded = BPETokenizer.load(tmp_path / "merges.json")
    assert loaded.merges == tok.merges
    np.testing.assert_array_equal(loaded.encode_bytes(corpus.val), ids)
    with pytest.raises(ValueError, match="does not exist yet"):
        BPETokenizer([(300, 1)])


def test_display_text_escapes():
    assert display_text(b"def f():") == "def f():"
    assert display_text(b" ") == " " and display_text(b"\n\t\r") == "\\n\\t\\r"
    assert display_text(b"\x00\x1b\x7f") == "\\x00\\x1b\\x7f"
    assert display_text("é日🙂".encode()) == "é日🙂"
    assert display_text("é".encode()[:1]) == "\\xc3"  # a character cut between tokens
    assert display_text(b"\xff\xfe") == "\\xff\\xfe"
    assert display_text("\u200b\xa0\U000e0001".encode()) == "\\u200b\\xa0\\U000e0001"
    assert display_text("<script>".encode()) == "<script>"  # escaping for HTML is the page's job


def test_byte_and_bpe_token_str():
    byte = ByteTokenizer()
    assert [byte.token_str(t) for t in b"A \n\t"] == ["A", " ", "\\n", "\\t"]
    assert byte.token_str(0) == "\\x00" and byte.token_str(127) == "\\x7f"
    assert all(byte.token_str(t) == f"\\x{t:02x}" for t in range(128, 256))
    assert byte.token_bytes(65) == b"A"
    with pytest.raises(ValueError):
        byte.token_str(256)
    e_acute = tuple("é".encode())
    bpe = BPETokenizer([(ord("d"), ord("e")), (256, ord("f")), (ord(" "), ord("s")), e_acute, (ord("a"), e_acute[0])])
    assert [bpe.token_str(t) for t in range(256, 261)] == ["de", "def", " s", "é", "a\\xc3"]
    assert bpe.token_str(65) == "A" and bpe.token_str(200) == "\\xc8"  # bytes as in ByteTokenizer
    assert [bpe.token_str(t) for t in bpe.encode("def sé")] == ["def", " s", "é"]
    assert all("\\x1" not in bpe.token_str(t) for t in range(256, 261))  # never `\x100`
    with pytest.raises(ValueError, match="outside"):
        bpe.token_str(261)


def _stdlib_texts():
    import json.decoder
    import json.encoder
    import string

    return [inspect.getsource(m) for m in (json.encoder, json.decoder, textwrap, string)]


def _trained_byte_level(vocab_size=600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(_stdlib_texts(), trainer)
    return tok


def test_hf_trained_byte_level_bpe_from_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    _trained_byte_level().save(str(path))
    assert json.loads(path.read_text())["model"]["type"] == "BPE"
    tok = HFTokenizer.from_file(path)
    assert tok.vocab_size == 600
    for text in ["def dumps(obj, *, skipkeys=False):\n    return _default_encoder.encode(obj)",
                 "naïve café 日本 — 🙂\ttab", ""]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and (ids.size == 0 or ids.max() < tok.vocab_size)
        assert tok.decode(ids) == text
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    (ret,) = tok.encode(" return")  # a learned merge: one token, shown as its text
    assert ret >= 256 and tok.token_str(ret) == " return"
    assert tok.token_str(tok.encode("\n")[0]) == "\\n"
    shown = [tok.token_str(i) for i in range(tok.vocab_size)]
    assert not any("Ġ" in s or "Ċ" in s for s in shown)
    for i in range(tok.vocab_size):  # agrees with the library's own ByteLevel decoder
        try:
            text = tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            assert "\\x" in shown[i]
            continue
        assert tok.decode([i]) == text and shown[i] == display_text(text.encode())
    assert tok.token_str(tok.tokenizer.token_to_id("<|endoftext|>")) == "<|endoftext|>"
    assert tok.eos_id == tok.tokenizer.token_to_id("<|endoftext|>")
    with pytest.raises(ValueError, match="must lie in"):
        tok.token_str(600)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": tok.tokenizer.id_to_token(300)}}))
    assert HFTokenizer.from_file(path).eos_id == 300  # transformers' tokenizer_config.json names it
    tok.save(tmp_path / "again.json")
    np.testing.assert_array_equal(HFTokenizer.from_file(tmp_path / "again.json").encode("x = 1"), tok.encode("x = 1"))


def test_hf_handbuilt_gpt2_style_byte_level():
    alphabet = gpt2_byte_alphabet()
    assert len(alphabet) == 256 and sorted(alphabet.values()) == list(range(256))
    char = {b: c for c, b in alphabet.items()}
    assert (char[32], char[10], char[ord("a")]) == ("Ġ", "Ċ", "a")
    vocab = {char[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": [[a, b] for a, b in merges]},
    }
    tok = HFTokenizer.from_str(json.dumps(spec))
    assert tok.vocab_size == 262
    ids = tok.encode("the cat\n the")
    np.testing.assert_array_equal(ids, [116, 257, 261, 10, 258])
    assert [tok.token_str(i) for i in ids] == ["t", "he", " cat", "\\n", " the"]
    assert tok.decode(ids) == "the cat\n the"
    byte = ByteTokenizer()
    assert [tok.token_str(b) for b in range(256)] == [byte.token_str(b) for b in range(256)]


def test_hf_sentencepiece_style_byte_fallback():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, **{f"<0x{b:02X}>": 2 + b for b in range(256)}}
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("▁", "c"), ("a", "t"), ("▁c", "at")]
    for w in ["▁", "t", "h", "e", "c", "a"]:
        vocab.setdefault(w, len(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    replace = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    replace.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    replace.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])  # Llama 2's tokenizer.json
    metaspace = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>"))
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    metaspace.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    for backend in (replace, metaspace):
        tok = HFTokenizer(backend)
        ids = tok.encode("the cat\né")
        assert [tok.token_str(i) for i in ids] == [" the", " cat", "\\n", "\\xc3", "\\xa9"]
        assert tok.decode(ids) == "the cat\né"
        assert tok.token_str(vocab["<0x41>"]) == "A" and tok.token_str(vocab["<s>"]) == "<s>"
        assert tok.eos_id is None  # no special tokens were added


def test_hf_special_and_added_tokens():
    backend = _trained_byte_level(400)
    backend.add_special_tokens(["<|pad|>"])
    backend.add_tokens(["superposition"])
    tok = HFTokenizer(backend)
    assert tok.vocab_size == 402 and tok.eos_id == backend.token_to_id("<|endoftext|>")
    assert HFTokenizer(backend, eos_token="<|pad|>").eos_id == backend.token_to_id("<|pad|>")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(backend, eos_token="<nope>")
    ids = tok.encode("a superposition<|pad|>")
    assert [tok.token_str(i) for i in ids][-2:] == ["superposition", "<|pad|>"]
    assert tok.decode(ids) == "a superposition<|pad|>"


def test_tokenizers_package_is_imported_lazily(monkeypatch):
    probe = ("import sys; import superpos_jax.lm.tokenizers, superpos_jax.lm.browser; "
             "print('tokenizers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install tokenizers"):
        HFTokenizer.from_file("tokenizer.json")
