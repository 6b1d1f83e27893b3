"""Token overlap computed by hand from tokenizer.json files, as the independent reference for tokensurgeon's
alignment counts (nothing here imports tokensurgeon)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple


def _gpt2_byte_table() -> dict[str, int]:
    """GPT-2's printable stand-in character -> byte (the published bytes_to_unicode table, inverted)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


def reference_token_bytes(path: Path) -> dict[int, bytes]:
    """Id -> bytes of every non-special token, read from tokenizer.json by hand: byte-level BPE through
    GPT-2's table; SentencePiece through its conventions (\u2581 a space, <0xNN> one byte)."""
    spec = json.loads((path / "tokenizer.json").read_text())
    special = {token["content"] for token in spec.get("added_tokens", []) if token.get("special")}
    byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    table = _gpt2_byte_table()
    spelled = {}
    for token, token_id in spec["model"]["vocab"].items():
        if token in special:
            continue
        if byte_level:
            spelled[token_id] = bytes(table[char] for char in token)
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            spelled[token_id] = bytes([int(token[3:5], 16)])
        else:
            spelled[token_id] = token.replace("\u2581", " ").encode()
    return spelled


class Overlap(NamedTuple):
    shared: int  # donor tokens (specials aside) whose bytes some base token spells too
    new: int  # the other donor tokens (specials aside)


def reference_overlap(base_path: Path, donor_path: Path) -> Overlap:
    known = set(reference_token_bytes(base_path).values())
    donor = reference_token_bytes(donor_path).values()
    shared = sum(spelled in known for spelled in donor)
    return Overlap(shared, len(donor) - shared)
