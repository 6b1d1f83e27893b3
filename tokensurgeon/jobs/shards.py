"""Shards of an exported checkpoint: tensors planned into shards no larger than a size, written by
copying, casting or hard-linking, and checked afterwards from the headers alone."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import TensorInfo
from ..checkpoint.formats.layout import DTYPE_SIZES, SAFETENSORS_TO_TORCH
from ..checkpoint.formats.safetensors import INDEX_NAME, read_header
from ..checkpoint.model_config import vocab_sizes
from ..checkpoint.writer import write_ranges
from ..errors import CheckpointError
from ..runtime.progress import Progress

@dataclass(frozen=True)
class Planned:
    """One output tensor: where its bytes come from and the dtype it is written in."""

    source: TensorInfo
    dtype: str

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def nbytes(self) -> int:
        return (self.source.end - self.source.start) // DTYPE_SIZES[self.source.dtype] * DTYPE_SIZES[self.dtype]

    @property
    def unchanged(self) -> bool:
        return self.dtype == self.source.dtype


@dataclass(frozen=True)
class Shard:
    """One output file: its tensors, and the source file to copy whole when it would come out identical."""

    tensors: tuple[Planned, ...]
    whole: Path | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def planned_dtype(info: TensorInfo, dtype: str | None) -> str:
    """--dtype for floating tensors; integer, bool and fp8 tensors keep theirs."""
    return dtype if dtype and info.dtype in SAFETENSORS_TO_TORCH else info.dtype


def oversized(shards: list[Shard], max_bytes: int) -> list[str]:
    """A warning for each tensor larger than max_bytes: it got a shard of its own, past the limit."""
    return [f"{item.name} is {item.nbytes / 1e6:,.1f} MB, more than --max-shard-size ({max_bytes / 1e6:,.1f} MB): "
            "it got a shard of its own, past the limit (a tensor is never split)"
            for shard in shards for item in shard.tensors if item.nbytes > max_bytes]


def plan_shards(planned: list[Planned], max_bytes: int) -> list[Shard]:
    """Group output tensors into shards.

    A source file all of whose tensors come through unchanged, and which fits, stays one shard
    (copied whole). The other tensors are packed in order the transformers way: a new shard
    starts when the next tensor would pass max_bytes; a tensor larger than that gets its own.
    """
    by_file: dict[Path, list[Planned]] = {}
    for item in planned:
        by_file.setdefault(item.source.file, []).append(item)
    whole: dict[Path, Shard] = {}
    for file, items in by_file.items():
        in_file, _ = read_header(file)
        if (all(item.unchanged for item in items) and {i.name for i in items} == set(in_file)
                and sum(i.nbytes for i in items) <= max_bytes):
            whole[file] = Shard(tuple(sorted(items, key=lambda i: i.source.start)), whole=file)
    shards: list[Shard] = []
    current: list[Planned] = []
    size = 0
    for item in planned:
        file = item.source.file
        if file in whole:
            if whole[file] not in shards:
                shards.append(whole[file])
            continue
        if current and size + item.nbytes > max_bytes:
            shards.append(Shard(tuple(current)))
            current, size = [], 0
        current.append(item)
        size += item.nbytes
    if current:
        shards.append(Shard(tuple(current)))
    return shards


def shard_names(count: int, prefix: str) -> list[str]:
    """transformers' names: prefix.safetensors alone, else prefix-0000i-of-0000n.safetensors."""
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_shards(shards: list[Shard], names: list[str], staging: Path, *, link: bool,
                 progress: Progress | None) -> list[dict[str, Any]]:
    """Write (or copy, or hard-link) each shard; one file record per shard."""
    records = []
    done, total = 0, sum(len(shard.tensors) for shard in shards)
    for shard, name in zip(shards, names):
        target = staging / name
        how = "written"
        if shard.whole is not None:
            how = "copied"
            if link:
                try:
                    os.link(shard.whole, target)
                    how = "linked"
                except OSError:  # another filesystem, or links not allowed: copy instead
                    pass
            if how == "copied":
                shutil.copyfile(shard.whole, target)
        else:
            write_ranges(target, [(item.source, item.dtype) for item in shard.tensors], {"format": "pt"})
        records.append({"name": name, "bytes": target.stat().st_size, "how": how, "tensors": len(shard.tensors)})
        done += len(shard.tensors)
        if progress:
            progress("export", done, total)
    return records


def write_index(shards: list[Shard], names: list[str], staging: Path) -> None:
    """model.safetensors.index.json the way transformers writes it (only when there are several shards)."""
    if len(shards) < 2:
        return
    weight_map = {item.name: name for shard, name in zip(shards, names) for item in shard.tensors}
    parameters = sum(item.nbytes // DTYPE_SIZES[item.dtype] for shard in shards for item in shard.tensors)
    index = {"metadata": {"total_parameters": parameters, "total_size": sum(shard.nbytes for shard in shards)},
             "weight_map": dict(sorted(weight_map.items()))}
    (staging / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def check_written(staging: Path, expected: dict[str, tuple[str, tuple[int, ...]]], files: list[str],
                  config: dict, rows: int) -> int:
    """Reopen what was written from the headers alone: every tensor where, and as, it was meant to be.

    Returns the number of tensors checked; raises CheckpointError on any difference.
    """
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in files:
        tensors, _ = read_header(staging / name)
        for key, info in tensors.items():
            if key in found:
                raise CheckpointError(f"export check: tensor {key!r} written twice")
            found[key] = (info.dtype, info.shape)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(f"export check: missing tensors {missing[:3]}, unexpected {extra[:3]}")
    for key, want in expected.items():
        if found[key] != want:
            raise CheckpointError(f"export check: {key!r} is {found[key]} but {want} was intended")
    index_file = staging / INDEX_NAME
    if index_file.exists():
        index = json.loads(index_file.read_text())
        where = {key: name for name in files for key in read_header(staging / name)[0]}
        if index["weight_map"] != where:
            raise CheckpointError("export check: the index's weight_map does not match the shards")
    for size in vocab_sizes(config):
        if size != rows:
            raise CheckpointError(f"config.json says vocab_size {size} but the input embedding has {rows} rows; "
                                  "fix the source's config.json")
    return len(found)
