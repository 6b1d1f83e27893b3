"""A base checkpoint and a donor opened, aligned and read once: the input every method run shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import Checkpoint, open_checkpoint, read_embeddings
from ..checkpoint.reader import nonfinite_summary
from ..config import TransplantConfig
from ..errors import CheckpointError, NoWeightsError
from ..vocab.pair import TokenizerPair, load_pair
from ..vocab.undertrained import recompute_undertrained, undertrained_rows
from .base_rows import RowStats, row_stats


def open_donor_model(path: Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Checkpoint | None:
    """The donor's checkpoint when it is a full model, None when it is a tokenizer only."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return None
    try:
        return open_checkpoint(path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    except NoWeightsError:  # a config.json beside a tokenizer (no weights at all): a tokenizer-only donor
        return None


def check_finite(summary: tuple[int, int, int] | None, what: str, path: Path, *, allow: bool) -> list[str]:
    """Refuse NaN/inf in an embedding matrix, given its ``nonfinite_summary`` (a warning instead with
    --allow-nonfinite)."""
    if summary is None:
        return []
    values, rows, first = summary
    message = (f"{path}: {what} has {values} non-finite values (NaN/inf) in {rows} rows, "
               f"first bad row id {first}")
    if not allow:
        raise CheckpointError(f"{message}; pass --allow-nonfinite to go on anyway")
    return [f"{message}; kept as given (--allow-nonfinite)"]


def check_base_rows(pair: TokenizerPair, rows: int, path: Path) -> None:
    """Every base id the alignment copies or decomposes into must have an embedding row."""
    used = [i for i in pair.alignment.source if i >= rows]
    used += [i for pieces in pair.alignment.decompositions.values() for i in pieces if i >= rows]
    if used:
        token = pair.base_vocab.tokens[used[0]] if used[0] < pair.base_vocab.size else None
        raise CheckpointError(f"{path}: the base tokenizer uses id {used[0]} ({token!r}) but the base model has "
                              f"only {rows} embedding rows; tokenizer and weights do not belong together")


@dataclass
class Session:
    """A base checkpoint and a donor opened, aligned and read once; every method run (transplant runs one,
    compare several) reuses it, so no checkpoint is re-read per method."""

    config: TransplantConfig
    base: Checkpoint
    donor_model: Checkpoint | None
    pair: TokenizerPair
    base_embed: torch.Tensor
    base_head: torch.Tensor | None
    embed_stats: RowStats  # base_rows.py: finite check, mean row, row norms, hash of base_embed
    head_stats: RowStats | None  # the same of base_head when untied
    defined_base_ids: list[int]  # the base vocabulary's defined ids that have a row (the mean row is over these)
    warnings: list[str]
    donor_matrices_read: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def donor_matrices(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The donor model's embeddings, read and checked on first use only."""
        if self.donor_matrices_read is None:
            matrices = read_embeddings(self.donor_model)
            for matrix, what in zip(matrices, ("donor input embedding", "donor output head")):
                summary = nonfinite_summary(matrix) if matrix is not None else None
                self.warnings += check_finite(summary, what, self.config.donor, allow=self.config.allow_nonfinite)
            self.donor_matrices_read = matrices
        return self.donor_matrices_read


def reads_donor_model(methods: list[str], options: dict) -> bool:
    """Whether any of these methods reads the donor model's embeddings (resolved, options checked, first:
    a tokenizer-only method never opens the donor as a model)."""
    from ..methods import INIT_METHODS, get_init_method

    get_init_method(methods[0], **options)  # unknown names and bad options fail now, before any slow step
    found = [get_init_method(name) if name not in INIT_METHODS else INIT_METHODS[name] for name in methods]
    return any(method.needs_donor_embeddings or method.uses_donor_embeddings for method in found)


def donor_config_rows(path: Path) -> int:
    """A donor model directory's embedding rows as its config.json states them (plain JSON, no model class
    built, no weights read); 0 for a tokenizer directory."""
    from ..checkpoint.model_config import read_json, text_config
    from ..checkpoint.formats.pickle import PICKLE_NAMES
    from ..checkpoint.formats.safetensors import INDEX_NAME, SINGLE_NAME

    path = Path(path)
    if not any((path / name).exists() for name in (SINGLE_NAME, INDEX_NAME) + tuple(PICKLE_NAMES)):
        return 0
    try:
        rows = text_config(read_json(path / "config.json")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return 0
    return rows if isinstance(rows, int) and rows > 0 else 0


def open_session(config: TransplantConfig, lap: Callable[[str], None] = lambda phase: None,
                 methods: list[str] | None = None) -> Session:
    """Open both checkpoints, align the vocabularies and read the base embeddings (nothing else).

    The donor is opened as a model only when one of ``methods`` (default: config.method) reads its
    embeddings; otherwise its tokenizer files and config.json (as plain JSON) are all that is read.
    """
    trust, pickle = config.trust_remote_code, config.allow_pickle
    wants_donor = reads_donor_model(methods or [config.method], config.method_options)
    from ..checkpoint.model_config import read_json

    for side in (config.base, config.donor):  # read when the output is written: corrupt ones fail now
        read_json(Path(side) / "generation_config.json")
        if (Path(side) / "config.json").is_file() and side == config.donor:
            read_json(Path(side) / "config.json")
    base = open_checkpoint(config.base, trust_remote_code=trust, allow_pickle=pickle)
    donor_model = (open_donor_model(config.donor, trust_remote_code=trust, allow_pickle=pickle) if wants_donor
                   else None)
    rows = donor_model.vocab_rows if donor_model is not None else donor_config_rows(config.donor)
    pair = load_pair(config.base, config.donor, n_rows=rows, pad_to_multiple=config.pad_to_multiple,
                     trust_remote_code=trust)
    check_base_rows(pair, base.vocab_rows, config.base)
    lap("align")
    base_embed, base_head = read_embeddings(base)
    if config.recompute_undertrained:
        undertrained = undertrained_rows(base_embed, pair.base_vocab.byte_fallback)
        pair.alignment = recompute_undertrained(pair.alignment, pair.base_vocab, pair.donor_vocab,
                                                pair.base_tokenizer, undertrained)
    defined = [i for i in pair.base_vocab.defined_ids() if i < base.vocab_rows]
    embed_stats = row_stats(base_embed, defined)
    warnings = check_finite(embed_stats.nonfinite, "base input embedding", config.base, allow=config.allow_nonfinite)
    head_stats = row_stats(base_head, defined) if base_head is not None else None
    if head_stats is not None:
        warnings += check_finite(head_stats.nonfinite, "base output head", config.base, allow=config.allow_nonfinite)
    lap("read")
    return Session(config, base, donor_model, pair, base_embed, base_head, embed_stats, head_stats, defined,
                   warnings)
