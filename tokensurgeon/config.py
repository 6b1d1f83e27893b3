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
