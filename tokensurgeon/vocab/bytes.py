"""Tokens as the bytes they stand for in text, under each tokenizer family's spelling scheme.

Tokenizers spell the same bytes differently: GPT-2 style byte-level BPE writes " the" as
``Ġthe``, SentencePiece writes it as ``▁the`` and stores raw bytes as ``<0xNN>`` tokens,
WordPiece marks continuations with ``##``. Aligning two vocabularies by raw strings misses
most of their overlap; aligning them by canonical bytes finds it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_METASPACE = "\u2581"


@lru_cache(maxsize=1)
def gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's printable-character map for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


@lru_cache(maxsize=1)
def _byte_level_tables() -> tuple[dict[int, None], dict[int, int]]:
    """str.translate tables: GPT-2's printable characters deleted (what is left is not byte-level), and each mapped
    to the Latin-1 character of its byte (so ``encode("latin-1")`` gives the bytes): ~3x faster than per character."""
    decoder = gpt2_byte_decoder()
    return {ord(char): None for char in decoder}, {ord(char): byte for char, byte in decoder.items()}


def _walk(node: Any) -> list[dict]:
    """Flatten nested tokenizer.json components (Sequence normalizers, decoders...)."""
    if isinstance(node, dict):
        found = [node]
        for value in node.values():
            found += _walk(value)
        return found
    if isinstance(node, list):
        return [item for value in node for item in _walk(value)]
    return []


def detect_scheme(spec: dict) -> tuple[str, str]:
    """Return (scheme, kind) from a parsed tokenizer.json."""
    model = spec.get("model", {})
    model_type = model.get("type", "unknown")
    parts = _walk([spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("decoder")])
    types = {part.get("type") for part in parts}
    metaspace = "Metaspace" in types or any(
        part.get("type") == "Replace"
        and _METASPACE in (part.get("content", ""), part.get("pattern", {}).get("String", ""))
        for part in parts
    )
    if "ByteLevel" in types:
        return "byte-level", f"byte-level {model_type}"
    if model_type == "WordPiece":
        return "wordpiece", "WordPiece"
    if metaspace:
        fallback = " (byte fallback)" if model.get("byte_fallback") else ""
        return "metaspace", f"SentencePiece {model_type}{fallback}"
    return "plain", model_type


def spell_bytes(raw: bytes) -> str:
    """Bytes as text where they are UTF-8, every other byte as ``<0xNN>`` (one spelling for raw bytes everywhere):
    the lone byte 0xF1 reads ``<0xF1>``, never as the ``ñ`` GPT-2's byte map draws for it.

    >>> spell_bytes(b" ni\xc3\xb1o"), spell_bytes(b"\xf1"), spell_bytes(b"a\xc0b")
    (' niño', '<0xF1>', 'a<0xC0>b')
    """
    parts = []
    while raw:
        try:
            parts.append(raw.decode("utf-8"))
            break
        except UnicodeDecodeError as exc:
            parts.append(raw[:exc.start].decode("utf-8") + "".join(f"<0x{b:02X}>" for b in raw[exc.start:exc.end]))
            raw = raw[exc.end:]
    return "".join(parts)


def is_byte_token(token: str) -> bool:
    """Whether a SentencePiece token is a byte-fallback token (``<0xNN>``)."""
    return token.startswith("<0x") and _BYTE_TOKEN.match(token) is not None  # startswith: no regex per token


def canonical_bytes(token: str, scheme: str, *, byte_fallback: bool = False) -> bytes:
    """The bytes a token stands for in text, under the tokenizer's spelling scheme.

    >>> canonical_bytes("Ġthe", "byte-level"), canonical_bytes("▁the", "metaspace")
    (b' the', b' the')
    """
    if scheme == "byte-level":
        printable, to_latin1 = _byte_level_tables()
        if not token.translate(printable):  # every character is one of the map's
            return token.translate(to_latin1).encode("latin-1")
        return token.encode("utf-8")
    if scheme == "metaspace":
        match = _BYTE_TOKEN.match(token) if byte_fallback and token.startswith("<0x") else None
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_METASPACE, " ").encode("utf-8")
    if scheme == "wordpiece":
        # A WordPiece word start follows a space in text; "##" marks a continuation.
        return token[2:].encode("utf-8") if token.startswith("##") else b" " + token.encode("utf-8")
    return token.encode("utf-8")
