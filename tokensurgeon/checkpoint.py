"""Hugging Face checkpoint directories, read and written a tensor at a time.

Only the embedding matrices change in a transplant, so only they are ever materialised:
every other tensor is copied byte for byte from its shard (whole shards are copied as files
when nothing in them changes). Peak memory follows the embedding matrices, not the model.

The embedding tensor names come from the model class itself, built on the meta device
(no weights allocated), so any architecture transformers knows works without tables.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import struct
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")
PICKLE_SINGLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
COPY_CHUNK = 64 * 1024 * 1024
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
TORCH_TO_SAFETENSORS = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
SAFETENSORS_TO_TORCH = {name: dtype for dtype, name in TORCH_TO_SAFETENSORS.items()}
ANY_TORCH_TO_SAFETENSORS = TORCH_TO_SAFETENSORS | {
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


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
    format: str = "safetensors"  # or "pickle": pytorch_model*.bin read with --allow-pickle (weights only)

    @property
    def hidden_size(self) -> int:
        return self.tensors[self.input_name].shape[1]

    @property
    def vocab_rows(self) -> int:
        return self.tensors[self.input_name].shape[0]


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
                raise CheckpointError(f"{file}: corrupt safetensors header (claims {header_len} bytes)")
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


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _index_shards(path: Path, index_file: Path) -> tuple[Path, ...]:
    """The shard files an index names; each must be a plain file name inside the directory."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError,
            AttributeError) as exc:
        raise CheckpointError(f"{index_file}: unreadable index ({first_line(exc)})") from exc
    for name in names:
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{index_file}: shard name {name!r} is not a file name in {path}")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{index_file}: names shard {missing[0]} which does not exist")
    return tuple(path / name for name in names)


def _int_list(value: object, length: int | None = None) -> list[int]:
    """A JSON list of integers (not floats, not booleans), of the given length when one is given."""
    if not isinstance(value, list) or (length is not None and len(value) != length) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value):
        raise ValueError(f"expected a list of {length or 'some'} integers, got {value!r:.60}")
    return value


def _weight_files(path: Path, *, allow_pickle: bool = False) -> tuple[tuple[Path, ...], str]:
    """The weight files and their format ("safetensors" or "pickle")."""
    index_file = path / INDEX_NAME
    if index_file.exists():
        return _index_shards(path, index_file), "safetensors"
    if (path / SINGLE_NAME).is_file():
        return (path / SINGLE_NAME,), "safetensors"
    if allow_pickle and (path / PICKLE_INDEX).is_file():
        return _index_shards(path, path / PICKLE_INDEX), "pickle"
    if allow_pickle and (path / PICKLE_SINGLE).is_file():
        return (path / PICKLE_SINGLE,), "pickle"
    if allow_pickle and (path / "model.pt").exists():
        raise CheckpointError(f"{path}: only model.pt found; --allow-pickle reads pytorch_model*.bin files, "
                              "convert model.pt to safetensors first")
    if any((path / name).exists() for name in PICKLE_NAMES):
        raise CheckpointError(f"{path}: only pickle weights (.bin/.pt) found; tokensurgeon reads safetensors. "
                              "Convert them (model.save_pretrained(dir) in transformers writes safetensors), "
                              "or pass --allow-pickle to read pytorch_model*.bin with torch's weights-only loader")
    raise CheckpointError(f"{path}: no model.safetensors or {INDEX_NAME}")


def find_embedding_names(path: Path, *, trust_remote_code: bool = False) -> tuple[list[str], list[str], bool]:
    """Ask the model class for its input and output embedding parameter names, on the meta device.

    Returns (input names, output names, tied); names list every alias of the parameter.
    """
    input_names, output_names, tied, _hidden = _embedding_layout(path, trust_remote_code)
    return input_names, output_names, tied


def _embedding_layout(path: Path, trust_remote_code: bool) -> tuple[list[str], list[str], bool, int]:
    """find_embedding_names plus the embedding width the config implies."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .quiet import quiet_transformers

    with quiet_transformers():
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else embed
    return names[id(embed)], names[id(head)], head is embed, int(embed.shape[-1])


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


def read_config(path: Path, *, trust_remote_code: bool = False) -> dict:
    """config.json of a checkpoint directory, checked: readable, a JSON object, no custom code needed
    unless trust_remote_code."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory" + (" (it does not exist)" if not path.exists() else ""))
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face checkpoint directory?)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{config_file}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a JSON object")
    if config.get("auto_map") and not trust_remote_code and not _natively_supported(config):
        raise CheckpointError(f"{config_file}: this architecture ({config.get('model_type')!r}) is defined by "
                              "Python code shipped with the checkpoint (auto_map); tokensurgeon runs no such code "
                              "unless you pass --trust-remote-code (read that code first)")
    return config


def _natively_supported(config: dict) -> bool:
    """Whether transformers has its own class for this model_type (auto_map is then ignored, no code runs)."""
    from transformers import CONFIG_MAPPING

    return isinstance(config.get("model_type"), str) and config["model_type"] in CONFIG_MAPPING


