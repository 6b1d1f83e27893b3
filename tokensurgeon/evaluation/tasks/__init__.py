"""Task retention: ``evaluate --task NAME|FILE.jsonl`` scores base and patched models side by side.

A task is one module here (see base.py): ``arithmetic`` (generated problems, exact match by operand
length) and ``multiple_choice`` (a user's JSONL, log-likelihood accuracy, lm-eval-harness convention).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Callable

from ...errors import TokenSurgeonError
from . import arithmetic  # noqa: F401  (registers "arithmetic")
from .base import TASKS, Task, TaskResult, model_label, register
from .multiple_choice import MultipleChoice

__all__ = ["TASKS", "Task", "TaskResult", "register", "get_task", "run_task", "markdown_table", "table_rows"]


def get_task(spec: str | Path, *, flag: str = "--task", **options: Any) -> Task:
    """A registered task by name, or the multiple-choice task over a .jsonl/.json file; ``flag`` names the option
    in the error (heal's --guard-task)."""
    name = str(spec)
    if name in TASKS:
        return TASKS[name](**options)
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.is_file():
        return MultipleChoice(path, **options)
    raise TokenSurgeonError(f"{flag} {name}: not a task ({', '.join(sorted(TASKS))}) nor a .jsonl file of "
                            "multiple-choice items")


def run_task(model_paths: list[Path], task: Task, *, device: str = "auto", trust_remote_code: bool = False,
             allow_pickle: bool = False, progress: Callable[[str, int, int], None] | None = None) -> list[TaskResult]:
    """Run task on each model in turn (one in memory at a time), float32, greedy."""
    import torch

    from tokensurgeon.evaluation import load_for_eval
    from tokensurgeon.runtime.devices import resolve_device

    target = resolve_device(device)
    results = []
    for path in model_paths:
        model, tokenizer = load_for_eval(Path(path), device=target, trust_remote_code=trust_remote_code,
                                         allow_pickle=allow_pickle)
        label = model_label(path)
        report = None if progress is None else (
            lambda done, total, _label=label: progress(f"{_label}/{task.name}", done, total))
        results.append(task.run(model, tokenizer, label=str(path), progress=report))
        del model, tokenizer
        gc.collect()
        if target.type == "cuda":
            torch.cuda.empty_cache()
    return results


def table_rows(results: list[TaskResult]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per group, one column per model and metric, models side by side."""
    if not results:
        return [], []
    keys = [key for key in results[0].groups[0] if key not in ("n", "correct") + results[0].metrics]
    header = keys + ["n"] + [f"{model_label(r.model)} {metric}" for r in results for metric in r.metrics]
    rows = []
    for index, group in enumerate(results[0].groups):
        cells = [str(group[key]) for key in keys] + [str(group["n"])]
        cells += [f"{r.groups[index][metric]:.3f}" for r in results for metric in r.metrics]
        rows.append(cells)
    summary = results[0].summary
    rows.append(["all"] + [""] * (len(keys) - 1) + [str(summary["n"])]
                + [f"{r.summary[metric]:.3f}" for r in results for metric in r.metrics])
    return header, rows


def markdown_table(results: list[TaskResult]) -> str:
    header, rows = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
