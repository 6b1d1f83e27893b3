"""Zero: new rows are all zeros, the floor every other method should beat."""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import InitContext, InitMethod, InitResult, Provenance


class ZeroMethod(InitMethod):
    name: ClassVar[str] = "zero"
    summary: ClassVar[str] = "all-zero rows (a floor to compare against)"
    needs_donor_embeddings: ClassVar[bool] = False
    upcasts_rows: ClassVar[bool] = True  # reads no row at all: the matrices can stay in their stored dtype

    def initialise(self, ctx: InitContext) -> InitResult:
        n_new, dim = len(ctx.new_ids), ctx.base_embed.shape[1]
        embed = torch.zeros(n_new, dim, dtype=ctx.base_embed.dtype, device=ctx.device)
        head = torch.zeros(n_new, dim, dtype=ctx.base_embed.dtype, device=ctx.device) if ctx.untied else None
        return InitResult(embed, head, [Provenance("zero") for _ in range(n_new)])
