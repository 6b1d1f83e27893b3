"""The patched model's token ids: one set of special ids (the donor model's, then the donor tokenizer's
roles where those are null) written identically to config.json, its text_config and
generation_config.json; every other id a base config holds (multimodal placeholders such as
image_token_index) remapped to the donor token with the same content, or refused."""

from __future__ import annotations

from typing import Any

from ..checkpoint import Checkpoint
from ..checkpoint.model_config import (GENERATION_ID_KEYS, UNK_KEY, is_multimodal_id, other_id_keys, read_json,
                                       sections)
from ..errors import CheckpointError
from ..vocab.pair import TokenizerPair

ROLE_OF = {"bos_token_id": "bos", "eos_token_id": "eos", "pad_token_id": "pad", UNK_KEY: "unk"}


def donor_model_ids(path) -> dict[str, Any]:
    """Special ids a donor model directory states (generation_config.json over config.json, text_config
    included), read as plain JSON: no model class is built."""
    config = read_json(path / "config.json")
    source: dict[str, Any] = {}
    for section in sections(config):
        source |= {key: section[key] for key in ROLE_OF if section.get(key) is not None}
    generation = read_json(path / "generation_config.json")
    return source | {key: generation[key] for key in GENERATION_ID_KEYS if generation.get(key) is not None}


def donor_token_ids(pair: TokenizerPair, donor_model: Checkpoint | None, n_rows: int) -> dict[str, Any]:
    """bos/eos/pad/unk ids the patched model uses: the donor model's own, else the donor tokenizer's roles;
    refused when one is not a row of the patched embedding."""
    roles = pair.donor_vocab.roles
    stated = donor_model_ids(pair.donor_path) if (pair.donor_path / "config.json").is_file() else {}
    ids = {key: stated.get(key, roles.get(role)) for key, role in ROLE_OF.items()}
    for key, value in ids.items():
        for one in value if isinstance(value, list) else [value]:
            if one is not None and not (isinstance(one, int) and 0 <= one < n_rows):
                raise CheckpointError(f"{pair.donor_path}: {key}={value} is not a row of the patched "
                                      f"{n_rows}-row embedding")
    return ids


def remapped_other_ids(pair: TokenizerPair, config: dict, where) -> dict[str, Any]:
    """Other id keys of the base config (image_token_index, boi/eoi, vision_start_token_id, ...) mapped to the
    donor token with the same content (specials) or bytes; multimodal placeholders the donor lacks are
    refused (an id left as it is would read an unrelated row), other ids become null."""
    base, donor = pair.base_vocab, pair.donor_vocab
    by_content = {content: i for i, content in donor.specials.items()}
    by_token = {token: i for i, token in enumerate(donor.tokens) if token is not None}
    by_bytes = donor.bytes_to_id()
    out: dict[str, Any] = {}
    for section in sections(config):
        for key in other_id_keys(section):
            old = section[key]
            if not isinstance(old, int) or not 0 <= old < base.size:
                out[key] = None
                continue
            content = base.specials.get(old, base.tokens[old])
            new = by_content.get(content, by_token.get(content))
            if new is None and base.canonical[old] is not None:
                new = by_bytes.get(base.canonical[old])
            if new is None and is_multimodal_id(key):
                raise CheckpointError(f"{where}: config.json {key}={old} is the base token {content!r}, which the "
                                      "donor tokenizer lacks; add it to the donor as a special token first "
                                      "(the model's processor inserts it)")
            out[key] = new
    return out
