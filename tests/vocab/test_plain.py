"""Tokenizers read through the tokenizers library alone (vocab/plain.py) against transformers' loader, and
vocabularies packed into one blob (vocab/packed.py)."""

from __future__ import annotations

import json
import shutil
import tracemalloc

import pytest

from conftest import SHARED_TOKENIZERS, SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.checkpoint.tokenizer_files import TokenizerTraits
from tokensurgeon.vocab import build_vocabulary, load_tokenizer
from tokensurgeon.vocab.overlap import number_scheme_warning
from tokensurgeon.vocab.packed import Packed
from tokensurgeon.vocab.plain import PlainTokenizer, read_plain_tokenizer
from tokensurgeon.vocab.tokenizer import open_tokenizer

PROBES = ["Hello world", "a", " 12345 + 678", "naïve café 東京\n\n    return x", "<|endoftext|><s>"]
# transformers' own classes for these rewrite or extend tokenizer.json (Qwen2's replaces the normalizer)
AUTO_ONLY = {"gpt2", "qwen2", "mistral-v1"}


def _same_as_transformers(directory) -> PlainTokenizer:
    plain, auto = read_plain_tokenizer(directory), load_tokenizer(directory)
    assert isinstance(plain, PlainTokenizer)
    assert build_vocabulary(plain) == build_vocabulary(auto)
    assert TokenizerTraits.of(plain) == TokenizerTraits.of(auto)
    assert len(plain) == len(auto)
    for text in PROBES:
        assert plain(text)["input_ids"] == auto(text)["input_ids"]
        ids = plain(text, add_special_tokens=False)["input_ids"]
        assert ids == auto(text, add_special_tokens=False)["input_ids"]
        assert plain.tokenize(text) == auto.tokenize(text)
        assert plain.decode(ids) == auto.decode(ids)
    assert number_scheme_warning(plain, plain) == number_scheme_warning(auto, auto)
    return plain


@pytest.mark.parametrize("name", sorted(set(SHARED_TOKENIZERS) - AUTO_ONLY))
def test_plain_reading_gives_what_transformers_gives(name):
    _same_as_transformers(TOKENIZERS / name)


def test_plain_reading_keeps_the_chat_template_and_roles():
    plain = _same_as_transformers(SMOLLM2_TOKENIZER)
    assert plain.chat_template and "<|im_start|>" in plain.chat_template
    assert plain.bos_token == "<|im_start|>" and plain.eos_token == "<|im_end|>" and plain.mask_token is None


@pytest.mark.realmodel
def test_plain_reading_of_gemma3_gives_what_transformers_gives():
    from tokensurgeon.zoo import ensure_model

    _same_as_transformers(ensure_model("gemma3-270m"))


@pytest.mark.parametrize("name", sorted(AUTO_ONLY))
def test_tokenizers_transformers_changes_go_through_transformers(name):
    assert read_plain_tokenizer(TOKENIZERS / name) is None
    assert not isinstance(open_tokenizer(TOKENIZERS / name), PlainTokenizer)


@pytest.mark.parametrize("change", [
    lambda d: _edit_config(d, add_bos_token=True),  # transformers rebuilds the post-processor
    lambda d: _edit_config(d, additional_special_tokens=["<|reserved_special_token_0|>"]),
    lambda d: _edit_config(d, pad_token="<pad-not-in-file>"),  # transformers adds it as a new token
    lambda d: _edit_config(d, tokenizer_class="Qwen2Tokenizer"),
    lambda d: (d / "special_tokens_map.json").write_text('{"bos_token": "<|begin_of_text|>"}'),
    lambda d: (d / "tokenizer_config.json").write_text("{not json"),
])
def test_plain_reading_declines_what_transformers_would_change(tmp_path, change):
    directory = tmp_path / "llama3"
    shutil.copytree(TOKENIZERS / "llama3", directory)
    assert isinstance(read_plain_tokenizer(directory), PlainTokenizer)  # the unchanged copy reads plainly
    change(directory)
    assert read_plain_tokenizer(directory) is None


def test_plain_added_bos_switch_matches_transformers(tmp_path):
    """Where the plain reader declines, open_tokenizer gives transformers' tokenizer and its BOS behaviour."""
    directory = tmp_path / "llama3"
    shutil.copytree(TOKENIZERS / "llama3", directory)
    _edit_config(directory, add_bos_token=False)
    opened = open_tokenizer(directory)
    assert not isinstance(opened, PlainTokenizer)
    assert TokenizerTraits.of(opened) == TokenizerTraits.of(load_tokenizer(directory))


def _edit_config(directory, **changes) -> None:
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_packed_behaves_as_the_tuple_it_replaces():
    items = ["a", None, "▁the", "", "東京", None]
    packed = Packed(items, text=True)
    assert list(packed) == items and len(packed) == 6 and packed == tuple(items)
    assert packed[-2] == "東京" and packed[1:4] == (None, "▁the", "")
    assert packed.index("▁the") == 2 and "東京" in packed and "x" not in packed
    raw = Packed([b"\xd8", None, b" the"])
    assert raw[0] == b"\xd8" and raw[1] is None and raw == Packed([b"\xd8", None, b" the"])
    with pytest.raises(IndexError):
        packed[6]
    assert packed.present() == [0, 2, 3, 4] == [i for i, item in enumerate(items) if item is not None]


def test_vocabulary_keeps_no_object_per_token():
    """Per-token objects (a tuple of 128k strings and one of bytes: ~18 MB) cannot go back to the system
    while the tokenizer's transient objects share their allocator arenas."""
    tokenizer = open_tokenizer(TOKENIZERS / "llama3")
    tracemalloc.start()
    try:
        vocab = build_vocabulary(tokenizer)
        kept, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert vocab.size == 128257 and vocab.tokens[128000] == "<|begin_of_text|>"
    assert kept < 6 * 2**20, f"{kept / 2**20:.1f} MiB kept for 128k tokens"
