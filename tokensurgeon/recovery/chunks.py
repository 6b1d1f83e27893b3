"""Chunk alignment: cut one text into the shortest pieces that both tokenizations agree on, in bytes.

Two tokenizers cut the same text differently, so their next-token probabilities cannot be compared
token by token. They can be compared on *chunks*: runs of tokens whose byte boundaries coincide on
both sides. A chunk's likelihood is the product of its tokens' probabilities, which both models
assign to the same bytes (ALM, arXiv 2503.20083).

Each token's bytes are read from the tokenizer's decoder type through the project's canonical bytes
(byte-level ``Ġ``, SentencePiece ``▁`` and ``<0xNN>``, WordPiece ``##``), never from its spelling, so a
byte-level token that ends inside a UTF-8 character keeps its exact length. Where a tokenizer's
normaliser changes the text (lower-casing, whitespace folding, a WordPiece ``[UNK]``) the canonical
bytes cannot be laid on the text; the token ends are then read from its character offsets instead.
Specials inside the text have no canonical bytes and take that path too. BOS is context only: it
belongs to no chunk, on either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from tokensurgeon.vocab import Vocabulary


@dataclass(frozen=True)
class TokenSpans:
    """One tokenization of a text: ids and the byte offset (into the text's UTF-8) where each token ends.

    Attributes:
        exact: the tokens' canonical bytes, concatenated, are the text's bytes (else ends come from offsets).
    """

    ids: list[int]
    ends: list[int]
    exact: bool


@dataclass(frozen=True)
class ChunkAlignment:
    """Chunk index of every token on each side; chunk c covers text bytes [boundaries[c-1], boundaries[c])."""

    chunk_a: list[int]
    chunk_b: list[int]
    boundaries: list[int]

    @property
    def n_chunks(self) -> int:
        return len(self.boundaries)


def token_spans(tokenizer: Any, vocabulary: Vocabulary, text: str) -> TokenSpans:
    """Tokenize text (no specials added) and place every token's end on the text's bytes."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(encoding["input_ids"])
    data = text.encode("utf-8")
    pieces = [vocabulary.canonical[i] if i < vocabulary.size else None for i in ids]
    if all(piece is not None for piece in pieces):
        ends = list(accumulate(len(piece) for piece in pieces))
        joined = b"".join(pieces)
        if joined == data:
            return TokenSpans(ids, ends, True)
        if joined == b" " + data and ends:  # SentencePiece's dummy prefix: the first "▁" is not in the text
            return TokenSpans(ids, [end - 1 for end in ends], True)
    return TokenSpans(ids, _ends_from_offsets(text, encoding["offset_mapping"], len(data)), False)


def _ends_from_offsets(text: str, offsets: list[tuple[int, int]], n_bytes: int) -> list[int]:
    """Token ends from character offsets, made non-decreasing; the last token runs to the end of the text."""
    char_to_byte = [0, *accumulate(len(char.encode("utf-8")) for char in text)]
    ends, last = [], 0
    for _start, end in offsets:
        last = max(last, char_to_byte[min(end, len(text))])
        ends.append(last)
    if ends:
        ends[-1] = n_bytes
    return ends


def align_chunks(a: TokenSpans, b: TokenSpans) -> ChunkAlignment:
    """The shortest chunks whose boundaries both sides share; every token of both sides lies in one chunk."""
    if not a.ends or not b.ends or a.ends[-1] != b.ends[-1]:
        raise ValueError("the two tokenizations do not cover the same text")
    shared = sorted((set(a.ends) & set(b.ends)) - {0})
    return ChunkAlignment(_chunk_of(a.ends, shared), _chunk_of(b.ends, shared), shared)


def _chunk_of(ends: list[int], boundaries: list[int]) -> list[int]:
    """Chunk index per token: the first boundary at or after the token's end (a zero-length token joins the next)."""
    chunks, c = [], 0
    for end in ends:
        while boundaries[c] < end:
            c += 1
        chunks.append(c)
    return chunks
