"""Align a donor vocabulary to a base vocabulary: which donor rows copy a base row, which are new.

Ordinary tokens meet by canonical bytes (bytes.py); special tokens meet by role (bos, eos,
unk, pad), then by exact content. Every donor row gets exactly one match kind:

- ``exact``: same token string and same bytes as a base token: the base row is copied.
- ``bytes``: same bytes under a different spelling (``Ġthe`` / ``▁the``, ``Ø`` / ``<0xD8>``): copied.
- ``special-role`` / ``special-content``: a donor special token mapped to a base special: copied.
- ``new`` / ``new-special``: no base counterpart: an initialisation method computes the row.
- ``padding``: a row beyond the donor tokenizer (vocabularies padded to a multiple): filled with the mean.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .tokenizer import ROLES, Vocabulary

COPIED = ("exact", "bytes", "special-role", "special-content")
COMPUTED = ("new", "new-special")


@dataclass(frozen=True)
class Alignment:
    """Donor row -> base row mapping.

    Attributes:
        source: per donor row, the base id whose row it copies, or -1.
        match: per donor row, its match kind (see module docstring).
        decompositions: per computed donor id, the base ids whose bytes spell it (empty: none).
    """

    source: tuple[int, ...]
    match: tuple[str, ...]
    decompositions: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return len(self.source)

    @cached_property  # per-row loops index it: computing it per access would be quadratic
    def new_ids(self) -> list[int]:
        """Donor ids whose rows a method must compute, in id order."""
        return [i for i, kind in enumerate(self.match) if kind in COMPUTED]

    def counts(self) -> dict[str, int]:
        counts = Counter(self.match)
        return {kind: counts.get(kind, 0) for kind in (*COPIED, *COMPUTED, "padding")}

    @property
    def shared_tokens(self) -> int:
        """Ordinary (non-special) donor tokens that copy a base row."""
        counts = self.counts()
        return counts["exact"] + counts["bytes"]


def match_specials(base: Vocabulary, donor: Vocabulary) -> dict[int, tuple[int, str]]:
    """Map donor special ids to base special ids: by role first, then by identical content."""
    mapping: dict[int, tuple[int, str]] = {}
    for role in ROLES:
        donor_id, base_id = donor.roles.get(role), base.roles.get(role)
        if donor_id is not None and base_id is not None and donor_id not in mapping:
            mapping[donor_id] = (base_id, "special-role")
    base_by_content = {content: base_id for base_id, content in sorted(base.specials.items(), reverse=True)}
    for donor_id, content in sorted(donor.specials.items()):
        if donor_id not in mapping and content in base_by_content:
            mapping[donor_id] = (base_by_content[content], "special-content")
    return mapping


def align_vocabularies(base: Vocabulary, donor: Vocabulary, *, n_rows: int | None = None) -> Alignment:
    """Align donor to base by canonical bytes and special roles.

    Args:
        base: the model's current vocabulary.
        donor: the vocabulary to transplant.
        n_rows: rows of the patched embedding matrix (>= donor.size); the donor model's
            padded row count when one is given. Rows past the tokenizer are ``padding``.
    """
    n_rows = max(n_rows or 0, donor.size)
    base_lookup = base.bytes_to_id()
    specials = match_specials(base, donor)
    source = [-1] * n_rows
    match = ["padding"] * n_rows
    for donor_id in range(donor.size):
        raw = donor.canonical[donor_id]
        if donor_id in specials:
            source[donor_id], match[donor_id] = specials[donor_id]
        elif donor_id in donor.specials:
            match[donor_id] = "new-special"
        elif raw is None:
            continue  # an id the donor tokenizer does not define
        elif raw in base_lookup:
            base_id = base_lookup[raw]
            source[donor_id] = base_id
            match[donor_id] = "exact" if base.tokens[base_id] == donor.tokens[donor_id] else "bytes"
        else:
            match[donor_id] = "new"
    return Alignment(source=tuple(source), match=tuple(match))


def with_decompositions(alignment: Alignment, base: Vocabulary, donor: Vocabulary, base_tokenizer: Any) -> Alignment:
    """Attach each computed token's decomposition into base tokens."""
    ids = alignment.new_ids
    targets = [donor.canonical[i] if donor.canonical[i] is not None else donor.specials[i].encode() for i in ids]
    pieces = decompose(targets, base, base_tokenizer)
    return Alignment(alignment.source, alignment.match, dict(zip(ids, pieces)))


def decompose(targets: list[bytes], base: Vocabulary, base_tokenizer: Any) -> list[tuple[int, ...]]:
    """Split byte strings into base tokens: the base tokenizer's own split where it spells the
    bytes exactly, else the fewest base tokens that do (partial UTF-8, dummy-prefix schemes).
    An empty tuple means the base vocabulary cannot spell the bytes."""
    texts = [raw.decode("utf-8", errors="replace") for raw in targets]
    encoded = base_tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    lookup = base.bytes_to_id()
    max_len = max((len(raw) for raw in lookup), default=1)
    result = []
    for raw, encoding in zip(targets, encoded):
        ids = tuple(encoding.ids)
        if b"".join(base.canonical[i] or b"\0" for i in ids) != raw:
            ids = fewest_pieces(raw, lookup, max_len)
        result.append(ids)
    return result


def fewest_pieces(raw: bytes, lookup: dict[bytes, int], max_len: int) -> tuple[int, ...]:
    """Dynamic programme: the segmentation of ``raw`` into the fewest vocabulary entries."""
    n = len(raw)
    best: list[tuple[int, ...] | None] = [None] * (n + 1)
    best[0] = ()
    for end in range(1, n + 1):
        for start in range(max(0, end - max_len), end):
            prefix = best[start]
            piece = lookup.get(raw[start:end])
            if prefix is not None and piece is not None:
                candidate = prefix + (piece,)
                if best[end] is None or len(candidate) < len(best[end]):
                    best[end] = candidate
    return best[n] or ()
