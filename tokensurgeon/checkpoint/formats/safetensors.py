"""The safetensors format: headers read and validated without touching data, tensors mapped
read-only, and one header writer for every file tokensurgeon writes."""

from __future__ import annotations

import json
import mmap
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from ...errors import CheckpointError
from ...runtime.memory import mark_mapped
from ...runtime.progress import first_line
from .layout import COPY_CHUNK, DTYPE_SIZES, SAFETENSORS_TO_TORCH, TensorInfo

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def read_header(file: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, 100 * 1024 * 1024):
                raise CheckpointError(f"{file}: corrupt safetensors header or not a safetensors file "
                                      "(invalid header length)")  # never echo a foreign file's bytes
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header ({first_line(exc)})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{file}: corrupt safetensors header (__metadata__ is not a string map)")
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        try:
            start, end = _int_list(entry["data_offsets"], 2)
            dtype, shape = entry["dtype"], tuple(_int_list(entry["shape"]))
            if not isinstance(dtype, str):
                raise TypeError("dtype is not a string")
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: corrupt safetensors header entry {name!r}") from exc
        if any(dim < 0 for dim in shape):
            raise CheckpointError(f"{file}: tensor {name!r} has a negative dimension {list(shape)}")
        count = 1
        for dim in shape:
            count *= dim
        if dtype not in DTYPE_SIZES or end - start != count * DTYPE_SIZES[dtype] or not 0 <= start <= end:
            raise CheckpointError(f"{file}: tensor {name!r} has an inconsistent header entry")
        if base + end > size:
            raise CheckpointError(f"{file}: truncated: tensor {name!r} lies past the end of the file")
        tensors[name] = TensorInfo(name, file, dtype, shape, base + start, base + end)
    return tensors, metadata


def _int_list(value: object, length: int | None = None) -> list[int]:
    """A JSON list of integers (not floats, not booleans), of the given length when one is given."""
    if not isinstance(value, list) or (length is not None and len(value) != length) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ValueError(f"expected a list of {length or 'some'} integers, got {value!r:.60}")
    return value


def map_tensor(info: TensorInfo) -> torch.Tensor:
    """Map a tensor's byte range read-only (shared with the page cache; a write would fault, none is made)."""
    first = info.start - info.start % mmap.ALLOCATIONGRANULARITY
    try:
        with open(info.file, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), info.end - first, access=mmap.ACCESS_READ, offset=first)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({exc})") from exc
    dtype = SAFETENSORS_TO_TORCH[info.dtype]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given buffer is not writable": it is meant not to be
        address = torch.frombuffer(mapped, dtype=torch.uint8, count=1).data_ptr() if len(mapped) else 0
        tensor = torch.frombuffer(mapped, dtype=dtype, count=(info.end - info.start) // DTYPE_SIZES[info.dtype],
                                  offset=info.start - first)
    return mark_mapped(tensor.view(info.shape), mapped, address)


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """A floating tensor mapped read-only; any other through safetensors' own reader."""
    if info.dtype in SAFETENSORS_TO_TORCH:
        return map_tensor(info)
    from safetensors import safe_open

    try:
        with safe_open(info.file, framework="pt") as handle:
            return handle.get_tensor(info.name)
    except Exception as exc:  # safetensors' own checks (overlapping offsets...) beyond read_header's
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({first_line(exc)})") from exc


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors file to write: its header fields and how to stream its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    size: int
    write: Callable[[BinaryIO], None]


def write_file(target: Path, entries: list[Entry], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file: the header (8-byte aligned, as safetensors writes it), then each entry's
    bytes in order. Every safetensors file tokensurgeon writes goes through here.

    Returns the number of tensor data bytes written.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.size]}
        offset += entry.size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as dst:
        dst.write(struct.pack("<Q", len(encoded)) + encoded)
        for entry in entries:
            entry.write(dst)
    return offset


def copy_range(src, dst, start: int, end: int) -> None:
    src.seek(start)
    remaining = end - start
    while remaining:
        block = src.read(min(COPY_CHUNK, remaining))
        if not block:
            raise CheckpointError(f"{src.name}: file ended while copying")
        dst.write(block)
        remaining -= len(block)


def cast_range(src, dst, info: TensorInfo, dtype: str) -> None:
    """Copy one floating tensor's bytes converted to another dtype, a block of elements at a time."""
    source_dtype, target_dtype = SAFETENSORS_TO_TORCH[info.dtype], SAFETENSORS_TO_TORCH[dtype]
    item = DTYPE_SIZES[info.dtype]
    block = bytearray(COPY_CHUNK // max(item, DTYPE_SIZES[dtype]) * item)
    view = memoryview(block)
    src.seek(info.start)
    remaining = info.end - info.start
    while remaining:
        want = min(len(block), remaining)
        got = src.readinto(view[:want])
        if got != want:
            raise CheckpointError(f"{src.name}: file ended while reading {info.name!r}")
        values = torch.frombuffer(block, dtype=source_dtype, count=want // item)
        dst.write(values.to(target_dtype).view(torch.uint8).numpy().data)
        remaining -= want
