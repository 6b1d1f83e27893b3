"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection of scores onto the simplex.

Unlike softmax it gives exact zeros, so FOCUS mixes a handful of anchors instead of smearing a
new token over the whole shared vocabulary.
"""

from __future__ import annotations

import torch


def sparsemax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Project ``scores`` onto the probability simplex along ``dim``.

    Weights are ``max(z - tau, 0)`` with the threshold ``tau`` chosen so they sum to 1.

    >>> sparsemax(torch.tensor([0.1, 2.1, 0.2]))
    tensor([0., 1., 0.])
    """
    scores = scores.transpose(dim, -1)
    ordered, _ = scores.sort(dim=-1, descending=True)
    cumulative = ordered.cumsum(dim=-1) - 1
    ranks = torch.arange(1, scores.shape[-1] + 1, dtype=scores.dtype, device=scores.device)
    support = (ranks * ordered > cumulative).sum(dim=-1, keepdim=True)  # k(z): entries above the threshold
    tau = cumulative.gather(-1, support - 1) / support.to(scores.dtype)
    return (scores - tau).clamp(min=0).transpose(dim, -1)
