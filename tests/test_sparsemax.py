from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensurgeon.sparsemax import sparsemax, topk_sparsemax


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


def test_topk_is_exact_when_the_support_fits():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 300, generator=generator) * 2
    indices, weights, exact = topk_sparsemax(scores, 16)
    full = sparsemax(scores)
    assert exact.all()  # scale 2: supports are small
    rebuilt = torch.zeros_like(scores).scatter_(1, indices, weights)
    assert torch.allclose(rebuilt, full, atol=1e-6)
    flat = torch.zeros(1, 300)  # every entry ties: the support is all 300, more than k
    _, weights, exact = topk_sparsemax(flat, 16)
    assert not exact.any() and torch.allclose(weights.sum(), torch.tensor(1.0))
