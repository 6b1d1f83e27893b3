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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..checkpoint import Checkpoint, TensorInfo, open_checkpoint
from ..checkpoint.formats.safetensors import read_header
from ..checkpoint.model_config import config_with_dtype
from ..checkpoint.tokenizer_files import CHAT_TEMPLATE_FILES, TOKENIZER_FILES, copy_side_file, inside_file
from ..config import ExportConfig
from ..errors import CheckpointError, TokenSurgeonError
from ..runtime.outdir import atomic_directory, check_output_path
from ..runtime.progress import Progress, Stopwatch
from .shards import (Planned, Shard, check_written, oversized, plan_shards, planned_dtype, shard_names,
                     write_index, write_shards)

PATCH_MANIFEST = "tokensurgeon_patch.json"
PATCH_FORMAT = "tokensurgeon-embedding-patch"
PATCH_VERSION = 1
PATCH_PREFIX = "embeddings"  # not "model": transformers must never load a patch as if it were a model
SIDE_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES + CHAT_TEMPLATE_FILES
REPORT_FILES = ("report.json", "report.md", "report.html", "provenance.jsonl", "BASE_MODEL_CARD.md")
PATCH_REPORT_FILES = ("report.json", "report.md", "BASE_MODEL_CARD.md")  # README.md: _write_card
CONFIG_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
SAMPLE_BYTES = 4096  # bytes hashed at the start, middle and end of each tensor a patch leaves out


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


def copy_side_files(source: Path, staging: Path, config: dict, names: tuple[str, ...]) -> None:
    """config.json (as given) and whichever tokenizer, generation and template files the source has."""
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in names:  # only files inside the source (no symlink out of it), modes no wider than there
        if name != "config.json":
            copy_side_file(source, name, staging / name)


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
        warnings=oversized(shards, config.max_shard_bytes),
    )


def _write_card(config: ExportConfig, source: Path, staging: Path, mode: str, shards: int, rows: int) -> None:
    """README.md: the source's card (kept as it was) with an Export section."""
    from ..report.card import append_section, invoked_command

    what = {"full": "Re-written", "embeddings-only": "Cut to an embeddings-only patch", "apply": "Rebuilt from a patch"}
    lines = [f"{what[mode]} from `{config.source}`: dtype {config.dtype or 'kept'}, {shards} shard(s), "
             f"vocab_size {rows:,}."]
    fallback = f"tokensurgeon export {config.source} -o {config.out}"
    fallback += f" --dtype {config.dtype}" if config.dtype else ""
    append_section(source, staging, "Export", lines, command=invoked_command(fallback))


def _export_full(config: ExportConfig, checkpoint: Checkpoint, progress: Progress | None) -> ExportResult:
    clock = Stopwatch()
    planned = [Planned(info, planned_dtype(info, config.dtype_code)) for info in _layout(checkpoint)]
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), "model")
    out_config = config_with_dtype(checkpoint.config, CONFIG_DTYPES.get(config.dtype_code))
    clock.lap("plan")
    with atomic_directory(config.out) as staging:
        records = write_shards(shards, names, staging, link=config.link, progress=progress)
        write_index(shards, names, staging)
        copy_side_files(checkpoint.path, staging, out_config, SIDE_FILES + REPORT_FILES)
        clock.lap("write")
        checked = _check_model(staging, planned, names, out_config, checkpoint.input_name)
        _write_card(config, checkpoint.path, staging, "full", len(shards), checkpoint.vocab_rows)
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
    clock = Stopwatch()
    changed = _embedding_names(checkpoint)
    planned = [Planned(checkpoint.tensors[name], planned_dtype(checkpoint.tensors[name], config.dtype_code))
               for name in changed]
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), PATCH_PREFIX)
    out_config = config_with_dtype(checkpoint.config, CONFIG_DTYPES.get(config.dtype_code))
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
        copy_side_files(checkpoint.path, staging, out_config, SIDE_FILES + PATCH_REPORT_FILES)
        (staging / PATCH_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        clock.lap("write")
        expected = {item.name: (item.dtype, item.source.shape) for item in planned}
        checked = check_written(staging, expected, names, out_config, checkpoint.vocab_rows)
        _write_card(config, checkpoint.path, staging, "embeddings-only", len(shards), checkpoint.vocab_rows)
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
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise CheckpointError(f"{path / PATCH_MANIFEST}: names {name!r}, which is not a file name in {path}")
        if not name.endswith(".safetensors") or inside_file(path, name) is None:
            raise CheckpointError(f"{path / PATCH_MANIFEST}: names {name}, which is not a safetensors file "
                                  f"inside {path}")
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
    clock = Stopwatch()
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
            planned.append(Planned(info, planned_dtype(info, config.dtype_code)))
    shards = plan_shards(planned, config.max_shard_bytes)
    names = shard_names(len(shards), "model")
    try:
        patch_config = json.loads((Path(config.source) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config.source}: no readable config.json ({exc})") from exc
    if patch_config.get("model_type") != base.config.get("model_type"):
        raise TokenSurgeonError(f"patch config is {patch_config.get('model_type')!r} but {base.path} is "
                                f"{base.config.get('model_type')!r}")
    out_config = config_with_dtype(patch_config, CONFIG_DTYPES.get(config.dtype_code))
    clock.lap("plan")
    with atomic_directory(config.out) as staging:
        records = write_shards(shards, names, staging, link=config.link, progress=progress)
        write_index(shards, names, staging)
        copy_side_files(Path(config.source), staging, out_config, SIDE_FILES + PATCH_REPORT_FILES)
        clock.lap("write")
        checked = _check_model(staging, planned, names, out_config, base.input_name)
        _write_card(config, Path(config.source), staging, "apply", len(shards), manifest["vocab_size"])
        clock.lap("check")
    return _finish("apply", config, records, shards, checked, manifest["vocab_size"], base.hidden_size,
                   clock.timings, base=config.apply_to)
