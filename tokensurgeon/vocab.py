"""Byte-exact vocabularies: every token of any tokenizer as the bytes it stands for.

Tokenizers spell the same bytes differently: GPT-2 style byte-level BPE writes " the" as
``Ġthe``, SentencePiece writes it as ``▁the`` and stores raw bytes as ``<0xNN>`` tokens,
WordPiece marks continuations with ``##``. Aligning two vocabularies by raw strings misses
most of their overlap; aligning them by canonical bytes finds it.

Special tokens (and role tokens: bos, eos, pad, unk) have no bytes here: they are matched by
role and by exact content in alignment.py, never by their text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import TokenizerError

ROLES = ("bos", "eos", "unk", "pad")
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


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary by id: canonical bytes for ordinary tokens, content for specials.

    Attributes:
        kind: human-readable family, e.g. "byte-level BPE".
        scheme: how token strings map to bytes: "byte-level", "metaspace", "wordpiece", "plain".
        tokens: token string per id (None for ids the tokenizer does not define).
        canonical: bytes per id; None for special tokens and undefined ids.
        specials: id -> content of every special or role token.
        roles: role name ("bos", "eos", "unk", "pad") -> id.
        byte_fallback: ids of ``<0xNN>`` byte tokens.
    """

    kind: str
    scheme: str
    tokens: tuple[str | None, ...]
    canonical: tuple[bytes | None, ...]
    specials: dict[int, str]
    roles: dict[str, int]
    byte_fallback: frozenset[int]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def defined_ids(self) -> list[int]:
        """Ids the tokenizer defines (statistics over embedding rows leave padding rows out)."""
        return [i for i, token in enumerate(self.tokens) if token is not None]

    def bytes_to_id(self) -> dict[bytes, int]:
        """Map canonical bytes to the id a text would use: ordinary pieces before ``<0xNN>``."""
        lookup: dict[bytes, int] = {}
        for token_id, raw in enumerate(self.canonical):
            if raw is None or token_id in self.byte_fallback:
                continue
            lookup.setdefault(raw, token_id)
        for token_id in sorted(self.byte_fallback):
            lookup.setdefault(self.canonical[token_id], token_id)
        return lookup


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """Load a fast tokenizer from a tokenizer or checkpoint directory; remote code only if trusted."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise TokenizerError(f"{path}: not a directory (expected a tokenizer or checkpoint directory)"
                             + ("" if path.exists() else "; it does not exist"))
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise TokenizerError(f"{path}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)")
    from .quiet import quiet_transformers

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for one cause: unreadable files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"{path}: cannot load tokenizer: {first_line}") from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(f"{path}: only fast (tokenizers-backed) tokenizers are supported")
    return tokenizer


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


def canonical_bytes(token: str, scheme: str, *, byte_fallback: bool = False) -> bytes:
    """The bytes a token stands for in text, under the tokenizer's spelling scheme.

    >>> canonical_bytes("Ġthe", "byte-level"), canonical_bytes("▁the", "metaspace")
    (b' the', b' the')
    """
    if scheme == "byte-level":
        decoder = gpt2_byte_decoder()
        if all(char in decoder for char in token):
            return bytes(decoder[char] for char in token)
        return token.encode("utf-8")
    if scheme == "metaspace":
        match = _BYTE_TOKEN.match(token) if byte_fallback else None
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_METASPACE, " ").encode("utf-8")
    if scheme == "wordpiece":
        # A WordPiece word start follows a space in text; "##" marks a continuation.
        return token[2:].encode("utf-8") if token.startswith("##") else b" " + token.encode("utf-8")
    return token.encode("utf-8")


def _role_tokens(tokenizer: Any) -> dict[str, str]:
    roles = {}
    for role in ROLES:
        content = getattr(tokenizer, f"{role}_token", None)
        if content:
            roles[role] = str(content)
    return roles


def tokenizer_spec(backend: Any) -> dict:
    """The parts of tokenizer.json that build_vocabulary reads, from a tokenizers.Tokenizer.

    Serialising the whole tokenizer (``to_str``) and parsing it back would also copy every merge:
    hundreds of MB and seconds for a 262k vocabulary. Each part is asked for on its own instead;
    only a Unigram model, whose byte-fallback flag the bindings do not expose, is serialised whole.
    """
    model_type = type(backend.model).__name__
    if model_type == "Unigram":
        model = json.loads(backend.model.__getstate__())
    else:
        model = {"type": model_type, "byte_fallback": bool(getattr(backend.model, "byte_fallback", False)),
                 "vocab": backend.get_vocab(with_added_tokens=False)}
    spec = {"model": model, "added_tokens": [{"id": token_id, "content": added.content, "special": added.special}
                                             for token_id, added in backend.get_added_tokens_decoder().items()]}
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        component = getattr(backend, part)
        spec[part] = json.loads(component.__getstate__()) if component is not None else None
    return spec


def build_vocabulary(tokenizer: Any) -> Vocabulary:
    """Read a fast tokenizer's vocabulary into canonical bytes, keeping specials apart."""
    spec = tokenizer_spec(tokenizer.backend_tokenizer)
    scheme, kind = detect_scheme(spec)
    model = spec["model"]
    pieces = model.get("vocab", {})
    if isinstance(pieces, list):  # Unigram: [[piece, score], ...]
        pieces = {piece: index for index, (piece, _score) in enumerate(pieces)}
    by_id: dict[int, str] = {index: piece for piece, index in pieces.items()}
    special_content: set[str] = set()
    literal: set[int] = set()  # added tokens match their content in raw text, before the model runs
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        literal.add(added["id"])
        if added.get("special"):
            special_content.add(added["content"])
    role_content = _role_tokens(tokenizer)
    special_content |= set(role_content.values())

    if by_id and not (0 <= min(by_id) and max(by_id) < 2 * len(by_id) + 1024):
        # ids index embedding rows: a stray huge id would make every per-id table (and the output) huge
        raise TokenizerError(f"token ids are not contiguous: id {max(by_id)} among {len(by_id)} tokens "
                             "(a corrupt tokenizer.json?)")
    size = max(len(tokenizer), max(by_id) + 1 if by_id else 0)
    byte_fallback = bool(model.get("byte_fallback"))
    tokens: list[str | None] = [None] * size
    canonical: list[bytes | None] = [None] * size
    specials: dict[int, str] = {}
    fallback_ids: set[int] = set()
    for token_id, token in by_id.items():
        tokens[token_id] = token
        if token in special_content:
            specials[token_id] = token
        elif token_id in literal:
            canonical[token_id] = token.encode("utf-8")
        else:
            canonical[token_id] = canonical_bytes(token, scheme, byte_fallback=byte_fallback)
            if byte_fallback and _BYTE_TOKEN.match(token):
                fallback_ids.add(token_id)
    content_to_id = {content: token_id for token_id, content in sorted(specials.items(), reverse=True)}
    roles = {role: content_to_id[content] for role, content in role_content.items() if content in content_to_id}
    return Vocabulary(
        kind=kind,
        scheme=scheme,
        tokens=tuple(tokens),
        canonical=tuple(canonical),
        specials=specials,
        roles=roles,
        byte_fallback=frozenset(fallback_ids),
    )
