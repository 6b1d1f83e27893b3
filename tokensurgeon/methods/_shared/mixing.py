"""Rows as mixes of base rows chosen in an auxiliary space (focus, tokenadapt, wechsel): the shared
anchors, which rows may be mixed, and the rows assembled with the subword mean for the rest."""

from __future__ import annotations

import torch

from ..base import InitContext, weighted_rows
from .pieces import is_partial_utf8, piece_means


def shared_anchors(ctx: InitContext) -> tuple[list[bytes], list[int]]:
    """Canonical bytes and base ids of the ordinary tokens both vocabularies share."""
    donor_ids = [i for i, kind in enumerate(ctx.alignment.match) if kind in ("exact", "bytes")]
    return [ctx.donor_vocab.canonical[i] for i in donor_ids], [ctx.alignment.source[i] for i in donor_ids]


def mixable(ctx: InitContext, found: torch.Tensor) -> list[int]:
    """Row positions with an auxiliary vector whose bytes are valid UTF-8 on their own."""
    new_ids = ctx.new_ids
    return [p for p, ok in enumerate(found.tolist()) if ok and not is_partial_utf8(ctx.donor_vocab.canonical[new_ids[p]])]


def assemble(ctx: InitContext, matrix: torch.Tensor, mixed: dict[int, tuple[list[int], list[float]]]) -> torch.Tensor:
    """Rows for ``ctx.new_ids``: the mixes given by row position, the subword mean for every other row."""
    rows = torch.empty(len(ctx.new_ids), matrix.shape[1], dtype=torch.float32, device=matrix.device)
    positions = sorted(mixed)
    if positions:
        rows[positions] = weighted_rows(matrix, [mixed[p][0] for p in positions], [mixed[p][1] for p in positions])
    new_ids = ctx.new_ids
    rest = [p for p in range(len(new_ids)) if p not in mixed]
    if rest:
        pieces = [ctx.alignment.decompositions.get(new_ids[p], ()) for p in rest]
        rows[rest] = piece_means(matrix, pieces, ctx.base_mean(matrix)).float()
    return rows
