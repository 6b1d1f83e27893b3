"""Hugging Face checkpoint directories, read and written a tensor at a time.

Only the embedding matrices change in a transplant, so only they are ever materialised:
every other tensor is copied byte for byte from its shard (whole shards are copied as files
when nothing in them changes). Peak memory follows the embedding matrices, not the model.

The embedding tensor names come from the model class itself, built on the meta device
(no weights allocated), so any architecture transformers knows works without tables.
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")
_COPY_CHUNK = 64 * 1024 * 1024
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
TORCH_TO_SAFETENSORS = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
SAFETENSORS_TO_TORCH = {name: dtype for dtype, name in TORCH_TO_SAFETENSORS.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor's bytes lie: file, dtype, shape and absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its config, tensor layout and embedding tensor names."""

    path: Path
    config: dict
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    metadata: dict[Path, dict[str, str]]
    input_name: str
    output_name: str | None  # the head's tensor when it is stored (untied, or tied but saved twice)
    tied: bool

    @property
    def hidden_size(self) -> int:
        return self.tensors[self.input_name].shape[1]

    @property
    def vocab_rows(self) -> int:
        return self.tensors[self.input_name].shape[0]


def read_header(file: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header without reading tensor data."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{file}: truncated safetensors file (no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, 100 * 1024 * 1024):
            raise CheckpointError(f"{file}: corrupt safetensors header (claims {header_len} bytes)")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        try:
            start, end = (int(x) for x in entry["data_offsets"])
            dtype, shape = str(entry["dtype"]), tuple(int(x) for x in entry["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: corrupt safetensors header entry {name!r}") from exc
        count = 1
        for dim in shape:
            count *= dim
        if dtype not in DTYPE_SIZES or end - start != count * DTYPE_SIZES[dtype] or not 0 <= start <= end:
            raise CheckpointError(f"{file}: tensor {name!r} has an inconsistent header entry")
        if base + end > size:
            raise CheckpointError(f"{file}: truncated: tensor {name!r} lies past the end of the file")
        tensors[name] = TensorInfo(name, file, dtype, shape, base + start, base + end)
    return tensors, metadata


def _weight_files(path: Path) -> tuple[Path, ...]:
    index_file = path / INDEX_NAME
    if index_file.exists():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_file}: unreadable index ({exc})") from exc
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{index_file}: names shard {missing[0]} which does not exist")
        return tuple(path / name for name in names)
    if (path / SINGLE_NAME).is_file():
        return (path / SINGLE_NAME,)
    if any((path / name).exists() for name in PICKLE_NAMES):
        raise CheckpointError(f"{path}: only pickle weights (.bin/.pt) found; tokensurgeon reads safetensors "
                              "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise CheckpointError(f"{path}: no model.safetensors or {INDEX_NAME}")


def find_embedding_names(path: Path) -> tuple[list[str], list[str], bool]:
    """Ask the model class for its input and output embedding parameter names, on the meta device.

    Returns (input names, output names, tied); names list every alias of the parameter.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=False)
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else embed
    return names[id(embed)], names[id(head)], head is embed


def _resolve(candidates: list[str], tensors: dict[str, TensorInfo]) -> str | None:
    """The checkpoint's key for a parameter: exact, else a unique suffix match (prefix drift)."""
    for name in candidates:
        if name in tensors:
            return name
    for name in candidates:
        hits = [key for key in tensors if key.endswith("." + name) or name.endswith("." + key)]
        if len(hits) == 1:
            return hits[0]
    return None


def open_checkpoint(path: Path) -> Checkpoint:
    """Open a checkpoint directory: read config and headers, locate the embeddings; no weights read."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face checkpoint directory?)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
    files = _weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str]] = {}
    for file in files:
        file_tensors, metadata[file] = read_header(file)
        tensors.update(file_tensors)
    try:
        input_names, output_names, tied = find_embedding_names(path)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{config_file}: transformers cannot build this architecture ({exc})") from exc
    input_name = _resolve(input_names, tensors)
    if input_name is None:
        raise CheckpointError(f"{path}: input embedding tensor ({input_names[0]}) not found in the weights")
    output_name = _resolve([n for n in output_names if n not in input_names], tensors)
    if not tied and output_name is None:
        raise CheckpointError(f"{path}: untied model but output head ({output_names[0]}) not found in the weights")
    return Checkpoint(path, config, files, tensors, metadata, input_name, output_name, tied)


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Materialise one tensor (and only that one) from its shard."""
    with safe_open(info.file, framework="pt") as handle:
        return handle.get_tensor(info.name)


def read_embeddings(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the input embedding and, when untied, the output head; nothing else."""
    embed = read_tensor(checkpoint.tensors[checkpoint.input_name])
    head = None
    if not checkpoint.tied:
        head = read_tensor(checkpoint.tensors[checkpoint.output_name])
    return embed, head


def _tensor_bytes(tensor: torch.Tensor, rows_per_chunk: int = 8192):
    """Yield a 2-D tensor's raw bytes a block of rows at a time (no full copy)."""
    tensor = tensor.contiguous()
    for start in range(0, tensor.shape[0], rows_per_chunk):
        yield tensor[start:start + rows_per_chunk].view(torch.uint8).numpy().tobytes()


def _copy_range(src, dst, start: int, end: int) -> None:
    src.seek(start)
    remaining = end - start
    while remaining:
        block = src.read(min(_COPY_CHUNK, remaining))
        if not block:
            raise CheckpointError(f"{src.name}: file ended while copying")
        dst.write(block)
        remaining -= len(block)


def write_shard(source: Path, target: Path, layout: list[TensorInfo], metadata: dict[str, str],
                replacements: dict[str, torch.Tensor]) -> int:
    """Rewrite one safetensors shard: replaced tensors from memory, the rest copied as raw bytes.

    Returns the number of tensor data bytes written.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for info in layout:
        if info.name in replacements:
            tensor = replacements[info.name]
            dtype, shape = TORCH_TO_SAFETENSORS[tensor.dtype], tuple(tensor.shape)
            size = tensor.numel() * tensor.element_size()
        else:
            dtype, shape, size = info.dtype, info.shape, info.end - info.start
        header[info.name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.write(struct.pack("<Q", len(encoded)) + encoded)
        for info in layout:
            if info.name in replacements:
                for block in _tensor_bytes(replacements[info.name]):
                    dst.write(block)
            else:
                _copy_range(src, dst, info.start, info.end)
    return offset


def write_weights(checkpoint: Checkpoint, out_dir: Path, replacements: dict[str, torch.Tensor],
                  progress: Callable[[int, int], None] | None = None) -> None:
    """Write the checkpoint's weights into out_dir with some tensors replaced.

    Shards holding no replaced tensor are copied as files; the index's total_size is updated.
    Replacement tensors must already have the dtype they should be stored in.
    """
    total_bytes = 0
    for done, file in enumerate(checkpoint.files, start=1):
        layout = sorted((t for t in checkpoint.tensors.values() if t.file == file), key=lambda t: t.start)
        if any(t.name in replacements for t in layout):
            total_bytes += write_shard(file, out_dir / file.name, layout, checkpoint.metadata[file], replacements)
        else:
            shutil.copyfile(file, out_dir / file.name)
            total_bytes += sum(t.end - t.start for t in layout)
        if progress:
            progress(done, len(checkpoint.files))
    index_file = checkpoint.path / INDEX_NAME
    if index_file.exists():
        index = json.loads(index_file.read_text())
        index.setdefault("metadata", {})["total_size"] = total_bytes
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
