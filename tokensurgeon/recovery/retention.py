"""The retention guard (``heal --guard-task retention``): does the model still continue text as its base did?

Bits per byte scores the text; it does not see whether the model still *behaves* like the base. The
teacher (the transplant's base) continues prompts cut from the held-out text greedily once, before
training; at every evaluation the student continues the same prompts and scores the share of the
teacher's leading bytes it repeats exactly. On P1 a 20-minute run lowered training loss while this share
fell from 0.733 to 0.431 (docs/heal.md): a guard that holds it no lower than the input's keeps that out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tokensurgeon.config import RETENTION_BYTES, RETENTION_NEW_TOKENS, RETENTION_PROMPT_CHARS, RETENTION_PROMPTS
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.tasks import Task, TaskResult
from tokensurgeon.evaluation.tasks.arithmetic import greedy_complete
from tokensurgeon.recovery.generate import prompt_starts


def agreement(ours: str, reference: str, compare_bytes: int = RETENTION_BYTES) -> float:
    """Share of the reference's first ``compare_bytes`` bytes that ours repeats exactly from the start (1.0 when
    both are empty: an empty continuation repeated is agreement)."""
    a, b = ours.encode("utf-8")[:compare_bytes], reference.encode("utf-8")[:compare_bytes]
    if not b:
        return 1.0 if not a else 0.0
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / len(b)


def retention_prompts(texts: dict[str, str], count: int = RETENTION_PROMPTS,
                      chars: int = RETENTION_PROMPT_CHARS) -> list[str]:
    """``count`` prompts spread over the texts, each at most ``chars`` characters, starting and ending at a word
    boundary: a prompt cut inside a word tokenizes differently under the two tokenizers, which the guard would
    then measure instead of behaviour."""
    out = []
    for snippet in prompt_starts(texts, count, prompt_tokens=max(1, chars // 16)):
        snippet = snippet[:chars]
        cut = snippet.rfind(" ")
        snippet = (snippet[:cut] if cut > 0 else snippet).strip()
        if snippet:
            out.append(snippet)
    return out


def continue_prompts(model: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    """Greedy continuations of RETENTION_NEW_TOKENS tokens, cut at the first newline (the task rules of
    evaluation/tasks/base.py: BOS by the task, float32 on the model's device)."""
    return greedy_complete(model, tokenizer, prompts, RETENTION_NEW_TOKENS)


class Retention(Task):
    """Agreement with the teacher's own continuations of fixed prompts; a guard task, not an ``evaluate --task``
    (it needs the teacher's continuations, which heal writes before training)."""

    name = "retention"
    metrics = ("agreement",)

    def __init__(self, prompts: list[str], reference: list[str]) -> None:
        if not prompts or len(prompts) != len(reference):
            raise ValueError("retention: one reference continuation per prompt, at least one prompt")
        self.prompts, self.reference = list(prompts), list(reference)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "prompts": len(self.prompts), "compare_bytes": RETENTION_BYTES}

    def run(self, model: Any, tokenizer: Any, *, label: str = "", progress: Any = None) -> TaskResult:
        ours = continue_prompts(model, tokenizer, self.prompts)
        shares = [agreement(a, b) for a, b in zip(ours, self.reference)]
        summary = {"n": len(shares), "agreement": sum(shares) / len(shares)}
        examples = [{"prompt": p, "reference": r, "output": o}
                    for p, r, o in list(zip(self.prompts, self.reference, ours))[:3]]
        return TaskResult(self.name, label, self.metrics, [dict(summary)], summary, examples)


def teacher_retention(teacher: Path, texts: dict[str, str], device: torch.device,
                      trust_remote_code: bool = False) -> Retention:
    """The retention task over prompts from ``texts`` (heal passes its held-out split), with the teacher's own
    continuations as reference. The teacher is loaded for this call only, before training: no memory added."""
    from tokensurgeon.evaluation.bpb import load_for_eval

    prompts = retention_prompts(texts)
    if not prompts:
        raise TokenSurgeonError("--guard-task retention: the held-out text gives no prompts; give more text")
    model, tokenizer = load_for_eval(teacher, device=device, trust_remote_code=trust_remote_code)
    return Retention(prompts, continue_prompts(model, tokenizer, prompts))
