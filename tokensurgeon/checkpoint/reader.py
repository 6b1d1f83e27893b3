"""Hugging Face checkpoint directories, opened without reading weights: config, tensor layout and the
embedding tensors' names; then only the embedding matrices are read (mapped, so only the rows a job
touches become resident). writer.py copies every other tensor through byte for byte.

The embedding tensor names come from the model class itself, built on the meta device
(no weights allocated), so any architecture transformers knows works without tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError, NoWeightsError
from ..runtime.memory import row_blocks
from ..runtime.progress import first_line
from .formats import weight_format
from .formats.layout import SAFETENSORS_TO_TORCH, TensorInfo
from .formats.pickle import PICKLE_INDEX, PICKLE_NAMES, PICKLE_SINGLE
from .formats.safetensors import INDEX_NAME, SINGLE_NAME
from .model_config import check_config_shapes, read_json
from .model_layout import embedding_layout


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
    # every other stored tensor with a vocabulary-sized dimension: saved key -> role ("bias": the output
    # head's bias; "per_layer": a 2-D table with a row per token, Gemma3n's embed_tokens_per_layer)
    vocab_extras: tuple[tuple[str, str], ...] = ()

    @property
    def hidden_size(self) -> int:
        return self.tensors[self.input_name].shape[1]

    @property
    def vocab_rows(self) -> int:
        return self.tensors[self.input_name].shape[0]


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


def weight_files(path: Path, *, allow_pickle: bool = False) -> tuple[tuple[Path, ...], str]:
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
    raise NoWeightsError(f"{path}: no model.safetensors or {INDEX_NAME}")


def _resolve(candidates: list[str], tensors: dict[str, TensorInfo], saved: dict[str, str] | None = None) -> str | None:
    """The checkpoint's key for a parameter: the key transformers' conversion mapping loads into it, an
    exact name, else a unique suffix match (prefix drift)."""
    for name in candidates:
        if saved and name in saved:
            return saved[name]
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
    config = read_json(config_file)
    check_config_shapes(config, config_file)
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
    files, fmt = weight_files(path, allow_pickle=allow_pickle)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str]] = {}
    for file in files:
        file_tensors, metadata[file] = weight_format(fmt).layout(file)
        tensors.update(file_tensors)
    layout = embedding_layout(path, config, list(tensors), trust_remote_code)  # the model kind is checked there
    saved: dict[str, str] = {}  # module name -> saved key
    converted: set[str] = set()
    for key in tensors:
        module, by_converter = layout.modules[key]
        saved.setdefault(module, key)
        if by_converter:
            converted.add(module)
    input_name = _resolve(layout.input_names, tensors, saved)
    if input_name is None:
        raise CheckpointError(f"{path}: input embedding tensor ({layout.input_names[0]}) not found in the weights")
    if layout.tied:  # the head is the embedding; another stored alias of it is a copy (tied but saved twice)
        copies = [saved[name] for name in layout.output_names if saved.get(name, input_name) != input_name]
        output_name = copies[0] if copies else None
    else:
        output_name = _resolve([n for n in layout.output_names if n not in layout.input_names], tensors, saved)
    if not layout.tied and output_name is None:
        raise CheckpointError(f"{path}: untied model but output head ({layout.output_names[0]}) not found in the "
                              "weights")
    extras = []
    for module, role in sorted(layout.extras.items()):
        key = _resolve([module], tensors, saved)
        if key is None:  # not stored (a buffer the model computes): nothing to rewrite
            continue
        if role == "unknown" or module in converted:
            why = "it is stored in a converted layout" if role != "unknown" else "tokensurgeon does not know its role"
            raise CheckpointError(f"{path}: {key} {list(tensors[key].shape)} follows the vocabulary but {why}; "
                                  "a transplant would leave it on the old vocabulary, so it is refused")
        extras.append((key, role))
    for module in layout.input_names + layout.output_names:
        if module in converted:
            raise CheckpointError(f"{path}: the embedding tensor {module} is stored in a converted layout; "
                                  "tokensurgeon cannot rewrite it")
    _check_embedding_layout(path, tensors[input_name], tensors[output_name] if output_name else None, layout.hidden)
    return Checkpoint(path, config, files, tensors, metadata, input_name, output_name, layout.tied, fmt,
                      tuple(extras))


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
    """One tensor (and only that one) from its shard: floating safetensors tensors are mapped read-only,
    so only the rows a job touches are read, and ``runtime.memory.release_pages`` can hand them back."""
    return weight_format("pickle" if info.file.suffix == ".bin" else "safetensors").read(info)


def read_embeddings(checkpoint: Checkpoint) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read the input embedding and, when untied, the output head; nothing else."""
    embed = read_tensor(checkpoint.tensors[checkpoint.input_name])
    head = None
    if not checkpoint.tied:
        head = read_tensor(checkpoint.tensors[checkpoint.output_name])
    return embed, head


def nonfinite_summary(matrix: torch.Tensor, rows_per_block: int = 8192, *,
                      each_block: Callable[[int, torch.Tensor], None] | None = None) -> tuple[int, int, int] | None:
    """(non-finite values, rows holding one, first such row id), or None when every value is finite.

    Checked a block of rows at a time, so no matrix-sized mask is ever allocated. A block whose sum is finite holds
    no NaN or inf (any one makes the sum non-finite), and summing is ~7x faster than ``isfinite``: only a block whose
    sum is not finite (or overflows) is checked value by value. ``each_block(first row, block)``, when given, is
    called on every block as it is read: other work over the rows done in the same pass.
    """
    values = rows = 0
    first = None
    for start, block in row_blocks(matrix, rows_per_block):
        if each_block is not None:
            each_block(start, block)
        if bool(torch.isfinite(block.sum(dtype=torch.float32))):
            continue
        bad = ~torch.isfinite(block)
        if not bool(bad.any()):
            continue
        bad_rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten()
        values, rows = values + int(bad.sum()), rows + int(bad_rows.numel())
        first = start + int(bad_rows[0]) if first is None else first
    return None if first is None else (values, rows, first)


