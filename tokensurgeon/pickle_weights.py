"""Pickle weights (pytorch_model*.bin), read only with --allow-pickle and always written as safetensors.

torch's weights-only unpickler runs no code: a pickle that names anything but tensor types is refused.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import (ANY_TORCH_TO_SAFETENSORS, COPY_CHUNK, INDEX_NAME, PICKLE_INDEX, Checkpoint, TensorInfo,
                         first_line)
from .errors import CheckpointError


def load_pickle(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin state dict through torch's weights-only unpickler (no code runs), memory-mapped."""
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # the unpickler raises many types; all mean "not a plain tensor state dict"
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(exc), re.IGNORECASE)
        reason = (f"it refers to {found.group(1)}, which is not a tensor type; refused, nothing was run" if found
                  else "it holds more than plain tensors; refused, nothing was run"
                  if "Weights only load failed" in str(exc) else first_line(exc))
        raise CheckpointError(f"{file}: cannot read as a weights-only pickle ({reason})") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"{file}: not a state dict of named tensors")
    return state


def pickle_layout(file: Path) -> dict[str, TensorInfo]:
    layout, offset = {}, 0
    for name, tensor in load_pickle(file).items():
        if tensor.dtype not in ANY_TORCH_TO_SAFETENSORS:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
        size = tensor.numel() * tensor.element_size()
        layout[name] = TensorInfo(name, file, ANY_TORCH_TO_SAFETENSORS[tensor.dtype], tuple(tensor.shape),
                                  offset, offset + size)
        offset += size
    return layout


def safetensors_name(file: Path) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors (pickle inputs are written as safetensors)."""
    if file.suffix != ".bin":
        return file.name
    return "model" + file.stem[len("pytorch_model"):] + ".safetensors" if file.stem.startswith("pytorch_model") \
        else file.stem + ".safetensors"


def write_tensors(target: Path, tensors: list[tuple[str, torch.Tensor]], metadata: dict[str, str]) -> int:
    """Write named tensors as one safetensors file, streaming each tensor's bytes; returns data bytes."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": ANY_TORCH_TO_SAFETENSORS[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as dst:
        dst.write(struct.pack("<Q", len(encoded)) + encoded)
        for _name, tensor in tensors:
            flat = tensor.contiguous().reshape(-1).view(torch.uint8)
            for start in range(0, flat.numel(), COPY_CHUNK):
                dst.write(flat[start:start + COPY_CHUNK].numpy().tobytes())
    return offset


def write_pickle_weights(checkpoint: Checkpoint, out_dir: Path, replacements: dict[str, torch.Tensor],
                          progress: Callable[[int, int], None] | None) -> None:
    """Pickle (--allow-pickle) inputs: each pytorch_model*.bin shard is written as a safetensors shard."""
    total_bytes, weight_map = 0, {}
    for done, file in enumerate(checkpoint.files, start=1):
        state = load_pickle(file)
        name = safetensors_name(file)
        tensors = [(key, replacements.get(key, tensor)) for key, tensor in state.items()]
        total_bytes += write_tensors(out_dir / name, tensors, {"format": "pt"})
        weight_map |= {key: name for key, _ in tensors}
        del state
        if progress:
            progress(done, len(checkpoint.files))
    if len(checkpoint.files) > 1 or (checkpoint.path / PICKLE_INDEX).is_file():
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
