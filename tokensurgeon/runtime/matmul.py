"""Which precision ranks fastest on this machine: the dtype of the products that only rank candidates (the OMP
solver's full correlations, the nearest-neighbour searches), whose picks float32 then refines.

A CPU flag is not enough to decide: torch multiplies bf16 at ~370 GFLOP/s on a 2-core AMD EPYC with AVX512-BF16,
and at ~150 GFLOP/s on a 2-core Intel Xeon with AVX512-BF16 but no AMX, where float32 reaches ~270 (a 1024 x 640
by 640 x 46,080 product). So on a CPU that claims native bf16 both precisions are timed once, and the choice is
kept on disk per machine and torch version (not per thread count: the ratio is the instruction set's, ~0.5-0.6x
here at one thread and at two), so the same machine always ranks in the same precision and the same inputs give
the same bytes out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from .cache import cache_dir, store

_PROBE_SHAPE = (256, 640, 8192)  # rows x width x columns: one refreshed-OMP correlation block in miniature
_PROBE_REPEATS = 3  # timed products per precision; the fastest counts
_BF16_MARGIN = 1.25  # bf16 is chosen only when it is at least this much faster than float32


def fast_selection_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where it multiplies faster than float32 on ``device``, else float32.

    CUDA: bf16 where the GPU supports it natively. CPU: float32 without a native bf16 instruction set; with one
    (AVX512-BF16 or AMX), whichever ``_timed_choice`` found faster on this machine.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    cpu = torch.cpu
    native = [getattr(cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if device.type != "cpu" or not any(check() for check in native):
        return torch.float32
    return _cpu_choice()


def _machine_key() -> str:
    """The CPU model and flags and torch's version: what the choice depends on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        described = [line for line in cpuinfo.splitlines() if line.startswith(("model name", "flags"))][:2]
    except OSError:
        described = [platform.processor()]
    parts = [*described, torch.__version__]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@functools.cache
def _cpu_choice() -> torch.dtype:
    """The recorded choice for this machine, or a new timing recorded for the next run (a failure to record
    costs a new timing next time, never an error); decided once per process."""
    entry = cache_dir("probes") / _machine_key()
    try:
        return getattr(torch, json.loads((entry / "ranking.json").read_text())["dtype"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass
    choice = _timed_choice()
    store(entry, lambda staging: (staging / "ranking.json").write_text(
        json.dumps({"dtype": str(choice).removeprefix("torch."), "probe": list(_PROBE_SHAPE)}) + "\n"))
    return choice


def _timed_choice() -> torch.dtype:
    """bf16 if its product is at least _BF16_MARGIN times faster than float32's."""
    faster = _product_seconds(torch.float32) >= _BF16_MARGIN * _product_seconds(torch.bfloat16)
    return torch.bfloat16 if faster else torch.float32


def _product_seconds(dtype: torch.dtype) -> float:
    """The fastest of _PROBE_REPEATS products of the probe shape in ``dtype``, after one warm-up."""
    rows, width, columns = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(rows, width, generator=generator).to(dtype)
    right = torch.randn(width, columns, generator=generator).to(dtype)
    out = torch.mm(left, right)  # warm-up: kernels chosen, pages faulted in
    times = []
    for _ in range(_PROBE_REPEATS):
        start = time.perf_counter()
        torch.mm(left, right, out=out)
        times.append(time.perf_counter() - start)
    return min(times)
