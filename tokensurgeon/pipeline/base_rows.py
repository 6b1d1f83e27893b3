"""What the steps of a transplant need to know about the base matrices' rows, read in one pass.

The finite check (session), the mean row (a method's fallback row, the padding rows), every row's norm (the audit,
the report's histogram) and the sha256 (the report) were four passes over Gemma 3's 262k x 640 embedding, each
faulting the mapped rows in again: ~1 s of a P1 transplant, where one pass takes ~0.55 s. Each figure is computed
as its own pass computed it (the same blocks of rows in the same dtypes), so every figure keeps its bits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..checkpoint.reader import nonfinite_summary

ROWS_PER_BLOCK = 8192  # the block every single pass read (mean_rows' and norms_of's gathers, tensor_sha256)


@dataclass(frozen=True)
class RowStats:
    """One base matrix's rows, summarised.

    Attributes:
        nonfinite: (values, rows, first row id) of NaN/inf, or None (``checkpoint.reader.nonfinite_summary``).
        mean: (d,) the mean of the defined rows, in at least float32 (``methods.base.mean_rows``).
        norms: (rows,) every row's L2 norm in float32 (``evaluation.audit.norms_of``).
        sha256: of the matrix's bytes, row-major (``runtime.memory.tensor_sha256``).
    """

    nonfinite: tuple[int, int, int] | None
    mean: torch.Tensor
    norms: torch.Tensor
    sha256: str


def row_stats(matrix: torch.Tensor, defined: list[int]) -> RowStats:
    """Summarise a (rows, d) matrix in one pass; ``defined``: the ascending ids of the rows the mean is over."""
    digest = hashlib.sha256()
    total = torch.zeros(matrix.shape[1], dtype=torch.promote_types(matrix.dtype, torch.float32))
    norms = torch.zeros(matrix.shape[0])
    ids = torch.tensor(defined, dtype=torch.long)
    edges = torch.searchsorted(ids, torch.arange(0, matrix.shape[0] + ROWS_PER_BLOCK, ROWS_PER_BLOCK)).tolist()

    def summarise(start: int, block: torch.Tensor) -> None:
        digest.update(block.contiguous().view(torch.uint8).numpy().data)
        floats = block.float()
        norms[start:start + len(block)] = torch.linalg.vector_norm(floats, dim=1)
        first, last = edges[start // ROWS_PER_BLOCK], edges[start // ROWS_PER_BLOCK + 1]
        if first == last:
            return
        source = floats if floats.dtype == total.dtype else block  # float64 rows are summed in float64
        rows = source if last - first == len(block) else source[ids[first:last] - start]
        total.add_(rows.to(total.dtype).sum(dim=0))

    nonfinite = nonfinite_summary(matrix.contiguous(), ROWS_PER_BLOCK, each_block=summarise)
    return RowStats(nonfinite, total / max(len(defined), 1), norms, digest.hexdigest())
