"""The training batch size when --batch-size is not given: a fixed one on CPU, and on CUDA as many sequences
as the free memory holds, measured rather than guessed.

Two probe steps (forward and backward of 1 and of ``PROBE`` of the longest samples, nothing updated) give the
peak memory a step takes: what does not grow with the batch (gradients of the trainable tensors, a block of
float32 logits) and what each sequence adds (activations). The batch is the most sequences whose step, plus
Adam's two moments of the trainable tensors (allocated at the first real step), fits in ``HEADROOM`` of what
the device has free, at most MAX_AUTO_BATCH. The probes draw no samples from the training stream, so the data
order is the seed's alone.
"""

from __future__ import annotations

from typing import Callable

import torch

from tokensurgeon.config import CPU_BATCH_SIZE, MAX_AUTO_BATCH

PROBE = 4
HEADROOM = 0.7  # of free memory: the allocator fragments, and evaluation needs its own logits


def fit_batch(per_sequence: float, fixed: float, free: float, cap: int = MAX_AUTO_BATCH) -> int:
    """The most sequences n with fixed + n * per_sequence <= HEADROOM * free, clamped to [1, cap]."""
    room = HEADROOM * free - fixed
    return max(1, min(cap, int(room // per_sequence) if per_sequence > 0 else cap))


def measure_batch(step: Callable[[int], None], trainable_bytes: int, device: torch.device) -> int:
    """The batch size for training on device; step(n) runs one forward and backward of n sequences."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    peaks = []
    for n in (1, PROBE):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - start)
    torch.cuda.empty_cache()
    per_sequence = max(peaks[1] - peaks[0], 0) / (PROBE - 1)
    fixed = max(peaks[0] - per_sequence, 0) + 2 * trainable_bytes  # + Adam's exp_avg and exp_avg_sq
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch(per_sequence, fixed, free)
