"""One pass over the base rows gives each figure with the bits its own pass gave."""

from __future__ import annotations

import pytest
import torch

from tokensurgeon.checkpoint.reader import nonfinite_summary
from tokensurgeon.evaluation.audit import norms_of
from tokensurgeon.methods.base import mean_rows
from tokensurgeon.pipeline.base_rows import ROWS_PER_BLOCK, row_stats
from tokensurgeon.runtime.memory import tensor_sha256


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32 if tensor.element_size() == 4 else torch.int64)  # NaN compares equal as bits


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("holes", [False, True])
def test_row_stats_equal_the_passes_they_replace(dtype, holes):
    generator = torch.Generator().manual_seed(0)
    rows = 2 * ROWS_PER_BLOCK + 777  # a partial last block
    matrix = (torch.randn(rows, 24, generator=generator) * 3).to(dtype)
    if dtype != torch.float64:
        matrix[5, 3], matrix[ROWS_PER_BLOCK + 1, 0] = float("nan"), float("inf")
    defined = [i for i in range(rows) if not holes or i % 7 and not ROWS_PER_BLOCK <= i < 2 * ROWS_PER_BLOCK]
    stats = row_stats(matrix, defined)
    assert stats.nonfinite == nonfinite_summary(matrix)
    expected_mean = mean_rows(matrix, defined)
    assert stats.mean.dtype == expected_mean.dtype and torch.equal(_bits(stats.mean), _bits(expected_mean))
    assert torch.equal(_bits(stats.norms), _bits(norms_of(matrix, list(range(rows)))))
    assert stats.sha256 == tensor_sha256(matrix)


def test_row_stats_of_a_matrix_without_defined_rows():
    stats = row_stats(torch.ones(10, 4), [])
    assert torch.equal(stats.mean, torch.zeros(4)) and stats.nonfinite is None