def open_checkpoint(path: Path, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Checkpoint:
    """Open a checkpoint directory: read config and headers, locate the embeddings; no weights read.

    Args:
        trust_remote_code: let transformers run model code shipped with the checkpoint (auto_map).
        allow_pickle: read pytorch_model*.bin weights (torch's weights-only unpickler) when there are
            no safetensors; they are written out as safetensors.
    """
    path = Path(path)
    config = read_config(path, trust_remote_code=trust_remote_code)
    config_file = path / "config.json"
    files, fmt = _weight_files(path, allow_pickle=allow_pickle)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str]] = {}
    for file in files:
        if fmt == "pickle":
            from .pickle_weights import pickle_layout  # only with --allow-pickle

            file_tensors, metadata[file] = pickle_layout(file), {"format": "pt"}
        else:
            file_tensors, metadata[file] = read_header(file)
        tensors.update(file_tensors)
    try:
        input_names, output_names, tied, hidden = _embedding_layout(path, trust_remote_code)
    except Exception as exc:  # config.json drives transformers' code: any failure there is a bad config
        raise CheckpointError(f"{config_file}: transformers cannot build this architecture "
                              f"({first_line(exc)})") from exc
    input_name = _resolve(input_names, tensors)
    if input_name is None:
        raise CheckpointError(f"{path}: input embedding tensor ({input_names[0]}) not found in the weights")
    output_name = _resolve([n for n in output_names if n not in input_names], tensors)
    if not tied and output_name is None:
        raise CheckpointError(f"{path}: untied model but output head ({output_names[0]}) not found in the weights")
    _check_embedding_layout(path, tensors[input_name], tensors[output_name] if output_name else None, hidden)
    return Checkpoint(path, config, files, tensors, metadata, input_name, output_name, tied, fmt)


def _check_embedding_layout(path: Path, embed: TensorInfo, head: TensorInfo | None, hidden: int) -> None:
    """Shapes and dtypes a transplant can work with, checked from the headers before any data is read."""
    for info, role in ((embed, "input embedding"), (head, "output head")):
        if info is None:
            continue
        if len(info.shape) != 2 or 0 in info.shape:
            raise CheckpointError(f"{path}: {role} {info.name} has shape {list(info.shape)}; "
                                  "expected a 2-D (rows, hidden size) matrix")
        if info.dtype not in SAFETENSORS_TO_TORCH:
            raise CheckpointError(f"{path}: {role} {info.name} has dtype {info.dtype}; tokensurgeon handles "
                                  "F32, F16, BF16 and F64 embeddings (not integer or quantised ones)")
    if embed.shape[1] != hidden:
        raise CheckpointError(f"{path}: input embedding {embed.name} is {embed.shape[1]} wide but config.json "
                              f"implies a hidden size of {hidden}")
    if head is not None and head.shape != embed.shape:
        raise CheckpointError(f"{path}: output head {head.name} has shape {list(head.shape)} but the input "
                              f"embedding has {list(embed.shape)}; they must match")


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """One tensor (and only that one) from its shard: floating tensors are mapped read-only, so only
    the rows a job touches are read, and ``release_pages`` can hand them back."""
    if info.file.suffix == ".bin":
        from .pickle_weights import load_pickle

        return load_pickle(info.file)[info.name].clone()  # clone: detach from the memory map
    if info.dtype in SAFETENSORS_TO_TORCH:
        return _map_tensor(info)
    try:
        with safe_open(info.file, framework="pt") as handle:
            return handle.get_tensor(info.name)
    except Exception as exc:  # safetensors' own checks (overlapping offsets...) beyond read_header's
        if isinstance(exc, (KeyboardInterrupt, MemoryError)):
            raise
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({first_line(exc)})") from exc


_MAPPINGS: list[tuple[int, int, weakref.ref]] = []  # (address, length, mapping) of every live _map_tensor map


def _map_tensor(info: TensorInfo) -> torch.Tensor:
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
    _MAPPINGS[:] = [entry for entry in _MAPPINGS if entry[2]() is not None] + [(address, len(mapped),
                                                                               weakref.ref(mapped))]
    return tensor.view(info.shape)


def release_pages(tensor: object) -> None:
    """Drop the pages of a tensor mapped by read_tensor from this process's resident memory.

    A pass over a whole matrix (hash, finite check, mean) would otherwise leave all of it resident,
    so peak memory would follow the file rather than the rows in use. The pages stay in the page cache
    and fault back in on the next read. A no-op for any other tensor.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.numel() or not hasattr(mmap, "MADV_DONTNEED"):
        return  # (no madvise on Windows: the pages then stay until the kernel reclaims them)
    start = tensor.data_ptr()
    for address, length, ref in _MAPPINGS:
        mapped = ref()
        if mapped is not None and address <= start < address + length:
            offset = (start - address) - (start - address) % mmap.PAGESIZE
            end = min(start - address + tensor.numel() * tensor.element_size(), length)
            mapped.madvise(mmap.MADV_DONTNEED, offset, end - offset)
            return


def row_blocks(matrix: "torch.Tensor", rows_per_block: int = 8192) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, block) over a matrix, releasing a mapped matrix's pages behind each block."""
    for start in range(0, matrix.shape[0], rows_per_block):
        yield start, matrix[start:start + rows_per_block]
        release_pages(matrix)


