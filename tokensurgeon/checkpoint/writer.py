"""Writing checkpoints a tensor at a time: replaced tensors streamed from memory, every other tensor
copied byte for byte from its shard (whole shards copied as files when nothing in them changes), so
peak memory follows the replaced matrices, not the model."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..runtime.memory import tensor_bytes
from ..runtime.progress import Tick
from .formats.layout import DTYPE_SIZES, SAFETENSORS_TO_TORCH, TORCH_TO_SAFETENSORS, TensorInfo
from .formats.pickle import write_pickle_weights
from .formats.safetensors import INDEX_NAME, Entry, cast_range, copy_range, write_file
from .reader import Checkpoint


def _replaced(name: str, tensor: torch.Tensor) -> Entry:
    def write(dst) -> None:
        for block in tensor_bytes(tensor):
            dst.write(block)

    return Entry(name, TORCH_TO_SAFETENSORS[tensor.dtype], tuple(tensor.shape),
                 tensor.numel() * tensor.element_size(), write)


def _copied(info: TensorInfo, dtype: str, sources: contextlib.ExitStack, handles: dict[Path, object]) -> Entry:
    """A stored tensor's bytes, raw when dtype is its own, else cast a block at a time."""
    def write(dst) -> None:
        if info.file not in handles:
            handles[info.file] = sources.enter_context(open(info.file, "rb"))
        if dtype == info.dtype:
            copy_range(handles[info.file], dst, info.start, info.end)
        else:
            cast_range(handles[info.file], dst, info, dtype)

    size = (info.end - info.start) // DTYPE_SIZES[info.dtype] * DTYPE_SIZES[dtype]
    return Entry(info.name, dtype, info.shape, size, write)


def write_shard(target: Path, layout: list[TensorInfo], metadata: dict[str, str],
                replacements: dict[str, torch.Tensor]) -> int:
    """Rewrite one safetensors shard: replaced tensors from memory, the rest copied as raw bytes.

    Returns the number of tensor data bytes written.
    """
    with contextlib.ExitStack() as sources:
        handles: dict[Path, object] = {}
        entries = [_replaced(info.name, replacements[info.name]) if info.name in replacements
                   else _copied(info, info.dtype, sources, handles) for info in layout]
        return write_file(target, entries, metadata)


def write_weights(checkpoint: Checkpoint, out_dir: Path, replacements: dict[str, torch.Tensor],
                  progress: Tick | None = None) -> None:
    """Write the checkpoint's weights into out_dir with some tensors replaced.

    Shards holding no replaced tensor are copied as files; the index's total_size is updated.
    Replacement tensors must already have the dtype they should be stored in.
    """
    if checkpoint.format == "pickle":
        write_pickle_weights(checkpoint.files, checkpoint.path, out_dir, replacements, progress)
        return
    total_bytes = 0
    for done, file in enumerate(checkpoint.files, start=1):
        layout = sorted((t for t in checkpoint.tensors.values() if t.file == file), key=lambda t: t.start)
        if any(t.name in replacements for t in layout):
            total_bytes += write_shard(out_dir / file.name, layout, checkpoint.metadata[file], replacements)
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
    for info, dtype in tensors:
        if dtype != info.dtype and not (dtype in SAFETENSORS_TO_TORCH and info.dtype in SAFETENSORS_TO_TORCH):
            raise CheckpointError(f"{info.file}: cannot cast {info.name!r} from {info.dtype} to {dtype}")
    with contextlib.ExitStack() as sources:
        handles: dict[Path, object] = {}
        return write_file(target, [_copied(info, dtype, sources, handles) for info, dtype in tensors], metadata)


def check_vocab_dims(checkpoint: Checkpoint, out_dir: Path, n_rows: int) -> None:
    """Re-read the written headers: every tensor with a vocabulary-sized dimension in the base must have
    the new row count there (an output whose tensors disagree with its config is never handed over)."""
    from .formats import weight_format
    from .model_config import PER_LAYER_KEY, sections

    old = {checkpoint.vocab_rows} | {section.get(key) for section in sections(checkpoint.config)
                                     for key in ("vocab_size", PER_LAYER_KEY) if isinstance(section.get(key), int)}
    old.discard(n_rows)
    if not old or checkpoint.format != "safetensors":
        return
    written: dict[str, TensorInfo] = {}
    for file in sorted(out_dir.glob("*.safetensors")):
        written.update(weight_format("safetensors").layout(file)[0])
    for name, info in checkpoint.tensors.items():
        if any(dim in old for dim in info.shape):
            want = tuple(n_rows if dim in old else dim for dim in info.shape)
            got = written[name].shape if name in written else None
            if got != want:
                raise CheckpointError(f"{checkpoint.path}: {name} {list(info.shape)} follows the vocabulary but was "
                                      f"written as {list(got) if got else 'nothing'}, not {list(want)}; no output "
                                      "written")
