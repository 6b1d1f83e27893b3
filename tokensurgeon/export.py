"""Export a checkpoint: another dtype, another shard size, or only its embeddings as a small patch.

Everything streams. A tensor that keeps its dtype is copied as a raw byte range; one that
changes dtype is cast a block at a time; a source shard that would come out byte-identical is
copied (or hard-linked) as a file. Peak memory is one copy block whatever the model's size.

A patch (--embeddings-only) holds the tensors a transplant changes (input embedding, and the
head when stored), the tokenizer and config files, and a manifest that fingerprints every
tensor it leaves out, so `--apply-to` only ever rebuilds a checkpoint on the base it was cut from.
Every export ends with a check of what was written, from the headers alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .checkpoint import (INDEX_NAME, SAFETENSORS_TO_TORCH, Checkpoint, DTYPE_SIZES, TensorInfo,
                         open_checkpoint, read_header, write_ranges)
from .config import ExportConfig
from .errors import CheckpointError, TokenSurgeonError
from .outdir import atomic_directory, check_output_path
from .tokenizer_files import CHAT_TEMPLATE_FILES, TOKENIZER_FILES

Progress = Callable[[str, int, int], None]
PATCH_MANIFEST = "tokensurgeon_patch.json"
PATCH_FORMAT = "tokensurgeon-embedding-patch"
PATCH_VERSION = 1
PATCH_PREFIX = "embeddings"  # not "model": transformers must never load a patch as if it were a model
SIDE_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES + CHAT_TEMPLATE_FILES
REPORT_FILES = ("report.json", "report.md", "provenance.jsonl")
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
SAMPLE_BYTES = 4096  # bytes hashed at the start, middle and end of each tensor a patch leaves out


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


@dataclass
class ExportResult:
    """What an export wrote and where; files list name, bytes, how (written/copied/linked) and tensors."""

    mode: str  # "full", "embeddings-only" or "apply"
    source: str
    out: str
    dtype: str | None
    max_shard_size: int
    files: list[dict[str, Any]]
    shards: int
    tensors: int
    cast: int
    total_size: int  # tensor data bytes
    out_bytes: int  # every file in OUT
    bytes_written: int  # what was not hard-linked
    vocab_size: int
    hidden_size: int
    checked: int
    base: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export(config: ExportConfig, progress: Progress | None = None) -> ExportResult:
    """Run one export (full checkpoint, embeddings-only patch, or patch applied to a base) into config.out."""
    inputs = [config.source] + ([config.apply_to] if config.apply_to is not None else [])
    check_output_path(config.out, inputs, force=config.force)
    if config.apply_to is not None:
        return _apply_patch(config, progress)
    if is_patch(config.source):
        raise TokenSurgeonError(f"{config.source} is an embeddings-only patch, not a checkpoint; "
                                "rebuild a model from it with --apply-to BASE")
    checkpoint = _open(config.source)
    if config.embeddings_only:
        return _export_patch(config, checkpoint, progress)
    return _export_full(config, checkpoint, progress)


def is_patch(path: Path) -> bool:
    return (Path(path) / PATCH_MANIFEST).is_file()


def _open(path: Path) -> Checkpoint:
    checkpoint = open_checkpoint(path)
    if getattr(checkpoint, "format", "safetensors") != "safetensors":
        raise CheckpointError(f"{path}: export streams safetensors checkpoints; this one holds pickle weights "
                              "(run a transplant on it first, which writes safetensors)")
    return checkpoint


def _layout(checkpoint: Checkpoint) -> list[TensorInfo]:
    """Every tensor in file order, then offset order: the order they are written in."""
    order = {file: i for i, file in enumerate(checkpoint.files)}
    return sorted(checkpoint.tensors.values(), key=lambda t: (order[t.file], t.start))


def _embedding_names(checkpoint: Checkpoint) -> list[str]:
    return [checkpoint.input_name] + ([checkpoint.output_name] if checkpoint.output_name else [])


def _target(info: TensorInfo, dtype: str | None) -> str:
    """--dtype for floating tensors; integer, bool and fp8 tensors keep theirs."""
    return dtype if dtype and info.dtype in SAFETENSORS_TO_TORCH else info.dtype


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


def config_with_dtype(config: dict, dtype: str | None) -> dict:
    """config.json with its dtype field (and torch_dtype, nested text_config too) set to --dtype."""
    config = json.loads(json.dumps(config))
    if dtype is None or dtype not in CONFIG_DTYPES:
        return config
    for target in [config] + [config[key] for key in ("text_config",) if isinstance(config.get(key), dict)]:
        if "torch_dtype" in target:
            target["torch_dtype"] = CONFIG_DTYPES[dtype]
        if "dtype" in target or target is config:
            target["dtype"] = CONFIG_DTYPES[dtype]
    return config


def copy_side_files(source: Path, staging: Path, config: dict, names: tuple[str, ...]) -> None:
    """config.json (as given) and whichever tokenizer, generation and template files the source has."""
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in names:
        if name != "config.json" and (source / name).is_file():
            shutil.copyfile(source / name, staging / name)


def config_vocab_sizes(config: dict) -> list[int]:
    """Every vocab_size config.json states (top level and text_config)."""
    sizes = [config.get("vocab_size")] + [config[k].get("vocab_size") for k in ("text_config",)
                                            if isinstance(config.get(k), dict)]
    return [size for size in sizes if size is not None]


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
    for size in config_vocab_sizes(config):
        if size != rows:
            raise CheckpointError(f"config.json says vocab_size {size} but the input embedding has {rows} rows; "
                                  "fix the source's config.json")
    return len(found)


def _finish(mode: str, config: ExportConfig, records: list[dict[str, Any]], shards: list[Shard], checked: int,
            rows: int, hidden: int, timings: dict[str, float], base: Path | None = None) -> ExportResult:
    out = Path(config.out)
    out_bytes = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    linked = sum(record["bytes"] for record in records if record["how"] == "linked")
    return ExportResult(
        mode=mode, source=str(config.source), out=str(out), dtype=config.dtype, max_shard_size=config.max_shard_bytes,
        files=records, shards=len(shards), tensors=sum(len(s.tensors) for s in shards),
        cast=sum(1 for s in shards for t in s.tensors if not t.unchanged),
        total_size=sum(s.nbytes for s in shards), out_bytes=out_bytes, bytes_written=out_bytes - linked,
        vocab_size=rows, hidden_size=hidden, checked=checked, base=str(base) if base else None, timings=timings,
    )


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self.start, 3)
        self.start = now


def _export_full(config: ExportConfig, checkpoint: Checkpoint, progress: Progress | None) -> ExportResult:
    clock = _Clock()
    planned = [Planned(info, _target(info, config.dtype_code)) for info in _layout(checkpoint)]
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), "model")
    out_config = config_with_dtype(checkpoint.config, config.dtype_code)
    clock.lap("plan")
    with atomic_directory(config.out) as staging:
        records = write_shards(shards, names, staging, link=config.link, progress=progress)
        write_index(shards, names, staging)
        copy_side_files(checkpoint.path, staging, out_config, SIDE_FILES + REPORT_FILES)
        clock.lap("write")
        checked = _check_model(staging, planned, names, out_config, checkpoint.input_name)
        clock.lap("check")
    return _finish("full", config, records, shards, checked, checkpoint.vocab_rows, checkpoint.hidden_size,
                   clock.timings)


def _check_model(staging: Path, planned: list[Planned], names: list[str], out_config: dict, input_name: str) -> int:
    """Header check of a full checkpoint, then open it as tokensurgeon (and transformers, on meta) would."""
    expected = {item.name: (item.dtype, item.source.shape) for item in planned}
    rows = expected[input_name][1][0]
    checked = check_written(staging, expected, names, out_config, rows)
    reopened = open_checkpoint(staging)
    if reopened.input_name != input_name:
        raise CheckpointError(f"export check: transformers finds the input embedding at {reopened.input_name}, "
                              f"not {input_name}")
    return checked


# Patches -----------------------------------------------------------------------------------------


def base_fingerprint(checkpoint: Checkpoint, leave_out: list[str]) -> dict[str, Any]:
    """What a patch needs of its base: every other tensor's dtype and shape, and a hash of sampled bytes.

    The sample (start, middle and end of each tensor) tells one fine-tune from another without
    reading the weights; names, shapes and dtypes must match exactly.
    """
    others = sorted((info for info in checkpoint.tensors.values() if info.name not in leave_out),
                    key=lambda info: info.name)
    tensors = {info.name: [info.dtype, list(info.shape)] for info in others}
    layout = hashlib.sha256(json.dumps(tensors, sort_keys=True).encode()).hexdigest()
    sample = hashlib.sha256()
    handles: dict[Path, Any] = {}
    try:
        for info in others:
            handle = handles.get(info.file) or handles.setdefault(info.file, open(info.file, "rb"))
            size = info.end - info.start
            sample.update(info.name.encode() + b"\0")
            for start in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
                handle.seek(info.start + start)
                sample.update(handle.read(min(SAMPLE_BYTES, size - start)))
    finally:
        for handle in handles.values():
            handle.close()
    return {"model_type": checkpoint.config.get("model_type"), "tensors": tensors, "layout_sha256": layout,
            "sample_sha256": sample.hexdigest()}


def _export_patch(config: ExportConfig, checkpoint: Checkpoint, progress: Progress | None) -> ExportResult:
    clock = _Clock()
    changed = _embedding_names(checkpoint)
    planned = [Planned(checkpoint.tensors[name], _target(checkpoint.tensors[name], config.dtype_code))
               for name in changed]
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), PATCH_PREFIX)
    out_config = config_with_dtype(checkpoint.config, config.dtype_code)
    manifest = {
        "format": PATCH_FORMAT, "version": PATCH_VERSION, "tokensurgeon": __version__,
        "source": str(config.source), "input_name": checkpoint.input_name, "output_name": checkpoint.output_name,
        "tied": checkpoint.tied, "hidden_size": checkpoint.hidden_size, "vocab_size": checkpoint.vocab_rows,
        "tensors": {item.name: {"file": name, "dtype": item.dtype, "shape": list(item.source.shape)}
                    for shard, name in zip(shards, names) for item in shard.tensors},
        "base": base_fingerprint(checkpoint, changed),
    }
    clock.lap("plan")
    with atomic_directory(config.out) as staging:
        records = write_shards(shards, names, staging, link=config.link, progress=progress)
        copy_side_files(checkpoint.path, staging, out_config, SIDE_FILES + ("report.json", "report.md"))
        (staging / PATCH_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        clock.lap("write")
        expected = {item.name: (item.dtype, item.source.shape) for item in planned}
        checked = check_written(staging, expected, names, out_config, checkpoint.vocab_rows)
        clock.lap("check")
    return _finish("embeddings-only", config, records, shards, checked, checkpoint.vocab_rows,
                   checkpoint.hidden_size, clock.timings)


def read_patch(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """A patch's manifest and its tensors' layout, checked against each other."""
    path = Path(path)
    if not is_patch(path):
        raise TokenSurgeonError(f"{path} is not an embeddings-only patch (no {PATCH_MANIFEST}); "
                                "cut one with `tokensurgeon export PATCHED --embeddings-only -o PATCH`")
    try:
        manifest = json.loads((path / PATCH_MANIFEST).read_text())
        if manifest.get("format") != PATCH_FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}")
        if manifest.get("version") != PATCH_VERSION:
            raise ValueError(f"version {manifest.get('version')} (this tokensurgeon reads {PATCH_VERSION})")
        files = sorted({entry["file"] for entry in manifest["tensors"].values()})
    except (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path / PATCH_MANIFEST}: not a tokensurgeon patch manifest ({exc})") from exc
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: the manifest names {name}, which is missing")
        tensors |= read_header(path / name)[0]
    for key, entry in manifest["tensors"].items():
        info = tensors.get(key)
        if info is None or (info.dtype, list(info.shape)) != (entry["dtype"], entry["shape"]):
            raise CheckpointError(f"{path}: tensor {key!r} does not match the manifest (damaged patch?)")
    return manifest, tensors


def check_patch_fits(manifest: dict[str, Any], base: Checkpoint) -> None:
    """Refuse a base the patch was not cut from: embedding names, hidden size, every other tensor."""
    where = f"patch for {manifest['source']}"
    if base.input_name != manifest["input_name"]:
        raise TokenSurgeonError(f"{where} replaces {manifest['input_name']} but {base.path}'s input embedding is "
                                f"{base.input_name}")
    if base.output_name != manifest["output_name"]:
        def heads(name: str | None) -> str:
            return f"stores the output head {name}" if name else "stores no separate output head"

        raise TokenSurgeonError(f"{where} does not fit {base.path}: the patch's model {heads(manifest['output_name'])} "
                                f"but {base.path} {heads(base.output_name)}")
    if base.hidden_size != manifest["hidden_size"]:
        raise TokenSurgeonError(f"{where} has hidden size {manifest['hidden_size']} but {base.path} has "
                                f"{base.hidden_size}")
    fingerprint = base_fingerprint(base, _embedding_names(base))
    wanted, have = manifest["base"]["tensors"], fingerprint["tensors"]
    if wanted != have:
        missing = sorted(set(wanted) - set(have))
        extra = sorted(set(have) - set(wanted))
        differ = sorted(key for key in set(wanted) & set(have) if wanted[key] != have[key])
        detail = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                  f"{len(extra)} not in the patch's base (e.g. {extra[0]})" if extra else
                  f"{differ[0]} is {have[differ[0]]} but the patch expects {wanted[differ[0]]}")
        raise TokenSurgeonError(f"{where} does not fit {base.path}: its other tensors differ: {detail}")
    if fingerprint["sample_sha256"] != manifest["base"]["sample_sha256"]:
        raise TokenSurgeonError(f"{where} does not fit {base.path}: same layout but different weights (sampled "
                                "bytes differ); apply it to the checkpoint it was cut from")


def _apply_patch(config: ExportConfig, progress: Progress | None) -> ExportResult:
    clock = _Clock()
    manifest, patch_tensors = read_patch(config.source)
    base = _open(config.apply_to)
    check_patch_fits(manifest, base)
    replaced = set(_embedding_names(base))
    planned = []
    for info in _layout(base):
        if info.name in replaced:  # the patch's tensor, stored like the base's unless --dtype says otherwise
            source = patch_tensors[info.name]
            planned.append(Planned(source, config.dtype_code or info.dtype))
        else:
            planned.append(Planned(info, _target(info, config.dtype_code)))
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), "model")
    try:
        patch_config = json.loads((Path(config.source) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config.source}: no readable config.json ({exc})") from exc
    if patch_config.get("model_type") != base.config.get("model_type"):
        raise TokenSurgeonError(f"patch config is {patch_config.get('model_type')!r} but {base.path} is "
                                f"{base.config.get('model_type')!r}")
    out_config = config_with_dtype(patch_config, config.dtype_code)
    clock.lap("plan")
    with atomic_directory(config.out) as staging:
        records = write_shards(shards, names, staging, link=config.link, progress=progress)
        write_index(shards, names, staging)
        copy_side_files(Path(config.source), staging, out_config, SIDE_FILES + ("report.json", "report.md"))
        clock.lap("write")
        checked = _check_model(staging, planned, names, out_config, base.input_name)
        clock.lap("check")
    return _finish("apply", config, records, shards, checked, manifest["vocab_size"], base.hidden_size,
                   clock.timings, base=config.apply_to)
