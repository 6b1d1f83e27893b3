"""The guard: which training state recovery keeps, so heal never returns a worse model than its input.

A state is kept when its held-out bits per byte beat the best state's on the mean and lose on no text against
the input; with guard tasks (``heal --guard-task``), also when it scores no lower on any of them than the input
did (retention: on any text). Bits per byte only sees the training text's kind: on P2, 40 steps of distillation
lowered held-out bits per byte while arithmetic fell from 6 to 0 of 45 problems (docs/heal.md), a skill the text
never shows.
"""

from __future__ import annotations

from typing import Any

from tokensurgeon.config import RETENTION_GUARD
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.tasks import Task, get_task
from tokensurgeon.recovery.options import RecoveryOptions


def score_texts(model: Any, tokenizer: Any, texts: dict[str, str], options: RecoveryOptions) -> list[float]:
    """Bits per byte of each text by evaluate's rules (BOS context, strided windows, at most evaluate's batch of
    windows per pass: 8 x 512 float32 logits of a 262k vocabulary are 4 GB); a PEFT model scores as is."""
    from tokensurgeon.evaluation import score_text

    model.eval()
    scores = [score_text(model, tokenizer, text, label=label, context=options.eval_context,
                         batch_size=min(options.batch_size, options.eval_batch_size),
                         max_bytes=options.eval_max_bytes).bits_per_byte
              for label, text in texts.items()]
    model.train()
    return scores


def better(scores: list[float], best: list[float], before: list[float]) -> bool:
    """Lower mean bits per byte than the best so far, and no text worse than before training."""
    return sum(scores) < sum(best) and all(s <= b for s, b in zip(scores, before))


_NO_TEACHER = ("--guard-task retention compares with the teacher's own continuations and needs a teacher: the base "
               "in PATCHED/report.json or --teacher DIR")


def guard_tasks(specs: tuple[str, ...], retention: Task | None = None) -> dict[str, Task]:
    """The tasks a kept state must not lose on, keyed by the --guard-task value (two .jsonl files are both
    multiple_choice), as the guard runs them (Task.guard_variant: other items than ``evaluate --task`` scores,
    so guarding is not tuning on them); "retention" is the task built from the teacher (retention.py)."""
    if RETENTION_GUARD in specs and retention is None:
        raise TokenSurgeonError(_NO_TEACHER)
    return {spec: retention if spec == RETENTION_GUARD else get_task(spec, flag="--guard-task").guard_variant()
            for spec in specs}


def check_guard_tasks(specs: tuple[str, ...], has_teacher: bool) -> None:
    """Fail on an unknown task, or on retention without a teacher, before any model is loaded."""
    if RETENTION_GUARD in specs and not has_teacher:
        raise TokenSurgeonError(_NO_TEACHER)
    guard_tasks(tuple(spec for spec in specs if spec != RETENTION_GUARD))


def task_scores(model: Any, tokenizer: Any, tasks: dict[str, Task]) -> dict[str, float]:
    """Each task's first metric (accuracy for arithmetic and multiple choice), keyed as ``tasks``, and its guard
    parts keyed ``spec:part`` (retention's texts): keeps_skills holds every one."""
    if not tasks:
        return {}
    model.eval()
    scores = {}
    for spec, task in tasks.items():
        result = task.run(model, tokenizer)
        scores[spec] = result.summary[task.metrics[0]]
        scores.update({f"{spec}:{part}": value for part, value in task.guard_parts(result).items()})
    model.train()
    return scores


def keeps_skills(scores: dict[str, float], before: dict[str, float]) -> bool:
    """No guard task scores lower than it did before training."""
    return all(scores[name] >= value for name, value in before.items())
