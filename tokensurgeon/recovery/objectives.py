"""Losses of recovery: ALM's binarised chunk divergence, the plain LM loss, token-level KL for drafts, and the
distance between hidden states where teacher and student have read the same bytes.

All of them start from hidden states and a head matrix rather than from logits, so that the
vocabulary-sized logits exist for one block of positions at a time: ``block`` positions x vocabulary
float32 (1024 x 262k rows of Gemma3 is 1 GiB). On the student side each block runs under activation
checkpointing, so the backward pass recomputes a block's logits instead of keeping all of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_BLOCK = 1024


def _logits(hidden: torch.Tensor, head: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """float32 logits of a block of positions; Gemma-style final soft-capping when the model has it."""
    logits = (hidden @ head.T).float()
    return logits if not softcap else softcap * torch.tanh(logits / softcap)


def _target_logprobs(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor,
                     softcap: float | None) -> torch.Tensor:
    logits = _logits(hidden, head, softcap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, *,
                   softcap: float | None = None, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """log p(target) at every position of hidden (..., H) -> (...), block positions of logits at a time.

    targets may hold -100 (padding): those positions get log p = 0 and no gradient.
    """
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    safe = flat_targets.clamp(min=0)
    parts = []
    for begin in range(0, len(safe), block):
        args = (flat_hidden[begin:begin + block], head, safe[begin:begin + block], softcap)
        if torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad):
            parts.append(checkpoint(_target_logprobs, *args, use_reentrant=False))
        else:
            parts.append(_target_logprobs(*args))
    logprobs = torch.cat(parts) if parts else flat_hidden.new_zeros(0, dtype=torch.float32)
    return logprobs.masked_fill(flat_targets < 0, 0.0).reshape(targets.shape)


def chunk_logprobs(logprobs: torch.Tensor, chunks: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Sum token log-probabilities (B, L) into chunks (B, n_chunks); chunk index -1 marks tokens of no chunk."""
    out = logprobs.new_zeros(logprobs.shape[0], n_chunks + 1)
    index = torch.where(chunks < 0, n_chunks, chunks)
    return out.scatter_add(1, index, logprobs)[:, :n_chunks]


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012), gradient included.

    Each branch is evaluated only where it is chosen (a harmless -1 elsewhere): torch.where's backward
    multiplies the other branch's gradient by zero, and log1p(-exp(x)) near x = 0 has an infinite one, so
    a single near-certain chunk (student probability above ~0.99999) made every gradient NaN: the H200 runs
    of P2 and P1 trained on NaN (docs/heal.md, Device).
    """
    near = x > -math.log(2)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, -1.0))),
                       torch.log1p(-torch.exp(torch.where(near, -1.0, x))))


def alm_loss(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """ALM's binarised KL between teacher and student chunk likelihoods, scaled by the temperature.

    Each chunk is a Bernoulli event of probability p^(1/T) (arXiv 2503.20083, eq. 4 with f = KL):
    KL(a || b) = a log(a/b) + (1-a) log((1-a)/(1-b)), a = p_teacher^(1/T), b = p_student^(1/T). It is
    zero, with zero gradient, where the student's chunk likelihood equals the teacher's. For large T
    the divergence is (1/T) g(log p_t, log p_s) with g independent of T, so the raw loss and its
    gradient shrink as 1/T (about 100x weaker than the LM loss at the paper's T = 100); multiplying
    by T puts it on the LM loss's scale, so one weight can mix the two. Mean over chunks where mask.
    """
    tiny = -1e-6  # at p^(1/T) = 1, log(1 - b) is infinite; near it the gradient grows as 1/|log b|: bounded
    a_log = (teacher.detach() / temperature).clamp(max=tiny)
    b_log = (student / temperature).clamp(max=tiny)
    divergence = a_log.exp() * (a_log - b_log) + (-torch.expm1(a_log)) * (_log1mexp(a_log) - _log1mexp(b_log))
    return temperature * (divergence * mask).sum() / mask.sum().clamp(min=1)


def lm_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token negative log-likelihood over the scored positions."""
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


def state_loss(teacher_states: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between student and teacher hidden states (N, H), over the teacher's mean squared norm.

    0, with zero gradient, where they are equal; 1 for a student state of zero. Relative, so one weight means the
    same for models whose final norms put their states on different scales.
    """
    if not len(states):
        return states.new_zeros((), dtype=torch.float32)
    target = teacher_states.detach().float()
    scale = target.pow(2).sum(-1).mean().clamp(min=1e-12)
    return (states.float() - target).pow(2).sum(-1).mean() / scale


def _kl_block(teacher_hidden: torch.Tensor, teacher_head: torch.Tensor, teacher_softcap: float | None,
              hidden: torch.Tensor, head: torch.Tensor, softcap: float | None) -> torch.Tensor:
    with torch.no_grad():
        target = F.log_softmax(_logits(teacher_hidden, teacher_head, teacher_softcap), -1)
    student = F.log_softmax(_logits(hidden, head, softcap), -1)
    return F.kl_div(student, target, log_target=True, reduction="none").sum(-1)


def token_kl(teacher_hidden: torch.Tensor, teacher_head: torch.Tensor, hidden: torch.Tensor, head: torch.Tensor,
             mask: torch.Tensor, *, teacher_softcap: float | None = None, softcap: float | None = None,
             block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Mean KL(teacher || student) of next-token distributions, for a shared tokenizer (identity alignment).

    Both sides' logits exist one block of positions at a time; the student's block is recomputed in
    the backward pass.
    """
    if teacher_head.shape[0] != head.shape[0]:
        raise ValueError("token-level KL needs one vocabulary on both sides")
    flat_t, flat_s = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
    flat_mask = mask.reshape(-1).float()
    total = flat_s.new_zeros((), dtype=torch.float32)
    for begin in range(0, len(flat_mask), block):
        end = begin + block
        args = (flat_t[begin:end], teacher_head, teacher_softcap, flat_s[begin:end], head, softcap)
        kl = checkpoint(_kl_block, *args, use_reentrant=False) if torch.is_grad_enabled() else _kl_block(*args)
        total = total + (kl * flat_mask[begin:end]).sum()
    return total / flat_mask.sum().clamp(min=1)
