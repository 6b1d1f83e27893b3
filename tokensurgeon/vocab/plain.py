"""A tokenizer.json read by the tokenizers library alone, where transformers' loader would add nothing.

AutoTokenizer parses Gemma 3's 33 MB tokenizer.json several times (~6 s and ~300 MB on two cores) to give
what the file and tokenizer_config.json already say. A directory whose tokenizer_config.json asks
transformers for nothing beyond the file is read here with one parse: a generic or Gemma tokenizer
class, no code, no BOS/EOS or prefix-space switches, no extra special tokens, no legacy side files, and
every named special token already a special token of the file (transformers would add or re-flag it).
Any other directory goes through AutoTokenizer (tokenizer.py), as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# classes whose transformers loader keeps tokenizer.json as it is (checked against AutoTokenizer on the
# real tokenizers in tests/vocab/test_plain.py); Qwen2's, for one, replaces the normalizer
PLAIN_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast", "GemmaTokenizer", "GemmaTokenizerFast"})
# tokenizer_config.json keys on which transformers changes the backend or the special tokens
REWRITING_KEYS = ("auto_map", "add_bos_token", "add_eos_token", "add_prefix_space", "additional_special_tokens",
                  "extra_special_tokens", "fix_mistral_regex", "fast_tokenizer_files", "split_special_tokens",
                  "legacy", "from_slow", "tokenizer_file")
# side files transformers merges into the tokenizer (special tokens, added tokens, several chat templates)
MERGED_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.json", "additional_chat_templates")
NAMED_TOKENS = ("bos", "eos", "unk", "pad", "mask", "cls", "sep")


@dataclass(frozen=True)
class PlainTokenizer:
    """The part of a transformers fast tokenizer that tokensurgeon uses, over a tokenizers.Tokenizer."""

    backend_tokenizer: Any
    named: dict[str, str]  # role ("bos", "eos", ...) -> token content
    chat_template: str | None

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __getattr__(self, name: str) -> Any:  # bos_token, eos_token, ... as transformers names them
        role = name.removesuffix("_token")
        if name.endswith("_token") and role in NAMED_TOKENS:
            return self.named.get(role)
        raise AttributeError(name)

    @property
    def bos_token_id(self) -> int | None:
        return self.backend_tokenizer.token_to_id(self.named["bos"]) if "bos" in self.named else None

    def __call__(self, text: str, *, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def tokenize(self, text: str) -> list[str]:
        return self.backend_tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: list[int]) -> str:
        return self.backend_tokenizer.decode(ids, skip_special_tokens=False)


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or a serialised AddedToken."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(path: Path, settings: dict) -> str | None:
    """The template transformers would give as a string: chat_template.jinja first, else the config's."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    return template if isinstance(template, str) else None


def read_plain_tokenizer(path: Path) -> PlainTokenizer | None:
    """The directory's tokenizer read with one parse of tokenizer.json, or None where transformers' loader
    would change it (then AutoTokenizer must load it) or where anything fails to read (AutoTokenizer then
    reports the cause, as it always has)."""
    from tokenizers import Tokenizer

    path = Path(path)
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(settings, dict) or settings.get("tokenizer_class") not in PLAIN_CLASSES
            or any(key in settings for key in REWRITING_KEYS)
            or any((path / name).exists() for name in MERGED_FILES)):
        return None
    named = {role: _content(settings.get(f"{role}_token")) for role in NAMED_TOKENS}
    named = {role: content for role, content in named.items() if content is not None}
    try:
        backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        template = _chat_template(path, settings)
    except Exception:  # noqa: BLE001 - the tokenizers bindings raise plain Exception for a bad file
        return None
    if backend.post_processor is None:  # transformers would build one from its BOS/EOS defaults
        return None
    added = backend.get_added_tokens_decoder()
    specials = {token.content for token in added.values() if token.special}
    if not set(named.values()) <= specials:
        return None
    for token_id, token in settings.get("added_tokens_decoder", {}).items():
        found = added.get(int(token_id)) if str(token_id).isdigit() else None
        if not isinstance(token, dict) or found is None or (found.content, found.special) != (
                token.get("content"), bool(token.get("special"))):
            return None
    return PlainTokenizer(backend, named, template)
