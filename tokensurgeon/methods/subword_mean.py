"""Subword mean (FVT, Gee et al. 2022): a new token is the mean of the base rows of its pieces.

The pieces are the token's decomposition under the base tokenizer (alignment.decompose), so
the new row sits where the base model already represents the same bytes. Tokens the base
vocabulary cannot spell fall back to the mean row.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import InitContext, InitResult, Provenance


def piece_means(matrix: torch.Tensor, pieces: list[tuple[int, ...]], fallback: torch.Tensor) -> torch.Tensor:
    """Mean of ``matrix`` rows per piece list, in one scatter; empty lists get ``fallback``."""
    rows = torch.empty(len(pieces), matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    flat = [piece for group in pieces for piece in group]
    owner = [row for row, group in enumerate(pieces) for _ in group]
    sums = torch.zeros_like(rows).index_add_(
        0, torch.tensor(owner, dtype=torch.long, device=matrix.device),
        matrix[torch.tensor(flat, dtype=torch.long, device=matrix.device)],
    )
    counts = torch.tensor([len(group) for group in pieces], dtype=matrix.dtype, device=matrix.device)
    rows[:] = sums / counts.clamp(min=1).unsqueeze(1)
    rows[counts == 0] = fallback
    return rows


class SubwordMeanMethod:
    name: ClassVar[str] = "subword-mean"
    summary: ClassVar[str] = "mean of the base rows of the token's pieces under the base tokenizer (FVT)"
    needs_donor_embeddings: ClassVar[bool] = False

    def initialise(self, ctx: InitContext) -> InitResult:
        pieces = [ctx.alignment.decompositions.get(i, ()) for i in ctx.new_ids]
        embed = piece_means(ctx.base_embed, pieces, ctx.base_mean(ctx.base_embed))
        head = piece_means(ctx.base_head, pieces, ctx.base_mean(ctx.base_head)) if ctx.untied else None
        provenance = [
            Provenance("subword-mean", list(group), [1.0 / len(group)] * len(group)) if group
            else Provenance("fallback-mean")
            for group in pieces
        ]
        return InitResult(embed, head, provenance)
