"""Objectives: blocked log-probabilities equal full ones; ALM and token KL are at their minimum, with zero
gradient, where student equals teacher."""

from __future__ import annotations

import torch

from tokensurgeon.recovery.objectives import alm_loss, chunk_logprobs, token_kl, token_logprobs


def test_blocked_logprobs_equal_full_softmax():
    torch.manual_seed(0)
    hidden, head = torch.randn(2, 7, 16, requires_grad=True), torch.randn(50, 16)
    targets = torch.randint(50, (2, 7))
    targets[1, -2:] = -100
    full = torch.log_softmax(hidden @ head.T, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    blocked = token_logprobs(hidden, head, targets, block=3)
    assert torch.allclose(blocked, full.masked_fill(targets < 0, 0), atol=1e-5)
    blocked.sum().backward()
    assert hidden.grad[1, -2:].abs().max() == 0


def test_chunk_sums():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0, 0.0]])
    assert chunk_logprobs(logprobs, torch.tensor([[0, 0, 1, -1]]), 2).tolist() == [[-3.0, -3.0]]


def test_alm_minimum_and_zero_gradient_at_equality():
    torch.manual_seed(0)
    teacher = -torch.rand(3, 5) * 8
    mask = torch.ones(3, 5)
    for temperature in (1.0, 100.0):
        student = teacher.clone().requires_grad_(True)
        loss = alm_loss(teacher, student, mask, temperature)
        loss.backward()
        assert abs(loss.item()) < 1e-6 and student.grad.abs().max() < 1e-6
        assert alm_loss(teacher, teacher - 0.5, mask, temperature) > 1e-4
        assert alm_loss(teacher, teacher * 0.5, mask, temperature) > 1e-4


def test_alm_gradient_is_finite_for_near_certain_student_chunks():
    """bf16 logits often round a confident chunk's log-probability to 0 or a hair below; one such chunk made every
    gradient NaN on the GPU (torch.where's unused branch). Each gradient must be finite."""
    teacher, mask = torch.full((1, 6), -0.5), torch.ones(1, 6)
    student = torch.tensor([[0.0, -1e-12, -1e-9, -1e-6, -1e-3, -4.0]], requires_grad=True)
    alm_loss(teacher, student, mask, 100.0).backward()
    assert torch.isfinite(student.grad).all()
    # the teacher is less sure than the student (p = e^-0.5): the loss pushes the student's log-probability down
    # where it is not clamped (above -1e-4 at T = 100 it is: no gradient), up where the student is less sure
    assert student.grad[0, :4].tolist() == [0.0] * 4 and student.grad[0, 4] > 0 and student.grad[0, 5] < 0


def test_log1mexp_gradient_is_the_analytic_one():
    from tokensurgeon.recovery.objectives import _log1mexp

    x = torch.tensor([-1e-5, -0.1, -0.5, -1.0, -5.0, -40.0], dtype=torch.float64, requires_grad=True)
    _log1mexp(x).sum().backward()
    expected = -torch.exp(x.detach()) / (1 - torch.exp(x.detach()))  # d/dx log(1 - e^x)
    assert torch.allclose(x.grad, expected, rtol=1e-9)
    assert torch.allclose(_log1mexp(x.detach()), torch.log(1 - torch.exp(x.detach())), rtol=1e-9)


def test_alm_scale_is_independent_of_a_large_temperature():
    """Scaled by T, the loss (and its gradient) does not fade as T grows: it can be mixed with the LM loss."""
    teacher, mask = -torch.rand(4, 6) * 8, torch.ones(4, 6)
    values = [alm_loss(teacher, teacher * 1.2, mask, t).item() for t in (100.0, 1000.0)]
    assert abs(values[0] - values[1]) < 0.05 * values[1]


def test_token_kl_zero_at_identity():
    torch.manual_seed(0)
    hidden, head = torch.randn(2, 5, 8, requires_grad=True), torch.randn(30, 8)
    mask = torch.ones(2, 5)
    loss = token_kl(hidden.detach(), head, hidden, head, mask, block=4)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and hidden.grad.abs().max() < 1e-5
    assert token_kl(hidden.detach(), head, hidden * 2, head, mask) > 1e-3
