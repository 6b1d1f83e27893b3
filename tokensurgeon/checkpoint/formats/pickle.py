"""Pickle weights (pytorch_model*.bin), read only with --allow-pickle and always written as safetensors.

torch's weights-only unpickler runs no code: a pickle that names anything but tensor types is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...errors import CheckpointError
from ...runtime.progress import Tick, first_line
from .layout import ANY_TORCH_TO_SAFETENSORS, COPY_CHUNK, TensorInfo
from .safetensors import INDEX_NAME, Entry, write_file

PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")
PICKLE_SINGLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


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


def read_tensor(info: TensorInfo) -> torch.Tensor:
    return load_pickle(info.file)[info.name].clone()  # clone: detach from the memory map


def pickle_layout(file: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Each tensor's name, dtype and shape (offsets as if stored back to back), and the file's metadata."""
    layout, offset = {}, 0
    for name, tensor in load_pickle(file).items():
        if tensor.dtype not in ANY_TORCH_TO_SAFETENSORS:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
        size = tensor.numel() * tensor.element_size()
        layout[name] = TensorInfo(name, file, ANY_TORCH_TO_SAFETENSORS[tensor.dtype], tuple(tensor.shape),
                                  offset, offset + size)
        offset += size
    return layout, {"format": "pt"}


def safetensors_name(file: Path) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors (pickle inputs are written as safetensors)."""
    if file.suffix != ".bin":
        return file.name
    return "model" + file.stem[len("pytorch_model"):] + ".safetensors" if file.stem.startswith("pytorch_model") \
        else file.stem + ".safetensors"


def _tensor_entry(name: str, tensor: torch.Tensor) -> Entry:
    def write(dst) -> None:
        flat = tensor.contiguous().reshape(-1).view(torch.uint8)
        for start in range(0, flat.numel(), COPY_CHUNK):
            dst.write(flat[start:start + COPY_CHUNK].numpy().tobytes())

    return Entry(name, ANY_TORCH_TO_SAFETENSORS[tensor.dtype], tuple(tensor.shape),
                 tensor.numel() * tensor.element_size(), write)


def write_pickle_weights(files: tuple[Path, ...], source_dir: Path, out_dir: Path,
                         replacements: dict[str, torch.Tensor], progress: Tick | None) -> None:
    """Pickle (--allow-pickle) inputs: each pytorch_model*.bin shard is written as a safetensors shard."""
    total_bytes, weight_map = 0, {}
    for done, file in enumerate(files, start=1):
        state = load_pickle(file)
        name = safetensors_name(file)
        tensors = [(key, replacements.get(key, tensor)) for key, tensor in state.items()]
        total_bytes += write_file(out_dir / name, [_tensor_entry(key, tensor) for key, tensor in tensors],
                                  {"format": "pt"})
        weight_map |= {key: name for key, _ in tensors}
        del state
        if progress:
            progress(done, len(files))
    if len(files) > 1 or (source_dir / PICKLE_INDEX).is_file():
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
