"""Time and peak memory of one step, for compare's per-method columns.

Linux cannot reset a process's RSS high-water mark (VmHWM), and torch/tracemalloc see only their
own allocations, so the peak is sampled: a thread reads the resident set size (/proc/self/statm)
every few milliseconds while the step runs. ``peak_rss_increase`` is the highest RSS seen minus the
RSS when the step began: what the step added on top of what was already resident (the session's
matrices). A spike shorter than the interval can be missed. On CUDA the allocator's own peak is exact.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

_STATM = "/proc/self/statm"


def rss_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not available."""
    try:
        with open(_STATM) as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class StepUsage:
    seconds: float = 0.0
    peak_rss: int | None = None
    peak_rss_increase: int | None = None
    peak_cuda: int | None = None


class measure_step:
    """Context manager: ``with measure_step(device) as usage: ...`` fills usage when the block ends."""

    def __init__(self, device: torch.device | None = None, interval: float = 0.005) -> None:
        self.usage, self.interval, self.device = StepUsage(), interval, device
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_bytes() or 0)

    def __enter__(self) -> StepUsage:
        self._start_rss = rss_bytes()
        self._peak = self._start_rss or 0
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._clock = time.perf_counter()
        return self.usage

    def __exit__(self, *exc) -> None:
        self.usage.seconds = time.perf_counter() - self._clock
        self._stop.set()
        self._thread.join()
        if self._start_rss is not None:
            self._peak = max(self._peak, rss_bytes() or 0)
            self.usage.peak_rss, self.usage.peak_rss_increase = self._peak, self._peak - self._start_rss
        if self.device is not None and self.device.type == "cuda":
            self.usage.peak_cuda = torch.cuda.max_memory_allocated(self.device)
