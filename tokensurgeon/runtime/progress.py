"""How long-running work reports itself: one progress signature, one phase timer, one error line."""

from __future__ import annotations

import time
from typing import Callable, Protocol


class Progress(Protocol):
    """(phase, done, total[, note]): the CLI draws one bar per phase, and the note (heal: loss and tokens/s) beside
    it; only a phase that says so passes a note."""

    def __call__(self, phase: str, done: int, total: int, note: str = "") -> None: ...


Tick = Callable[[int, int], None]  # (done, total) within one phase, as loops below a job see it


def phase(progress: Progress | None, name: str) -> Tick | None:
    """The (done, total) callback of one named phase, or None when nobody listens."""
    return None if progress is None else (lambda done, total: progress(name, done, total))


class Stopwatch:
    """Seconds per phase, each lap measured from the previous one (rounded to ms for reports)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 3)
        self._last = now
        return self.timings[name]

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
