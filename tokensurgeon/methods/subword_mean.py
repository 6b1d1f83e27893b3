"""Subword mean (FVT, Gee et al. 2022): a new token is the mean of the base rows of its pieces.

The pieces are the token's decomposition under the base tokenizer (alignment.decompose), so
the new row sits where the base model already represents the same bytes. Tokens the base
vocabulary cannot spell fall back to the mean row.
"""

from __future__ import annotations

from typing import ClassVar

from ._shared.pieces import piece_means, piece_provenance
from .base import InitContext, InitMethod, InitResult


class SubwordMeanMethod(InitMethod):
    name: ClassVar[str] = "subword-mean"
    summary: ClassVar[str] = "mean of the base rows of the token's pieces under the base tokenizer (FVT)"
    needs_donor_embeddings: ClassVar[bool] = False
    upcasts_rows: ClassVar[bool] = True  # piece_means and base_mean upcast: bf16 matrices need no float32 copy

    def initialise(self, ctx: InitContext) -> InitResult:
        pieces = [ctx.alignment.decompositions.get(i, ()) for i in ctx.new_ids]
        embed = piece_means(ctx.base_embed, pieces, ctx.base_mean(ctx.base_embed))
        head = piece_means(ctx.base_head, pieces, ctx.base_mean(ctx.base_head)) if ctx.untied else None
        provenance = [piece_provenance(group) for group in pieces]
        return InitResult(embed, head, provenance)
