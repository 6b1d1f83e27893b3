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

import torch

from ..errors import CheckpointError, NoWeightsError
from ..runtime.memory import row_blocks
from ..runtime.progress import first_line
from ..runtime.quiet import quiet_transformers
from .formats import weight_format
from .formats.layout import SAFETENSORS_TO_TORCH, TensorInfo
from .formats.pickle import PICKLE_INDEX, PICKLE_NAMES, PICKLE_SINGLE
from .formats.safetensors import INDEX_NAME, SINGLE_NAME


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


def _embedding_layout(path: Path, trust_remote_code: bool) -> tuple[list[str], list[str], bool, int]:
    """The model class's input and output embedding parameter names (every alias of each), whether they
    are tied, and the embedding width the config implies; asked on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with quiet_transformers():
            model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # config.json drives transformers' code, which fails in many types: a bad config
        raise CheckpointError(f"{path / 'config.json'}: transformers cannot build this architecture "
                              f"({first_line(exc)})") from exc
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
    files, fmt = weight_files(path, allow_pickle=allow_pickle)
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[Path, dict[str, str]] = {}
    for file in files:
        file_tensors, metadata[file] = weight_format(fmt).layout(file)
        tensors.update(file_tensors)
    input_names, output_names, tied, hidden = _embedding_layout(path, trust_remote_code)
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


