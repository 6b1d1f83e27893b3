"""A base and a donor tokenizer, loaded and aligned once for every command that needs both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .alignment import Alignment, align_vocabularies, with_decompositions
from .vocab import Vocabulary, build_vocabulary, load_tokenizer


@dataclass(frozen=True)
class TokenizerPair:
    base_tokenizer: Any
    donor_tokenizer: Any
    base_vocab: Vocabulary
    donor_vocab: Vocabulary
    alignment: Alignment


def load_pair(base: Path, donor: Path, *, n_rows: int | None = None, pad_to_multiple: int = 1,
              trust_remote_code: bool = False) -> TokenizerPair:
    """Load both tokenizers, align donor to base, and decompose the donor's new tokens.

    Args:
        n_rows: rows of the patched embedding (the donor model's padded row count, if any).
        pad_to_multiple: round the row count (at least the donor tokenizer's size) up to a multiple.
        trust_remote_code: let transformers run tokenizer code shipped with either directory.
    """
    base_tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    donor_tokenizer = load_tokenizer(donor, trust_remote_code=trust_remote_code)
    base_vocab, donor_vocab = build_vocabulary(base_tokenizer), build_vocabulary(donor_tokenizer)
    rows = max(n_rows or 0, donor_vocab.size)
    rows = -(-rows // pad_to_multiple) * pad_to_multiple
    alignment = align_vocabularies(base_vocab, donor_vocab, n_rows=rows)
    alignment = with_decompositions(alignment, base_vocab, donor_vocab, base_tokenizer)
    return TokenizerPair(base_tokenizer, donor_tokenizer, base_vocab, donor_vocab, alignment)
