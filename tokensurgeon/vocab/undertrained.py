"""Base rows the base model barely trained, and copying them or not.

A donor token that shares its bytes with a base token copies the base row. That is right for a row the
base trained, wrong for one it hardly saw: SentencePiece byte-fallback rows (``<0xNN>``) of a base
such as Gemma 3 stand for bytes its large vocabulary almost never falls back to, yet a byte-level
donor (SmolLM2) reads every non-Latin script through exactly those bytes. Rows of very low norm are the
magikarp signal of tokens that (almost) never occurred in training (Land & Bartolo 2024). heal frees
such copies under ``--train rows``; ``transplant --recompute-undertrained`` has the method compute them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import UNDERTRAINED_NORM
from .alignment import Alignment, decompose
from .tokenizer import Vocabulary

COPIED_BY_BYTES = ("exact", "bytes")  # ordinary shared tokens; special tokens keep their row


def undertrained_rows(embed: torch.Tensor, byte_fallback: Iterable[int], *,
                      low_norm: float = UNDERTRAINED_NORM) -> set[int]:
    """Rows of embed (n, d) the base barely trained: the byte-fallback ids and rows under low_norm x median norm."""
    norms = torch.cat([block.float().norm(dim=1) for block in embed.split(65536)])  # no float32 copy of it all
    return set(byte_fallback) | set((norms < low_norm * norms.median()).nonzero().flatten().tolist())


def recompute_undertrained(alignment: Alignment, base: Vocabulary, donor: Vocabulary, base_tokenizer,
                           undertrained: set[int]) -> Alignment:
    """The alignment with shared tokens whose base row is in undertrained turned ``new``: the method computes them.

    Their decompositions are the base tokenizer's, left empty where a piece is itself barely trained (a
    byte token has no better spelling than the row it should not copy).
    """
    ids = [i for i, (kind, source) in enumerate(zip(alignment.match, alignment.source))
           if kind in COPIED_BY_BYTES and source in undertrained]
    if not ids:
        return alignment
    source, match = list(alignment.source), list(alignment.match)
    for i in ids:
        source[i], match[i] = -1, "new"
    pieces = decompose([donor.canonical[i] for i in ids], base, base_tokenizer)
    decompositions = dict(alignment.decompositions)
    decompositions.update({i: () if set(p) & undertrained else p for i, p in zip(ids, pieces)})
    return Alignment(tuple(source), tuple(match), decompositions)
