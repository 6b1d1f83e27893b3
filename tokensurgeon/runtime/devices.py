"""Pick the compute device: CUDA when present, CPU otherwise, and a clear error for a wrong ask."""

from __future__ import annotations

import torch

from ..errors import TokenSurgeonError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Map "auto" | "cpu" | "cuda" | "cuda:N" to a torch.device that exists on this machine."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TokenSurgeonError(f"--device {name} requested but no CUDA device is available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise TokenSurgeonError(f"unknown device {name!r}; use auto, cpu or cuda") from exc
