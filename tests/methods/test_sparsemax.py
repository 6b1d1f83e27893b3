from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensurgeon.methods.base import weighted_rows
from tokensurgeon.methods.focus import sparse_mix
from tokensurgeon.methods._shared.sparsemax import sparsemax


def test_known_values():
    # Worked by hand: sorted 1.0, 0.8, 0.1 -> support 2, tau = (1.8 - 1) / 2 = 0.4
    assert torch.allclose(sparsemax(torch.tensor([0.8, 0.1, 1.0])), torch.tensor([0.4, 0.0, 0.6]))
    assert torch.equal(sparsemax(torch.tensor([0.1, 2.1, 0.2])), torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(sparsemax(torch.zeros(4)), torch.full((4,), 0.25))  # ties: uniform, like softmax


def test_along_a_dimension_and_in_batches():
    scores = torch.tensor([[0.8, 0.1, 1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(sparsemax(scores.T, dim=0), sparsemax(scores).T)
    assert torch.allclose(sparsemax(scores)[1], torch.full((3,), 1 / 3))


def simplex_projection(z: torch.Tensor) -> torch.Tensor:
    """Reference: the projection onto the simplex by bisection on the threshold (no sorting)."""
    low, high = z.min() - 1, z.max()
    for _ in range(200):
        tau = (low + high) / 2
        if (z - tau).clamp(min=0).sum() > 1:
            low = tau
        else:
            high = tau
    return (z - (low + high) / 2).clamp(min=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=1, max_size=40))
def test_matches_the_reference_projection(values):
    z = torch.tensor(values, dtype=torch.float64)
    p = sparsemax(z)
    assert torch.all(p >= 0)
    assert abs(p.sum().item() - 1) < 1e-9
    assert torch.allclose(p, simplex_projection(z), atol=1e-7)
    assert torch.allclose(sparsemax(z + 5.0), p, atol=1e-9)  # shift-invariant, like softmax


def test_is_sparse_where_softmax_is_not():
    z = torch.tensor([2.0, 1.9, 0.5, 0.1, -1.0])
    p = sparsemax(z)
    assert (p == 0).sum() == 3 and torch.all(torch.softmax(z, 0) > 0)


def test_focus_mix_equals_full_sparsemax_when_the_support_fits_in_the_candidates():
    generator = torch.Generator().manual_seed(0)
    unit = lambda m: m / m.norm(dim=1, keepdim=True)  # noqa: E731
    targets, anchors = unit(torch.randn(40, 24, generator=generator)), unit(torch.randn(500, 24, generator=generator))
    mixes = sparse_mix(targets, anchors, 16, torch.device("cpu"), temperature=0.2)
    full = sparsemax(targets @ anchors.T / 0.2)
    for row, (positions, weights) in enumerate(mixes):
        assert 0 < len(positions) < 16 and positions == sorted(positions)
        assert positions == full[row].nonzero().flatten().tolist()
        assert torch.allclose(torch.tensor(weights), full[row, positions], atol=1e-5)
    matrix = torch.randn(500, 7, generator=generator).bfloat16()
    rows = weighted_rows(matrix, [m[0] for m in mixes] + [[]], [m[1] for m in mixes] + [[]], block=16)
    assert torch.allclose(rows[:-1], full @ matrix.float(), atol=1e-5) and not rows[-1].any()
    repeated = weighted_rows(matrix, [[3, 9, 3]], [[0.25, 0.5, 0.25]])  # tokenadapt: a piece may also be a neighbour
    assert torch.allclose(repeated[0], 0.5 * (matrix[3].float() + matrix[9].float()), atol=1e-6)
