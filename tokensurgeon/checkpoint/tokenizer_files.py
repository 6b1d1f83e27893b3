"""The patched checkpoint's tokenizer: the donor's files, with two policies applied.

- Chat template (``--chat-template donor|base``): the donor's template by default, or the base's.
- BOS: a base model trained with a BOS token at the start of every sequence (Gemma, Llama) degrades
  badly without it, and many donor tokenizers (GPT-2 style) never add one. When the base tokenizer adds
  BOS and the donor's does not, the copied tokenizer.json gets a post-processor that prepends the
  donor's BOS (which maps to the base BOS row), so plain ``tokenizer(text)`` keeps working.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "spiece.model")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
CHAT_TEMPLATE_PATHS = (*CHAT_TEMPLATE_FILES, "additional_chat_templates")  # the folder of named templates too
# what tokenizer.json makes redundant (a fast tokenizer is built from it alone); tokenizer.model stays for
# converters that read SentencePiece models (llama.cpp)
SUPERSEDED_BY_TOKENIZER_JSON = ("vocab.json", "merges.txt", "vocab.txt", "added_tokens.json")


def inside_file(directory: Path, name: str) -> Path | None:
    """directory/name when it is a regular file that resolves inside directory (a symlink pointing out of
    an input directory, to ~/.ssh/id_rsa say, is never read or copied), else None."""
    candidate = Path(directory) / name
    try:
        resolved = candidate.resolve(strict=True)
        root = Path(directory).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_file() or not resolved.is_relative_to(root):
        return None
    return candidate


def copy_side_file(directory: Path, name: str, target: Path) -> bool:
    """Copy directory/name to target when it is a file inside directory; the copy's mode is never wider
    than the source's. Returns whether it was copied."""
    source = inside_file(directory, name)
    if source is None:
        return False
    shutil.copyfile(source, target)
    os.chmod(target, stat.S_IMODE(source.stat().st_mode) & stat.S_IMODE(target.stat().st_mode))
    return True


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


def _write_fast_spec(donor: Path, staging: Path) -> None:
    """tokenizer.json for a donor given as vocab.json + merges.txt, from the fast tokenizer transformers
    builds from them (the same tokenizer, in the one file the BOS policy can edit)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(donor)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.save(str(staging / "tokenizer.json"))


def write_tokenizer(donor: Path, base_traits: TokenizerTraits, donor_traits: TokenizerTraits, staging: Path, *,
                    chat_template: str) -> list[str]:
    """Copy the donor's tokenizer files into staging and apply the BOS and chat-template policies.

    Returns warnings and notes for the report.
    """
    has_spec = inside_file(donor, "tokenizer.json") is not None
    for name in TOKENIZER_FILES + CHAT_TEMPLATE_FILES:
        if not (has_spec and name in SUPERSEDED_BY_TOKENIZER_JSON):
            copy_side_file(donor, name, staging / name)
    if (not has_spec and base_traits.adds_bos and not donor_traits.adds_bos
            and inside_file(donor, "vocab.json") is not None):
        _write_fast_spec(donor, staging)  # vocab.json + merges.txt: the BOS policy needs a tokenizer.json
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
    (staging / "chat_template.jinja").write_text(template)  # its control tokens checked before (pipeline.chat)
    return notes
