"""A base and a donor tokenizer, loaded and aligned once for every command that needs both."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .alignment import Alignment, align_vocabularies, with_decompositions
from .overlap import number_scheme_warning
from ..checkpoint.tokenizer_files import TokenizerTraits
from ..runtime.memory import trim_heap
from .tokenizer import Vocabulary, build_vocabulary, open_tokenizer


LARGE_TOKENIZER = 100_000  # tokens; Gemma 3's (262k) holds ~300 MB


@dataclass
class TokenizerPair:
    """Vocabularies and alignment, plus the two tokenizers, which load on first use.

    A large tokenizer object (Gemma 3's: ~300 MB) outweighs the vocabularies it was read into, so a
    long job can ``release_tokenizers()`` while it works on embeddings; the next use loads them again.
    The facts writing the output needs (traits, the number-scheme warning) are kept when they go.
    """

    base_vocab: Vocabulary
    donor_vocab: Vocabulary
    alignment: Alignment
    base_path: Path
    donor_path: Path
    trust_remote_code: bool = False
    loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def base_tokenizer(self) -> Any:
        return self._tokenizer("base", self.base_path)

    @property
    def donor_tokenizer(self) -> Any:
        return self._tokenizer("donor", self.donor_path)

    def _tokenizer(self, side: str, path: Path) -> Any:
        if side not in self.loaded:
            self.loaded[side] = open_tokenizer(path, trust_remote_code=self.trust_remote_code)
        return self.loaded[side]

    @cached_property
    def base_traits(self) -> TokenizerTraits:
        return TokenizerTraits.of(self.base_tokenizer)

    @cached_property
    def donor_traits(self) -> TokenizerTraits:
        return TokenizerTraits.of(self.donor_tokenizer)

    @cached_property
    def number_warning(self) -> str | None:
        return number_scheme_warning(self.base_tokenizer, self.donor_tokenizer)

    def release_tokenizers(self, keep: tuple[str, ...] = ()) -> None:
        """Drop the tokenizer objects, but those named in ``keep`` ("base", "donor"), and hand their memory
        back to the system (glibc keeps freed pages)."""
        if len(self.loaded) == 2:  # keep what later steps need while both are at hand
            self.base_traits, self.donor_traits, self.number_warning  # noqa: B018
        released = [side for side in self.loaded if side not in keep]
        large = any(len(self.loaded[side]) > LARGE_TOKENIZER for side in released)
        for side in released:
            del self.loaded[side]
        if large:  # a full collection costs seconds in a large process: only worth it for a large tokenizer
            gc.collect()
            trim_heap()


def load_pair(base: Path, donor: Path, *, n_rows: int | None = None, pad_to_multiple: int = 1,
              trust_remote_code: bool = False) -> TokenizerPair:
    """Load both tokenizers, align donor to base, and decompose the donor's new tokens.

    Args:
        n_rows: rows of the patched embedding (the donor model's padded row count, if any).
        pad_to_multiple: round the row count (at least the donor tokenizer's size) up to a multiple.
        trust_remote_code: let transformers run tokenizer code shipped with either directory.
    """
    base_tokenizer = open_tokenizer(base, trust_remote_code=trust_remote_code)
    donor_tokenizer = open_tokenizer(donor, trust_remote_code=trust_remote_code)
    base_vocab, donor_vocab = build_vocabulary(base_tokenizer), build_vocabulary(donor_tokenizer)
    rows = max(n_rows or 0, donor_vocab.size)
    rows = -(-rows // pad_to_multiple) * pad_to_multiple
    alignment = align_vocabularies(base_vocab, donor_vocab, n_rows=rows)
    alignment = with_decompositions(alignment, base_vocab, donor_vocab, base_tokenizer)
    return TokenizerPair(base_vocab, donor_vocab, alignment, Path(base), Path(donor), trust_remote_code,
                         {"base": base_tokenizer, "donor": donor_tokenizer})
