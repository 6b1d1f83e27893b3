"""Draft models for speculative decoding: a small model that shares its target's vocabulary exactly.

Engines pair a draft with a target only when both speak one vocabulary: transformers' assisted generation
compares the models' ``vocab_size`` (the padded embedding row count), vLLM and llama.cpp compare the
vocabularies and special ids. ``transplant --as-draft-for TARGET`` makes the target the donor, keeps its
row count, tokenizer and chat template, copies its special token ids into the draft's config and
generation config, and then checks the result with ``check_draft_compatible``: a draft that still differs
is refused and nothing is written. ``evaluate --speculative`` runs the same check to pick how to pair.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..checkpoint import open_checkpoint
from ..checkpoint.model_config import (CONFIG_ID_KEYS, config_token_ids, generation_token_ids, patch_config,
                                       read_json, write_json)
from ..checkpoint.tokenizer_files import CHAT_TEMPLATE_PATHS, TOKENIZER_FILES
from ..errors import TokenSurgeonError
from ..vocab import load_tokenizer

class DraftError(TokenSurgeonError):
    """A draft cannot be made to match its target."""


def check_draft_request(target: Path, target_rows: int | None, draft_rows: int, pad_to_multiple: int) -> None:
    """Refuse, before any slow work, a draft whose row count could not equal the target's."""
    if target_rows is None:
        raise DraftError(f"--as-draft-for {target}: the target must be a full model directory (config.json and "
                         "safetensors weights), not a tokenizer")
    if draft_rows != target_rows:
        hint = (f"; --pad-to-multiple {pad_to_multiple} conflicts with it, drop it" if pad_to_multiple > 1
                else "; its tokenizer defines more ids than it has embedding rows")
        raise DraftError(f"the draft would get {draft_rows:,} embedding rows but the target {target} has "
                         f"{target_rows:,}; a draft must match exactly{hint}")


def _tokenizer_mismatches(target: Any, draft: Any) -> list[str]:
    found = []
    target_vocab, draft_vocab = target.get_vocab(), draft.get_vocab()
    if target_vocab != draft_vocab:
        differ = sum(draft_vocab.get(token) != token_id for token, token_id in target_vocab.items())
        found.append(f"tokenizer vocabularies differ ({len(target_vocab):,} vs {len(draft_vocab):,} tokens, "
                     f"{differ:,} target tokens missing or at another id in the draft)")
        return found  # everything below would only repeat it
    for attr in CONFIG_ID_KEYS:  # the tokenizer attributes are named as the config keys
        if getattr(target, attr) != getattr(draft, attr):
            found.append(f"tokenizer {attr}: target {getattr(target, attr)}, draft {getattr(draft, attr)}")
    special = ({i: t.content for i, t in tok.added_tokens_decoder.items() if t.special} for tok in (target, draft))
    target_special, draft_special = special
    if target_special != draft_special:
        differ = sorted(set(target_special.items()) ^ set(draft_special.items()))
        found.append(f"added special tokens differ, e.g. {differ[:3]}")
    if target.chat_template != draft.chat_template:
        found.append("chat templates differ")
    return found


def _same_tokenizer_files(target: Path, draft: Path) -> bool:
    """Whether every file a tokenizer is loaded from is in both folders with the same bytes, or in neither.

    Then the two tokenizers are one, and loading them (~3 s each for Gemma's 33 MB tokenizer.json) to compare
    them can be skipped: a draft made with --as-draft-for gets the target's files as they are.
    """
    for name in (*TOKENIZER_FILES, *CHAT_TEMPLATE_PATHS):
        ours, theirs = target / name, draft / name
        if ours.exists() != theirs.exists() or (ours.is_file() and ours.read_bytes() != theirs.read_bytes()):
            return False
        if ours.is_dir():  # e.g. additional_chat_templates/: not compared file by file
            return False
    return True


def check_draft_compatible(target: Path, draft: Path, *, trust_remote_code: bool = False) -> list[str]:
    """What keeps DRAFT from drafting for TARGET as is: one line per mismatch, empty when they pair."""
    target, draft = Path(target), Path(draft)
    found = []
    rows = [open_checkpoint(path, trust_remote_code=trust_remote_code).vocab_rows for path in (target, draft)]
    if rows[0] != rows[1]:
        found.append(f"embedding rows: target {rows[0]:,}, draft {rows[1]:,}")
    if trust_remote_code or not _same_tokenizer_files(target, draft):  # else nothing can differ: skip two loads
        found += _tokenizer_mismatches(load_tokenizer(target, trust_remote_code=trust_remote_code),
                                       load_tokenizer(draft, trust_remote_code=trust_remote_code))
    for what, read in (("config.json", config_token_ids), ("generation config", generation_token_ids)):
        want, have = read(target), read(draft)
        found += [f"{what} {key}: target {want[key]}, draft {have[key]}" for key in want if want[key] != have[key]]
    return found


def finish_draft(target: Path, staging: Path) -> list[str]:
    """Give a transplanted draft (in staging) the target's ids and tokenizer file, then verify the pair.

    Returns notes for the report; raises DraftError when the draft still differs from the target.
    """
    target, notes = Path(target), []
    ids = config_token_ids(target)
    rows = ids.pop("vocab_size")
    write_json(staging / "config.json", patch_config(read_json(staging / "config.json"), rows, ids))
    generation = read_json(staging / "generation_config.json")
    for key, value in generation_token_ids(target).items():
        generation[key] = value
        if value is None:  # an id the target lacks must not linger from the base either
            del generation[key]
    write_json(staging / "generation_config.json", generation)
    spec = target / "tokenizer.json"
    if spec.is_file() and (staging / "tokenizer.json").read_bytes() != spec.read_bytes():
        shutil.copyfile(spec, staging / "tokenizer.json")  # undo the BOS policy: a draft reads the target's ids
        notes.append("kept the target's tokenizer.json unchanged: a draft reads the target's token ids")
    mismatches = check_draft_compatible(target, staging)
    if mismatches:
        raise DraftError(f"the draft does not match its target {target}: {'; '.join(mismatches)}")
    return notes
