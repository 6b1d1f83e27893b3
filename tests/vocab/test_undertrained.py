from __future__ import annotations

import torch

from conftest import SMOLLM2_TOKENIZER, TOKENIZERS
from tokensurgeon.vocab import build_vocabulary, load_tokenizer
from tokensurgeon.vocab.alignment import align_vocabularies, with_decompositions
from tokensurgeon.vocab.undertrained import recompute_undertrained, undertrained_rows


def test_detection_on_a_hand_built_matrix():
    generator = torch.Generator().manual_seed(0)
    embed = torch.nn.functional.normalize(torch.randn(20, 8, generator=generator), dim=1)  # every norm 1
    embed[3] *= 0.1
    embed[7] *= 0.3
    embed[11] *= 0.7  # low-ish but above half the median: trained
    assert undertrained_rows(embed, frozenset({15})) == {3, 7, 15}
    assert undertrained_rows(embed.to(torch.bfloat16), ()) == {3, 7}


def test_recompute_turns_only_copies_of_undertrained_rows_new():
    """Llama-2 (SentencePiece, <0xNN> byte fallback) base, SmolLM2 (byte-level) donor: the donor's lone
    bytes copy Llama-2's <0xNN> rows; with those rows undertrained, exactly they become new."""
    base_tokenizer, donor_tokenizer = load_tokenizer(TOKENIZERS / "llama2"), load_tokenizer(SMOLLM2_TOKENIZER)
    base, donor = build_vocabulary(base_tokenizer), build_vocabulary(donor_tokenizer)
    alignment = with_decompositions(align_vocabularies(base, donor), base, donor, base_tokenizer)
    undertrained = set(base.byte_fallback) | {base.bytes_to_id()[b" the"]}
    after = recompute_undertrained(alignment, base, donor, base_tokenizer, undertrained)
    expected = {i for i, (kind, source) in enumerate(zip(alignment.match, alignment.source))
                if kind in ("exact", "bytes") and source in undertrained}
    changed = {i for i in range(alignment.n_rows) if after.match[i] != alignment.match[i]}
    assert changed == expected and len(expected) > 64  # the high bytes at least, and " the"
    assert donor.tokens.index("Ġthe") in changed
    assert all(after.match[i] == "new" and after.source[i] == -1 for i in changed)
    assert set(after.new_ids) == set(alignment.new_ids) | changed
    lone_byte = next(i for i in changed if len(donor.canonical[i]) == 1)
    assert after.decompositions[lone_byte] == ()  # only the undertrained <0xNN> row spells it
    assert all(after.decompositions[i] == alignment.decompositions[i] for i in alignment.new_ids)
    assert recompute_undertrained(alignment, base, donor, base_tokenizer, set()) is alignment
