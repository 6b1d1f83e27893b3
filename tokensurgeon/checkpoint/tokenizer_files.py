"""The patched checkpoint's tokenizer: the donor's files, with two policies applied.

- Chat template (``--chat-template donor|base``): the donor's template by default, or the base's.
- BOS: a base model trained with a BOS token at the start of every sequence (Gemma, Llama) degrades
  badly without it, and many donor tokenizers (GPT-2 style) never add one. When the base tokenizer adds
  BOS and the donor's does not, the copied tokenizer.json gets a post-processor that prepends the
  donor's BOS (which maps to the base BOS row), so plain ``tokenizer(text)`` keeps working.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "spiece.model")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class TokenizerTraits:
    """What writing the patched tokenizer needs from a tokenizer, kept apart from the tokenizer object
    (Gemma 3's holds ~300 MB) so a transplant need not load it again to write its output."""

    adds_bos: bool
    bos_token: str | None
    bos_token_id: int | None
    chat_template: str | None

    @classmethod
    def of(cls, tokenizer: Any) -> "TokenizerTraits":
        bos = tokenizer.bos_token_id
        adds = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
        template = tokenizer.chat_template
        return cls(adds, tokenizer.bos_token, bos, template if isinstance(template, str) else None)


def bos_post_processor(existing: dict | None, bos: str, bos_id: int) -> dict:
    """A tokenizers post-processor that prepends BOS, chained after any existing one (e.g. ByteLevel offsets)."""
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    if existing is None:
        return template
    return {"type": "Sequence", "processors": [existing, template]}


def match_bos(base: TokenizerTraits, donor: TokenizerTraits, staging: Path) -> list[str]:
    """Make the copied donor tokenizer prepend BOS when the base tokenizer does. Returns notes."""
    spec_file = staging / "tokenizer.json"
    if not base.adds_bos or donor.adds_bos or not spec_file.is_file():
        return []
    if donor.bos_token_id is None:
        return ["the base model expects a BOS token but the donor tokenizer has none; prepend one yourself"]
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    spec["post_processor"] = bos_post_processor(spec.get("post_processor"), donor.bos_token, donor.bos_token_id)
    spec_file.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return [f"the base tokenizer prepends BOS and the donor's did not: the patched tokenizer now prepends "
            f"{donor.bos_token!r}"]


def write_tokenizer(donor: Path, base_traits: TokenizerTraits, donor_traits: TokenizerTraits,
                    base_specials: set[str], donor_specials: set[str], staging: Path, *,
                    chat_template: str) -> list[str]:
    """Copy the donor's tokenizer files into staging and apply the BOS and chat-template policies.

    Returns warnings and notes for the report.
    """
    for name in TOKENIZER_FILES + CHAT_TEMPLATE_FILES:
        if (donor / name).is_file():
            shutil.copyfile(donor / name, staging / name)
    notes = match_bos(base_traits, donor_traits, staging)
    if chat_template == "donor":
        return notes + ([] if donor_traits.chat_template else ["the donor tokenizer has no chat template"])
    template = base_traits.chat_template
    if not template:
        return notes + ["--chat-template base: the base tokenizer has no chat template; none written"]
    for name in CHAT_TEMPLATE_FILES:
        (staging / name).unlink(missing_ok=True)
    settings_file = staging / "tokenizer_config.json"
    if settings_file.is_file():
        settings = json.loads(settings_file.read_text())
        settings.pop("chat_template", None)
        settings_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    (staging / "chat_template.jinja").write_text(template)
    missing = sorted(content for content in base_specials if content in template and content not in donor_specials)
    if missing:
        notes.append(f"base chat template uses tokens the donor lacks: {', '.join(missing[:5])}")
    return notes
