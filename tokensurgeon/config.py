"""Options of each job as frozen dataclasses: every default lives here and only here.

Kept free of torch and transformers imports so the CLI can read defaults and stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TokenSurgeonError

DEFAULT_METHOD = "subword-mean"


@dataclass(frozen=True)
class TransplantConfig:
    """Options of one transplant.

    Attributes:
        method_options: keyword options of the method (e.g. {"k": 64} for omp).
        chat_template: "donor" keeps the donor tokenizer's template; "base" keeps the base model's.
        pad_to_multiple: round the embedding row count up (e.g. 64 or 128, as many checkpoints do).
        eval_max_bytes: evaluate only the first bytes of each text (quick runs).
        trust_remote_code: let transformers run model/tokenizer code shipped with BASE or DONOR.
        allow_pickle: read pytorch_model*.bin weights (weights-only unpickler) when there are no safetensors.
        allow_nonfinite: go on when an embedding holds NaN or inf (refused by default).
        corpus: text files for methods that learn from text (focus, tokenadapt, hypernet).
    """

    base: Path
    donor: Path
    out: Path
    method: str = DEFAULT_METHOD
    method_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    chat_template: str = "donor"
    pad_to_multiple: int = 1
    eval_texts: tuple[Path, ...] = ()
    eval_max_bytes: int | None = None
    force: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_nonfinite: bool = False
    corpus: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if self.chat_template not in ("donor", "base"):
            raise TokenSurgeonError(f"--chat-template must be 'donor' or 'base', not {self.chat_template!r}")
        if self.pad_to_multiple < 1:
            raise TokenSurgeonError("--pad-to-multiple must be at least 1")
        if self.eval_max_bytes is not None and self.eval_max_bytes < 1:
            raise TokenSurgeonError("--eval-max-bytes must be positive")
        for text in self.eval_texts:
            if not Path(text).is_file():
                raise TokenSurgeonError(f"evaluation text {text} does not exist")
        for text in self.corpus:
            if not Path(text).is_file():
                raise TokenSurgeonError(f"corpus file {text} does not exist")


@dataclass(frozen=True)
class EvalConfig:
    """Options of a bits-per-byte evaluation (see evaluate.py for the windowing rules)."""

    context: int = 512
    stride: int | None = None
    batch_size: int = 8
    max_bytes: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.context < 2:
            raise TokenSurgeonError("--context must be at least 2 tokens")
        if self.batch_size < 1:
            raise TokenSurgeonError("--batch-size must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise TokenSurgeonError("--max-bytes must be positive")


EXPORT_DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in "5GB", "500MB", "2GiB" or a plain number (transformers' max_shard_size convention)."""
    raw = str(text).strip().upper().replace(" ", "")
    digits = raw.rstrip("KMGTIB")
    unit = raw[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value <= 0:
        raise TokenSurgeonError(f"size {text!r} not understood; write e.g. 5GB, 500MB or 2GiB")
    return int(value * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export (see export.py).

    Attributes:
        dtype: bf16, fp16 or fp32 for every floating tensor; None keeps each tensor's stored dtype.
        max_shard_size: largest shard written ("5GB"); source shards that fit and do not change are kept whole.
        embeddings_only: write a small patch (changed tensors, tokenizer, config, manifest) instead of a checkpoint.
        apply_to: turn the patch at ``source`` back into a full checkpoint on this base.
        link: hard-link unchanged shards instead of copying them (falls back to a copy across filesystems).
    """

    source: Path
    out: Path
    dtype: str | None = None
    max_shard_size: str = "5GB"
    embeddings_only: bool = False
    apply_to: Path | None = None
    link: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in EXPORT_DTYPES:
            raise TokenSurgeonError(f"--dtype must be one of {', '.join(EXPORT_DTYPES)}, not {self.dtype!r}")
        parse_size(self.max_shard_size)
        if self.embeddings_only and self.apply_to is not None:
            raise TokenSurgeonError("--embeddings-only and --apply-to do not go together: the first cuts a patch, "
                                    "the second applies one")

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)

    @property
    def dtype_code(self) -> str | None:
        """The safetensors dtype name ("BF16") of --dtype, or None to keep stored dtypes."""
        return EXPORT_DTYPES[self.dtype] if self.dtype else None
