"""What a task is: one file that turns a loaded model and tokenizer into scores, registered by name.

A task answers the question users ask after a transplant ("can it still add numbers?", "does it still
answer my benchmark?") for base and patched models alike. Bits per byte needs no task: it lives in
``tokensurgeon.evaluation``. Every task follows the same two rules as bits per byte, so that only the
model and its tokenizer differ between two runs:

* Text is tokenized with ``add_special_tokens=False`` and the tokenizer's BOS (its EOS when it has no
  BOS) is prepended by the task, never by the tokenizer's post-processor, so a tokenizer that adds BOS
  and one that does not are scored alike.
* Greedy decoding and log-likelihoods are computed in float32 on the model's own device.

A task module defines a ``Task`` subclass and decorates it with ``@register("name")``; ``get_task`` maps
``--task NAME`` to it, and ``--task FILE.jsonl`` to the multiple-choice task over that file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TaskResult:
    """One model's scores on one task.

    groups: one row per group (e.g. operation and operand length) with its counts and metrics;
    summary: the task's headline metrics over every item; examples: a few items with what the model said.
    """

    task: str
    model: str
    metrics: tuple[str, ...]
    groups: list[dict[str, Any]]
    summary: dict[str, Any]
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"metrics": list(self.metrics)}


class Task:
    """A task: ``run(model, tokenizer)`` scores one loaded model. Subclasses set name and metrics."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()

    def run(self, model: Any, tokenizer: Any, *, label: str = "", progress: Progress | None = None) -> TaskResult:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The task's settings, for reports (seed, counts, file)."""
        return {"task": self.name}

    def guard_parts(self, result: TaskResult) -> dict[str, float]:
        """Scores besides the first metric that heal's guard holds each no lower than the input's, keyed by part
        (retention: each text's agreement); none by default."""
        return {}

    def guard_variant(self) -> "Task":
        """The task as heal's guard runs it at every evaluation: by default itself. A generated task returns other
        items than ``evaluate --task`` scores, and fewer (the guard runs often), so guarding is not tuning on them."""
        return self


TASKS: dict[str, type[Task]] = {}


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a Task available as ``--task name``."""
    def decorate(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task {name!r} registered twice")
        cls.name = name
        TASKS[name] = cls
        return cls
    return decorate


def context_prefix(tokenizer: Any) -> list[int]:
    """BOS, else EOS, as unscored context; empty when the tokenizer has neither (the bits-per-byte rule)."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [token_id]
    return []


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text without any special token the tokenizer's post-processor would add."""
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] if text else []


def model_label(path: Path | str) -> str:
    return Path(path).name or str(path)
