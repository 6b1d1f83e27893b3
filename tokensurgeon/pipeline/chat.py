"""Chat models stay chat models: the template the patched model carries, its end-of-turn token, one rendered turn.

generate() stops at generation_config's eos_token_id, and a chat template ends each assistant turn with a token of
its own (ChatML ``<|im_end|>``, Llama 3 ``<|eot_id|>``, Gemma ``<end_of_turn>``) that is often not the tokenizer's
eos: without it in eos_token_id a patched instruct model talks past its turn. A base template kept with
``--chat-template base`` must find its control tokens among the donor's special tokens, or each would be split into
ordinary pieces the model never saw as one token.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.tokenizer_files import CHAT_TEMPLATE_PATHS
from ..errors import TokenSurgeonError
from ..runtime.cache import cache_dir, store, transformers_version

QUESTION, ANSWER = "What is the capital of France?", "Paris."
TURN = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
_ENTRY = "turn.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # never read by a tokenizer: not in the cache key
UNSTABLE_TEMPLATE = re.compile(rb"strftime_now|\|\s*random")  # today's date, a random pick: renders differ by run


@dataclass(frozen=True)
class ChatTurn:
    """The patched tokenizer's chat template (whose: donor or base; None without one), the special token that ends
    an assistant turn and its id, and TURN as the template renders it."""

    template: str | None
    end_of_turn: str | None = None
    end_of_turn_id: int | None = None
    rendered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_template_tokens(template: str | None, base_specials: set[str], donor_specials: set[str]) -> None:
    """Refuse a base chat template whose control tokens (base special tokens it names) the donor lacks."""
    missing = sorted(content for content in base_specials if template and content in template
                     and content not in donor_specials)
    if missing:
        raise TokenSurgeonError(f"--chat-template base: the base template's control tokens {', '.join(missing[:5])} "
                                "are not special tokens of the donor tokenizer (each would be split into pieces); "
                                "keep --chat-template donor, or add them to the donor tokenizer as special tokens first")


def end_of_turn(rendered: str, specials: dict[str, int]) -> str | None:
    """The special token right after the assistant's answer in a rendered turn: the template's end of turn."""
    if ANSWER not in rendered:
        return None
    rest = rendered[rendered.rindex(ANSWER) + len(ANSWER):]
    return next((content for content in sorted(specials, key=len, reverse=True) if rest.startswith(content)), None)


def declares_no_template(tokenizer_dir: Path) -> bool:
    """No template file and no chat_template in tokenizer_config.json: transformers would give none, so no
    tokenizer need be loaded to find that out (~3 s for Gemma3's)."""
    if any((tokenizer_dir / name).exists() for name in CHAT_TEMPLATE_PATHS):
        return False
    try:
        settings = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and "chat_template" not in settings


def turn_key(tokenizer_dir: Path) -> str | None:
    """The cache key of a directory's rendered turn: transformers' version and, by name and bytes, every file in it
    but weights (all AutoTokenizer may read); None where a template may render differently from run to run."""
    digest = hashlib.sha256(transformers_version().encode())
    for file in sorted(path for path in Path(tokenizer_dir).rglob("*") if path.is_file()):
        if file.suffix in WEIGHT_SUFFIXES:
            continue
        data = file.read_bytes()
        if UNSTABLE_TEMPLATE.search(data):
            return None
        digest.update(hashlib.sha256(str(file.relative_to(tokenizer_dir)).encode() + b"\0" + data).digest())
    return digest.hexdigest()


def chat_turn(tokenizer_dir: Path, source: str, *, trust_remote_code: bool = False) -> ChatTurn:
    """Render TURN with the tokenizer written to tokenizer_dir (as a user loads it) and find its end of turn.

    Loading the tokenizer through transformers costs ~1 s (its import, AutoTokenizer's), so the answer is kept in
    the cache under ``turn_key``; remote code (which can change under the same files) is never cached."""
    if not trust_remote_code and declares_no_template(Path(tokenizer_dir)):  # remote code may define one
        return ChatTurn(None)
    key = None if trust_remote_code else turn_key(tokenizer_dir)
    entry = cache_dir("chat") / key if key else None
    if entry is not None:
        try:
            saved = json.loads((entry / _ENTRY).read_text())
            return ChatTurn(source if saved["template"] is not None else None, saved["end_of_turn"],
                            saved["end_of_turn_id"], saved["rendered"])
        except (OSError, ValueError, TypeError, KeyError):  # no entry yet, or one this version cannot read
            pass
    turn = _rendered_turn(tokenizer_dir, source, trust_remote_code)
    if entry is not None:
        failed = store(entry, lambda staging: (staging / _ENTRY).write_text(json.dumps(turn.to_dict())))
        if failed:
            warnings.warn(failed, stacklevel=2)
    return turn


def _rendered_turn(tokenizer_dir: Path, source: str, trust_remote_code: bool) -> ChatTurn:
    from jinja2 import TemplateError
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    if not isinstance(tokenizer.chat_template, str):
        return ChatTurn(None)
    try:
        rendered = tokenizer.apply_chat_template(TURN, tokenize=False)
    except TemplateError:  # a template that refuses this conversation (e.g. one requiring a system turn)
        return ChatTurn(source)
    specials = {str(token): i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    content = end_of_turn(rendered, specials)
    return ChatTurn(source, content, specials.get(content) if content else None, rendered)


def with_end_of_turn(token_ids: dict[str, Any], end_id: int | None) -> dict[str, Any]:
    """token_ids with eos_token_id a list that also holds end_id (transformers' convention for several stops)."""
    eos = token_ids.get("eos_token_id")
    stops = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if end_id is None or end_id in stops:
        return token_ids
    return token_ids | {"eos_token_id": stops + [end_id]}
