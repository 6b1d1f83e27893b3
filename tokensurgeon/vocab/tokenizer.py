"""Byte-exact vocabularies: every token of a loaded tokenizer as the bytes it stands for (bytes.py).

Special tokens (and role tokens: bos, eos, pad, unk) have no bytes here: they are matched by
role and by exact content in alignment.py, never by their text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from ..errors import TokenizerError
from ..runtime.progress import first_line
from ..runtime.quiet import quiet_transformers
from .bytes import canonical_bytes, detect_scheme, is_byte_token
from .packed import Packed
from .plain import read_plain_tokenizer

ROLES = ("bos", "eos", "unk", "pad")


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's vocabulary by id: canonical bytes for ordinary tokens, content for specials.

    Attributes:
        kind: human-readable family, e.g. "byte-level BPE".
        scheme: how token strings map to bytes: "byte-level", "metaspace", "wordpiece", "plain".
        tokens: token string per id (None for ids the tokenizer does not define); build_vocabulary packs
            it (packed.py), any sequence will do.
        canonical: bytes per id; None for special tokens and undefined ids (packed likewise).
        specials: id -> content of every special or role token.
        roles: role name ("bos", "eos", "unk", "pad") -> id.
        byte_fallback: ids of ``<0xNN>`` byte tokens.
    """

    kind: str
    scheme: str
    tokens: Sequence[str | None]
    canonical: Sequence[bytes | None]
    specials: dict[int, str]
    roles: dict[str, int]
    byte_fallback: frozenset[int]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def defined_ids(self) -> list[int]:
        """Ids the tokenizer defines (statistics over embedding rows leave padding rows out)."""
        if isinstance(self.tokens, Packed):  # its flags say it without decoding 262k strings
            return self.tokens.present()
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


def _missing_format_packages(path: Path) -> list[str]:
    """Packages a tokenizer.model-only directory needs that are not installed (sentencepiece, protobuf)."""
    import importlib.util

    if (path / "tokenizer.json").is_file() or not (path / "tokenizer.model").is_file():
        return []
    def missing(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ModuleNotFoundError:  # its parent package (google) is absent
            return True

    return [name for name, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
            if missing(module)]


def check_tokenizer_dir(path: Path, *, trust_remote_code: bool = False) -> None:
    """Refuse, with the fix, a path that holds no tokenizer this tool can read (before any parse)."""
    gguf_hint = ("; a GGUF file holds the tokenizer in its own format: convert it to a Hugging Face directory "
                 "first (transformers: AutoTokenizer.from_pretrained(dir, gguf_file=NAME).save_pretrained(OUT))")
    if not path.is_dir():
        raise TokenizerError(f"{path}: not a directory (expected a tokenizer or checkpoint directory)"
                             + (gguf_hint if path.suffix == ".gguf" else "" if path.exists() else
                                "; it does not exist"))
    if not any((path / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise TokenizerError(f"{path}: no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"
                             + (gguf_hint if any(path.glob("*.gguf")) else ""))
    needs = _missing_format_packages(path)
    if needs:
        raise TokenizerError(f"{path}: the tokenizer is only a SentencePiece tokenizer.model (no tokenizer.json); "
                             f"reading it needs {' and '.join(needs)}: pip install 'tokensurgeon[sentencepiece]'")
    settings = path / "tokenizer_config.json"
    if not trust_remote_code and settings.is_file() and '"auto_map"' in settings.read_text(errors="replace"):
        if not (path / "tokenizer.json").is_file():
            raise TokenizerError(f"{path}: the tokenizer is defined by Python code shipped with it (auto_map in "
                                 "tokenizer_config.json); pass --trust-remote-code to run it (read that code first)")


def open_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """The directory's tokenizer read by the tokenizers library alone where transformers would add nothing
    to tokenizer.json (plain.py: one parse instead of several), else as ``load_tokenizer`` loads it."""
    path = Path(path)
    check_tokenizer_dir(path, trust_remote_code=trust_remote_code)
    plain = read_plain_tokenizer(path)
    return plain if plain is not None else _auto_tokenizer(path, trust_remote_code)


def load_tokenizer(path: Path, *, trust_remote_code: bool = False) -> Any:
    """Load a fast tokenizer from a tokenizer or checkpoint directory; remote code only if trusted."""
    path = Path(path)
    check_tokenizer_dir(path, trust_remote_code=trust_remote_code)
    return _auto_tokenizer(path, trust_remote_code)


def _auto_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for one cause: unreadable files
        message = first_line(exc)
        if "trust_remote_code" in str(exc):  # transformers says so past its first line
            message = "it needs code shipped with it; pass --trust-remote-code to run that code (read it first)"
        raise TokenizerError(f"{path}: cannot load tokenizer: {message}") from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TokenizerError(f"{path}: only fast (tokenizers-backed) tokenizers are supported")
    return tokenizer


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
            if byte_fallback and is_byte_token(token):
                fallback_ids.add(token_id)
    content_to_id = {content: token_id for token_id, content in sorted(specials.items(), reverse=True)}
    roles = {role: content_to_id[content] for role, content in role_content.items() if content in content_to_id}
    return Vocabulary(
        kind=kind,
        scheme=scheme,
        tokens=Packed(tokens, text=True),
        canonical=Packed(canonical),
        specials=specials,
        roles=roles,
        byte_fallback=frozenset(fallback_ids),
    )
