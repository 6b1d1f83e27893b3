"""One spelling for raw bytes: text where the bytes are UTF-8, <0xNN> for every other byte."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.methods.base import FALLBACK_PATH, Provenance
from tokensurgeon.pipeline.transplant import build_warnings
from tokensurgeon.vocab.bytes import spell_bytes


@pytest.mark.parametrize("raw, spelled", [
    (b" the", " the"), (b"ni\xc3\xb1o", "niño"), (b"\xf1", "<0xF1>"), (b"\xc0", "<0xC0>"),
    (b"a\xc3", "a<0xC3>"), (b"\xe2\x96", "<0xE2><0x96>"), (b"", ""),
])
def test_spell_bytes(raw, spelled):
    assert spell_bytes(raw) == spelled


def test_the_undecomposable_token_warning_spells_raw_bytes():
    """GPT-2's byte-level vocabulary spells the lone bytes 0xC0 and 0xF1 as 'À' and 'ñ': the warning must not."""
    from tokensurgeon.vocab import build_vocabulary, load_tokenizer

    donor = build_vocabulary(load_tokenizer(TOKENIZERS / "gpt2"))
    lone = [donor.tokens.index("À"), donor.tokens.index("ñ"), donor.tokens.index("Ġthe")]
    pair = SimpleNamespace(number_warning=None, donor_vocab=donor, alignment=SimpleNamespace(new_ids=lone))
    result = SimpleNamespace(provenance=[Provenance(FALLBACK_PATH)] * 3)
    (warning,) = build_warnings(pair, result)
    assert "'<0xC0>', '<0xF1>', ' the'" in warning and "À" not in warning and "ñ" not in warning


def test_inspect_samples_spell_raw_bytes(tmp_path):
    from tokensurgeon.vocab.overlap import sample_new_tokens
    from tokensurgeon.vocab.pair import load_pair

    pair = load_pair(SMOLLM2_TOKENIZER, TOKENIZERS / "llama3")
    samples = sample_new_tokens(pair.alignment, pair.base_vocab, pair.donor_vocab, pair.base_tokenizer, 4000)
    partial = [row for row in samples if not _is_utf8(pair.donor_vocab.canonical[row.donor_id])]
    assert partial and all("<0x" in row.text and "\\x" not in row.text for row in partial)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
