"""Hewitt (2021): sample new rows around the mean with the embeddings' own covariance.

This is transformers' ``resize_token_embeddings(mean_resizing=True)``: N(mean, scale * cov),
with the covariance scaled down (1e-9 there) so new tokens stay close to the mean and do not
steal probability mass; falls back to the mean when the covariance is not positive definite.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import MethodError
from .base import InitContext, InitMethod, InitResult, Provenance


def sample_around_mean(matrix: torch.Tensor, n_new: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n_new`` rows from N(mean, scale * covariance) of ``matrix`` (float64 maths, CPU draws)."""
    rows = matrix.double().cpu()
    mean = rows.mean(dim=0)
    centred = rows - mean
    covariance = centred.T @ centred / max(rows.shape[0] - 1, 1)
    chol, info = torch.linalg.cholesky_ex(scale * covariance)
    if info.item() != 0:
        return mean.expand(n_new, -1).to(matrix)
    noise = torch.randn(n_new, rows.shape[1], generator=generator, dtype=torch.float64)
    return (mean + noise @ chol.T).to(matrix)


class HewittMethod(InitMethod):
    name: ClassVar[str] = "hewitt"
    summary: ClassVar[str] = "samples from N(mean, scale * covariance) of the base rows (transformers' mean_resizing)"
    needs_donor_embeddings: ClassVar[bool] = False

    def __init__(self, scale: float = 1e-9) -> None:
        if not scale > 0:
            raise MethodError(f"hewitt: scale must be positive, got {scale}")
        self.scale = float(scale)

    def initialise(self, ctx: InitContext) -> InitResult:
        n_new = len(ctx.new_ids)
        defined = ctx.defined_base_ids()
        generator = ctx.generator()
        embed = sample_around_mean(ctx.base_embed[defined], n_new, self.scale, generator)
        head = sample_around_mean(ctx.base_head[defined], n_new, self.scale, generator) if ctx.untied else None
        return InitResult(embed, head, [Provenance("hewitt") for _ in range(n_new)])
