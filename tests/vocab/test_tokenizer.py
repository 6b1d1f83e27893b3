from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import CORPORA, SHARED_TOKENIZERS, SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.errors import TokenizerError
from tokensurgeon.vocab import build_vocabulary, canonical_bytes, gpt2_byte_decoder, load_tokenizer

TEXTS = [CORPORA / "udhr" / name for name in ("spa.txt", "ukr.txt", "jpn.txt", "tha.txt", "kor.txt")]


def test_gpt2_byte_map_is_a_bijection():
    decoder = gpt2_byte_decoder()
    assert len(decoder) == 256 and sorted(decoder.values()) == list(range(256))
    assert decoder["Ġ"] == 0x20 and decoder["Ċ"] == 0x0A and decoder["Ø"] == 0xD8


@pytest.mark.parametrize(("token", "scheme", "expected"), [
    ("Ġthe", "byte-level", b" the"),
    ("Ã©", "byte-level", "é".encode()),
    ("▁the", "metaspace", b" the"),
    ("##ing", "wordpiece", b"ing"),
    ("play", "wordpiece", b" play"),
    ("hello world", "plain", b"hello world"),
])
def test_canonical_bytes(token, scheme, expected):
    assert canonical_bytes(token, scheme) == expected


@given(st.text(alphabet=st.sampled_from(sorted(gpt2_byte_decoder()) + [" ", "\xad", "東", "a"]), max_size=8))
def test_byte_level_bytes_are_the_character_map_s(token):
    """GPT-2's map, character by character; a token with any other character is its own UTF-8."""
    decoder = gpt2_byte_decoder()
    expected = bytes(decoder[c] for c in token) if all(c in decoder for c in token) else token.encode("utf-8")
    assert canonical_bytes(token, "byte-level") == expected


def test_byte_fallback_tokens_are_raw_bytes():
    assert canonical_bytes("<0xD8>", "metaspace", byte_fallback=True) == b"\xd8"
    assert canonical_bytes("<0xD8>", "metaspace", byte_fallback=False) == b"<0xD8>"


@pytest.mark.parametrize("name", SHARED_TOKENIZERS)
def test_canonical_bytes_spell_real_text(name):
    """For every family, the canonical bytes of a text's tokens concatenate to the text itself."""
    tokenizer = load_tokenizer(TOKENIZERS / name)
    vocab = build_vocabulary(tokenizer)
    for path in TEXTS:
        text = path.read_text(encoding="utf-8")[:3000]
        ids = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
        spelled = b"".join(vocab.canonical[i] for i in ids)
        # SentencePiece tokenizers prepend a dummy space to the first word.
        assert spelled in (text.encode(), b" " + text.encode()), (name, path.name)


def test_specials_are_kept_apart_with_roles():
    vocab = build_vocabulary(load_tokenizer(TOKENIZERS / "llama3"))
    bos, eos = vocab.roles["bos"], vocab.roles["eos"]
    assert vocab.tokens[bos] == "<|begin_of_text|>" and vocab.tokens[eos] == "<|end_of_text|>"
    assert vocab.canonical[bos] is None and bos in vocab.specials
    assert len(vocab.specials) == 257
    assert vocab.kind == "byte-level BPE"


def test_sentencepiece_kind_and_byte_fallback_ids():
    vocab = build_vocabulary(load_tokenizer(TOKENIZERS / "mistral-v1"))
    assert vocab.kind == "SentencePiece BPE (byte fallback)"
    assert len(vocab.byte_fallback) == 256
    lookup = vocab.bytes_to_id()
    # "A" exists both as a piece and as <0x41>: text uses the piece, so the lookup prefers it.
    assert vocab.tokens[lookup[b"A"]] == "A"
    assert vocab.tokens[lookup[b"\xd8"]] == "<0xD8>"


def test_wordpiece_vocabulary(tmp_path):
    words = {"[UNK]": 0, "[CLS]": 1, "play": 2, "##ing": 3, "##ed": 4, "the": 5}
    backend = Tokenizer(models.WordPiece(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]")
    tokenizer.save_pretrained(tmp_path)
    vocab = build_vocabulary(load_tokenizer(tmp_path))
    assert vocab.scheme == "wordpiece"
    assert vocab.canonical[3] == b"ing" and vocab.canonical[2] == b" play"
    assert vocab.canonical[0] is None and vocab.roles["unk"] == 0


def test_smollm2_fixture_is_byte_level():
    vocab = build_vocabulary(load_tokenizer(SMOLLM2_TOKENIZER))
    assert vocab.size == 49152 and vocab.scheme == "byte-level"
    assert vocab.roles == {"bos": 1, "eos": 2, "unk": 0, "pad": 2}


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not a directory"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(Path(tmp_path))
