"""Keeping resident memory to the rows in use: mapped tensors hand their pages back, rows are read in
blocks and in order, and freed heap pages go back to the system.

A tensor mapped from a file (``checkpoint.formats.safetensors``) carries its mapping as an attribute
(``mark_mapped``), so ``release_pages`` needs no registry: any other tensor is left alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
from typing import Iterator

import torch

_MAPPING_ATTR = "_tokensurgeon_mapping"  # (address, length, mmap) of the file mapping a tensor lies in


def mark_mapped(tensor: torch.Tensor, mapped: mmap.mmap, address: int) -> torch.Tensor:
    """Record on ``tensor`` the read-only file mapping its data lies in, for ``release_pages``."""
    setattr(tensor, _MAPPING_ATTR, (address, len(mapped), mapped))
    return tensor


def release_pages(tensor: object) -> None:
    """Drop the pages of a file-mapped tensor from this process's resident memory.

    A pass over a whole matrix (hash, finite check, mean) would otherwise leave all of it resident,
    so peak memory would follow the file rather than the rows in use. The pages stay in the page cache
    and fault back in on the next read. A no-op for any other tensor.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.numel() or not hasattr(mmap, "MADV_DONTNEED"):
        return  # (no madvise on Windows: the pages then stay until the kernel reclaims them)
    found = getattr(tensor, _MAPPING_ATTR, None)
    if found is None:
        return
    address, length, mapped = found
    start = tensor.data_ptr()
    if address <= start < address + length and not mapped.closed:
        offset = (start - address) - (start - address) % mmap.PAGESIZE
        end = min(start - address + tensor.numel() * tensor.element_size(), length)
        mapped.madvise(mmap.MADV_DONTNEED, offset, end - offset)


def trim_heap() -> None:
    """Hand freed heap pages back to the system (glibc keeps them otherwise); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by the process instead
        pass


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


def tensor_bytes(tensor: torch.Tensor, rows_per_chunk: int = 8192) -> Iterator[memoryview]:
    """A 2-D tensor's raw bytes a block of rows at a time (no full copy; anything with row slices and
    ``contiguous()``, the pipeline's AssembledMatrix too)."""
    for _, block in row_blocks(tensor.contiguous(), rows_per_chunk):
        yield block.contiguous().view(torch.uint8).numpy().data


def tensor_sha256(tensor: "torch.Tensor", rows_per_block: int = 8192) -> str:
    """sha256 of a matrix's bytes (row-major), read a block of rows at a time: no full copy."""
    digest = hashlib.sha256()
    for block in tensor_bytes(tensor, rows_per_block):
        digest.update(block)
    return digest.hexdigest()
