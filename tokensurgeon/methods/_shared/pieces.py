"""A new token from its pieces under the base tokenizer: the subword mean every method falls back to."""

from __future__ import annotations

from typing import Sequence

import torch

from ..base import FALLBACK_PATH, Provenance


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


def piece_provenance(pieces: Sequence[int]) -> Provenance:
    """Provenance of a subword-mean row (the mean row when the token has no pieces)."""
    pieces = list(pieces)
    if not pieces:
        return Provenance(FALLBACK_PATH)
    return Provenance("subword-mean", pieces, [1.0 / len(pieces)] * len(pieces))


def is_partial_utf8(raw: bytes | None) -> bool:
    """Whether a token's bytes are not valid UTF-8 on their own (a byte of a longer character)."""
    if raw is None:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