def gathered(matrix: torch.Tensor, ids: "torch.Tensor | list[int]",
             rows_per_block: int = 8192) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions in ids, matrix[ids[positions]]) for the ids inside one block of the matrix's rows at a time.

    Scattered row reads from a mapped matrix fault in whole neighbourhoods of pages, so a plain
    ``matrix[ids]`` leaves most of the file resident; read in row order, one block at a time, a mapped
    matrix is read once and only one block of it is ever resident.
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=matrix.device)
    order = ids.argsort(stable=True)
    edges = torch.searchsorted(ids[order], torch.arange(0, matrix.shape[0] + rows_per_block, rows_per_block,
                                                         device=matrix.device)).tolist()
    for first, last in zip(edges, edges[1:]):
        if first < last:
            positions = order[first:last]
            yield positions, matrix[ids[positions]]
            release_pages(matrix)


def tensor_sha256(tensor: "torch.Tensor", rows_per_block: int = 8192) -> str:
    """sha256 of a matrix's bytes (row-major), read a block of rows at a time: no full copy.

    Takes anything with row slices and ``contiguous()`` (transplant's AssembledMatrix too)."""
    digest = hashlib.sha256()
    for block in _tensor_bytes(tensor, rows_per_block):
        digest.update(block)
    return digest.hexdigest()


def read_embeddings(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the input embedding and, when untied, the output head; nothing else."""
    embed = read_tensor(checkpoint.tensors[checkpoint.input_name])
    head = None
    if not checkpoint.tied:
        head = read_tensor(checkpoint.tensors[checkpoint.output_name])
    return embed, head


def nonfinite_summary(matrix: torch.Tensor, rows_per_block: int = 8192) -> tuple[int, int, int] | None:
    """(non-finite values, rows holding one, first such row id), or None when every value is finite.

    Checked a block of rows at a time, so no matrix-sized mask is ever allocated.
    """
    values = rows = 0
    first = None
    for start, block in row_blocks(matrix, rows_per_block):
        bad = ~torch.isfinite(block)
        if not bool(bad.any()):
            continue
        bad_rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()
        values, rows = values + int(bad.sum()), rows + int(bad_rows.numel())
        first = start + int(bad_rows[0]) if first is None else first
    return None if first is None else (values, rows, first)


def _tensor_bytes(tensor: torch.Tensor, rows_per_chunk: int = 8192) -> Iterator[memoryview]:
    """A 2-D tensor's raw bytes a block of rows at a time (no full copy; AssembledMatrix too)."""
    for _, block in row_blocks(tensor.contiguous(), rows_per_chunk):
        yield block.contiguous().view(torch.uint8).numpy().data


def _copy_range(src, dst, start: int, end: int) -> None:
    src.seek(start)
    remaining = end - start
    while remaining:
        block = src.read(min(COPY_CHUNK, remaining))
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
    if checkpoint.format == "pickle":
        from .pickle_weights import write_pickle_weights

        write_pickle_weights(checkpoint, out_dir, replacements, progress)
        return
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


def write_ranges(target: Path, tensors: list[tuple[TensorInfo, str]], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file whose tensors come from byte ranges of other files (any number of them).

    Each (info, dtype) keeps its name and shape; when dtype is info.dtype the bytes are copied
    raw, otherwise the floating tensor is cast a block at a time, so memory stays one copy block
    whatever the tensor sizes. Returns the number of tensor data bytes written.
    """
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for info, dtype in tensors:
        if dtype != info.dtype and not (dtype in SAFETENSORS_TO_TORCH and info.dtype in SAFETENSORS_TO_TORCH):
            raise CheckpointError(f"{info.file}: cannot cast {info.name!r} from {info.dtype} to {dtype}")
        size = (info.end - info.start) // DTYPE_SIZES[info.dtype] * DTYPE_SIZES[dtype]
        header[info.name] = {"dtype": dtype, "shape": list(info.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    sources: dict[Path, object] = {}
    try:
        with open(target, "wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)) + encoded)
            for info, dtype in tensors:
                if info.file not in sources:
                    sources[info.file] = open(info.file, "rb")
                if dtype == info.dtype:
                    _copy_range(sources[info.file], dst, info.start, info.end)
                else:
                    _cast_range(sources[info.file], dst, info, dtype)
    finally:
        for handle in sources.values():
            handle.close()
    return offset


def _cast_range(src, dst, info: TensorInfo, dtype: str) -> None:
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
