"""Mean: every new token gets the mean base row, the common baseline for resized vocabularies."""

from __future__ import annotations

from typing import ClassVar

from .base import InitContext, InitMethod, InitResult, Provenance


class MeanMethod(InitMethod):
    name: ClassVar[str] = "mean"
    summary: ClassVar[str] = "the mean of all base rows for every new token"
    needs_donor_embeddings: ClassVar[bool] = False
    upcasts_rows: ClassVar[bool] = True  # reads the matrices through base_mean (or not at all)

    def initialise(self, ctx: InitContext) -> InitResult:
        n_new = len(ctx.new_ids)
        embed = ctx.base_mean(ctx.base_embed).to(ctx.base_embed.dtype).expand(n_new, -1).clone()
        head = ctx.base_mean(ctx.base_head).to(ctx.base_head.dtype).expand(n_new, -1).clone() if ctx.untied else None
        return InitResult(embed, head, [Provenance("mean") for _ in range(n_new)])
