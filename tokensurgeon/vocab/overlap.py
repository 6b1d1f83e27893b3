"""What `inspect` reports: how two tokenizers' vocabularies overlap and how they split text.

Besides counts, it shows the two things that predict a transplant's cost before any
embedding is computed: how much of a text the donor spells with new tokens, and whether
the two tokenizers split numbers the same way (the OMP paper found a digit-grouping
mismatch is what breaks arithmetic after a transplant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .alignment import Alignment, COMPUTED, decompose
from .bytes import spell_bytes
from .tokenizer import Vocabulary

DIGIT_PROBES = ("1234567", " 2024")


@dataclass(frozen=True)
class TextStats:
    """How the two tokenizers split one text."""

    label: str
    n_bytes: int
    base_tokens: int
    donor_tokens: int
    new_token_share: float  # share of the donor's tokens in this text that are new
    boundary_agreement: float  # share of donor token boundaries that are also base boundaries

    @property
    def base_bytes_per_token(self) -> float:
        return self.n_bytes / max(self.base_tokens, 1)

    @property
    def donor_bytes_per_token(self) -> float:
        return self.n_bytes / max(self.donor_tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"base_bytes_per_token": self.base_bytes_per_token,
                               "donor_bytes_per_token": self.donor_bytes_per_token}


@dataclass(frozen=True)
class SpecialToken:
    """A donor special token and the base token it takes its row from (None: computed as new)."""

    donor_id: int
    content: str
    role: str | None
    match: str
    base_id: int | None
    base_content: str | None


@dataclass(frozen=True)
class NewTokenSample:
    """A new donor token (text: its bytes spelled) and the base pieces it decomposes into."""

    donor_id: int
    token: str
    text: str
    base_pieces: list[str]


@dataclass(frozen=True)
class OverlapReport:
    base: dict[str, Any]
    donor: dict[str, Any]
    counts: dict[str, int]
    shared_tokens: int
    new_tokens: int
    base_only: int
    special_tokens: list[SpecialToken]
    samples: list[NewTokenSample]
    digits: dict[str, list[list[str]]]
    warnings: list[str] = field(default_factory=list)
    texts: list[TextStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["texts"] = [stats.to_dict() for stats in self.texts]
        return data


def describe(vocab: Vocabulary, path: str) -> dict[str, Any]:
    return {"path": path, "kind": vocab.kind, "vocab_size": vocab.size, "specials": len(vocab.specials),
            "roles": {role: vocab.tokens[i] for role, i in vocab.roles.items()}}


def special_table(alignment: Alignment, base: Vocabulary, donor: Vocabulary) -> list[SpecialToken]:
    role_of = {i: role for role, i in donor.roles.items()}
    rows = []
    for donor_id, content in sorted(donor.specials.items()):
        base_id = alignment.source[donor_id]
        rows.append(SpecialToken(donor_id, content, role_of.get(donor_id), alignment.match[donor_id],
                                 base_id if base_id >= 0 else None, base.tokens[base_id] if base_id >= 0 else None))
    return rows


def sample_new_tokens(alignment: Alignment, base: Vocabulary, donor: Vocabulary, base_tokenizer: Any,
                      n: int) -> list[NewTokenSample]:
    """An evenly spaced, deterministic sample of new ordinary tokens with their base pieces."""
    new = [i for i in alignment.new_ids if alignment.match[i] == "new"]
    picked = [new[j * len(new) // n] for j in range(n)] if len(new) > n else new
    pieces = decompose([donor.canonical[i] for i in picked], base, base_tokenizer)
    return [NewTokenSample(i, donor.tokens[i], spell_bytes(donor.canonical[i]),
                           [spell_bytes(base.canonical[p]) for p in group]) for i, group in zip(picked, pieces)]




def _digit_lengths(tokenizer: Any, probe: str) -> list[int]:
    ids = tokenizer(probe, add_special_tokens=False)["input_ids"]
    lengths = [sum(ch.isdigit() for ch in tokenizer.decode([i])) for i in ids]
    return [n for n in lengths if n]


def number_scheme_warning(base_tokenizer: Any, donor_tokenizer: Any) -> str | None:
    """Warn when the tokenizers group digits differently (e.g. single digits vs groups of three)."""
    for probe in DIGIT_PROBES:
        base_lengths, donor_lengths = _digit_lengths(base_tokenizer, probe), _digit_lengths(donor_tokenizer, probe)
        if base_lengths != donor_lengths:
            return (f"number schemes differ: {probe.strip()!r} splits into digit groups {base_lengths} (base) vs "
                    f"{donor_lengths} (donor); arithmetic may suffer after the transplant")
    return None


def _boundaries(encoding: Any) -> set[int]:
    return {end for _start, end in encoding.offsets}


def text_stats(label: str, text: str, alignment: Alignment, base_tokenizer: Any, donor_tokenizer: Any) -> TextStats:
    base_enc = base_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    donor_enc = donor_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    new = sum(1 for i in donor_enc.ids if i < alignment.n_rows and alignment.match[i] in COMPUTED)
    donor_bounds = _boundaries(donor_enc)
    agreement = len(donor_bounds & _boundaries(base_enc)) / max(len(donor_bounds), 1)
    return TextStats(label, len(text.encode("utf-8")), len(base_enc.ids), len(donor_enc.ids),
                     new / max(len(donor_enc.ids), 1), agreement)


def compare_tokenizers(alignment: Alignment, base: Vocabulary, donor: Vocabulary, base_tokenizer: Any,
                       donor_tokenizer: Any, *, paths: tuple[str, str], texts: dict[str, str] | None = None,
                       n_samples: int = 12) -> OverlapReport:
    """Summarise an alignment for `inspect` (and for the transplant report)."""
    donor_bytes = {raw for raw in donor.canonical if raw is not None}
    base_only = sum(1 for raw in set(base.bytes_to_id()) if raw not in donor_bytes)
    warning = number_scheme_warning(base_tokenizer, donor_tokenizer)
    return OverlapReport(
        base=describe(base, paths[0]),
        donor=describe(donor, paths[1]),
        counts=alignment.counts(),
        shared_tokens=alignment.shared_tokens,
        new_tokens=alignment.counts()["new"],
        base_only=base_only,
        special_tokens=special_table(alignment, base, donor),
        samples=sample_new_tokens(alignment, base, donor, base_tokenizer, n_samples),
        digits={"base": [base_tokenizer.tokenize(p) for p in DIGIT_PROBES],
                "donor": [donor_tokenizer.tokenize(p) for p in DIGIT_PROBES]},
        warnings=[warning] if warning else [],
        texts=[text_stats(label, text, alignment, base_tokenizer, donor_tokenizer)
               for label, text in (texts or {}).items()],
    )
