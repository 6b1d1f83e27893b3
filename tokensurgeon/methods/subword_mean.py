"""Subword mean (FVT, Gee et al. 2022): a new token is the mean of the base rows of its pieces.

The pieces are the token's decomposition under the base tokenizer (alignment.decompose), so
the new row sits where the base model already represents the same bytes. Tokens the base
vocabulary cannot spell fall back to the mean row.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import InitContext, InitResult, Provenance


def piece_means(matrix: torch.Tensor, pieces: list[tuple[int, ...]], fallback: torch.Tensor,
                block: int = 4096) -> torch.Tensor:
    """Mean of ``matrix`` rows per piece list, one scatter per block of lists; empty lists get ``fallback``.

    Computed in (at least) float32 whatever the matrix dtype: gathered rows are upcast a block at
    a time, so a bf16 matrix needs no float32 copy and temporaries stay one block. The rows come
    back in the matrix's dtype (a bf16 matrix gets bf16 rows, rounded once from float32).
    """
    dtype = torch.promote_types(matrix.dtype, torch.float32)
    rows = torch.empty(len(pieces), matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    for start in range(0, len(pieces), block):
        groups = pieces[start:start + block]
        flat = [piece for group in groups for piece in group]
        owner = [row for row, group in enumerate(groups) for _ in group]
        sums = torch.zeros(len(groups), matrix.shape[1], dtype=dtype, device=matrix.device).index_add_(
            0, torch.tensor(owner, dtype=torch.long, device=matrix.device),
            matrix[torch.tensor(flat, dtype=torch.long, device=matrix.device)].to(dtype),
        )
        counts = torch.tensor([len(group) for group in groups], dtype=dtype, device=matrix.device)
        chunk = rows[start:start + len(groups)]
        chunk[:] = sums / counts.clamp(min=1).unsqueeze(1)
        chunk[counts == 0] = fallback.to(matrix.dtype)
    return rows


class SubwordMeanMethod:
    name: ClassVar[str] = "subword-mean"
    summary: ClassVar[str] = "mean of the base rows of the token's pieces under the base tokenizer (FVT)"
    needs_donor_embeddings: ClassVar[bool] = False
    upcasts_rows: ClassVar[bool] = True  # piece_means and base_mean upcast: bf16 matrices need no float32 copy

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
