from __future__ import annotations

from functools import lru_cache

from hypothesis import given, settings, strategies as st

from conftest import SMOLLM2_TOKENIZER, TOKENIZERS
from reference_tokens import reference_overlap
from tokensurgeon.vocab.alignment import align_vocabularies, decompose, fewest_pieces, with_decompositions
from tokensurgeon.vocab import build_vocabulary, load_tokenizer


@lru_cache(maxsize=None)
def loaded(path):
    tokenizer = load_tokenizer(path)
    return tokenizer, build_vocabulary(tokenizer)


def test_gpt2_mistral_overlap_figures():
    (_, base), (_, donor) = loaded(TOKENIZERS / "gpt2"), loaded(TOKENIZERS / "mistral-v1")
    alignment = align_vocabularies(base, donor)
    raw_equal = len({t for t in base.tokens if t} & {t for t in donor.tokens if t})
    assert alignment.shared_tokens == reference_overlap(TOKENIZERS / "gpt2", TOKENIZERS / "mistral-v1").shared
    assert raw_equal < 9_000  # raw string equality finds far fewer
    assert alignment.counts()["bytes"] > 10_000  # Ġthe / ▁the spellings meet


def test_smollm2_llama3_overlap_figure():
    (_, base), (_, donor) = loaded(SMOLLM2_TOKENIZER), loaded(TOKENIZERS / "llama3")
    alignment = align_vocabularies(base, donor)
    assert alignment.shared_tokens == reference_overlap(SMOLLM2_TOKENIZER, TOKENIZERS / "llama3").shared
    assert alignment.n_rows == donor.size == 128_257


def test_byte_level_meets_byte_fallback_and_utf8_pairs():
    (_, base), (_, donor) = loaded(TOKENIZERS / "gpt2"), loaded(TOKENIZERS / "llama2")
    alignment = align_vocabularies(base, donor)
    byte_token = donor.tokens.index("<0xD8>")
    assert base.tokens[alignment.source[byte_token]] == "Ø"  # GPT-2's spelling of byte 0xD8
    e_acute = donor.tokens.index("é")
    assert base.tokens[alignment.source[e_acute]] == "Ã©"  # GPT-2's UTF-8 pair for é
    assert alignment.match[e_acute] == "bytes"
    the = donor.tokens.index("▁the")
    assert base.tokens[alignment.source[the]] == "Ġthe"


def test_specials_map_by_role_then_content():
    (_, base), (_, donor) = loaded(TOKENIZERS / "gpt2"), loaded(TOKENIZERS / "llama2")
    alignment = align_vocabularies(base, donor)
    assert alignment.match[donor.roles["bos"]] == "special-role"
    assert alignment.source[donor.roles["bos"]] == base.roles["bos"]
    assert alignment.source[donor.roles["eos"]] == base.roles["eos"]
    assert alignment.match[donor.roles["unk"]] == "new-special"  # GPT-2 has no unk
    (_, smol), (_, llama3) = loaded(SMOLLM2_TOKENIZER), loaded(TOKENIZERS / "llama3")
    reverse = align_vocabularies(smol, llama3)
    endoftext = llama3.tokens.index("<|endoftext|>")
    assert reverse.match[endoftext] == "special-content"
    assert smol.tokens[reverse.source[endoftext]] == "<|endoftext|>"


def test_identity_alignment_copies_everything():
    _, vocab = loaded(SMOLLM2_TOKENIZER)
    alignment = align_vocabularies(vocab, vocab)
    assert alignment.new_ids == []
    assert all(source == i for i, source in enumerate(alignment.source))


def test_padding_rows_beyond_the_tokenizer():
    _, vocab = loaded(TOKENIZERS / "gpt2")
    alignment = align_vocabularies(vocab, vocab, n_rows=50_304)
    assert alignment.n_rows == 50_304
    assert alignment.counts()["padding"] == 50_304 - 50_257


def test_decompositions_spell_the_token():
    (base_tok, base), (_, donor) = loaded(SMOLLM2_TOKENIZER), loaded(TOKENIZERS / "llama3")
    alignment = with_decompositions(align_vocabularies(base, donor), base, donor, base_tok)
    spelled = 0
    for donor_id, pieces in alignment.decompositions.items():
        if pieces:
            target = donor.canonical[donor_id] or donor.specials[donor_id].encode()
            assert b"".join(base.canonical[p] for p in pieces) == target
            spelled += 1
    assert spelled >= len(alignment.decompositions) - 30  # only bytes SmolLM2 never saw (0xC0, 0xF5...) fail


def test_partial_utf8_decomposes_into_byte_pieces():
    base_tok, base = loaded(TOKENIZERS / "llama2")
    pieces = decompose([" \xe0".encode("latin-1")], base, base_tok)[0]  # space + first byte of a 3-byte char
    assert [base.canonical[p] for p in pieces] == [b" ", b"\xe0"]


ALPHABET = [bytes([b]) for b in range(256)] + [b"ab", b"abc", b" the", b"\xe0\xa4"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=12))
def test_fewest_pieces_spells_any_bytes(parts):
    lookup = {piece: i for i, piece in enumerate(ALPHABET)}
    raw = b"".join(parts)
    pieces = fewest_pieces(raw, lookup, max_len=4)
    assert b"".join(ALPHABET[p] for p in pieces) == raw
    assert len(pieces) <= len(parts)  # never worse than the parts it was built from
