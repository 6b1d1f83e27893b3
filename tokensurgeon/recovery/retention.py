"""The retention guard (``heal --guard-task retention``): does the model still continue text as its base did?

Bits per byte scores the text; it does not see whether the model still *behaves* like the base. The
teacher (the transplant's base) continues prompts cut from the held-out text greedily once, before
training; at every evaluation the student continues the same prompts and scores the share of the
teacher's leading bytes it repeats exactly. On P1 a 20-minute run lowered training loss while this share
fell from 0.733 to 0.431 (docs/heal.md): a guard that holds it no lower than the input's keeps that out.
The guard holds it per text, as bits per byte is held: on P2 the mean rose (0.167 -> 0.280, mostly on
UDHR prompts) while continuations of unseen English news fell 0.611 -> 0.425 (docs/heal.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tokensurgeon.config import RETENTION_BYTES, RETENTION_NEW_TOKENS, RETENTION_PROMPT_CHARS, RETENTION_PROMPTS
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.tasks import Task, TaskResult
from tokensurgeon.evaluation.tasks.arithmetic import greedy_complete
from tokensurgeon.recovery.generate import prompt_starts_by_text


def agreement(ours: str, reference: str, compare_bytes: int = RETENTION_BYTES) -> float:
    """Share of the reference's first ``compare_bytes`` bytes that ours repeats exactly from the start (1.0 when
    both are empty: an empty continuation repeated is agreement)."""
    a, b = ours.encode("utf-8")[:compare_bytes], reference.encode("utf-8")[:compare_bytes]
    if not b:
        return 1.0 if not a else 0.0
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / len(b)


def retention_prompts(texts: dict[str, str], count: int = RETENTION_PROMPTS,
                      chars: int = RETENTION_PROMPT_CHARS) -> dict[str, list[str]]:
    """``count`` prompts dealt to the texts in turn (keyed by text label; a text too short for any is left out),
    each at most ``chars`` characters, starting and ending at a word boundary: a prompt cut inside a word
    tokenizes differently under the two tokenizers, which the guard would then measure instead of behaviour."""
    out: dict[str, list[str]] = {}
    for label, snippets in prompt_starts_by_text(texts, count, prompt_tokens=max(1, chars // 16)).items():
        for snippet in snippets:
            snippet = snippet[:chars]
            cut = snippet.rfind(" ")
            snippet = (snippet[:cut] if cut > 0 else snippet).strip()
            if snippet:
                out.setdefault(label, []).append(snippet)
    return out


def continue_prompts(model: Any, tokenizer: Any, prompts: list[str]) -> list[str]:
    """Greedy continuations of RETENTION_NEW_TOKENS tokens, cut at the first newline (the task rules of
    evaluation/tasks/base.py: BOS by the task, float32 on the model's device)."""
    return greedy_complete(model, tokenizer, prompts, RETENTION_NEW_TOKENS)


class Retention(Task):
    """Agreement with the teacher's own continuations of fixed prompts, overall and per text; a guard task, not an
    ``evaluate --task`` (it needs the teacher's continuations, which heal writes before training)."""

    name = "retention"
    metrics = ("agreement",)

    def __init__(self, prompts: list[str], reference: list[str], texts: list[str]) -> None:
        if not prompts or not len(prompts) == len(reference) == len(texts):
            raise ValueError("retention: one reference continuation and one text label per prompt, at least one")
        self.prompts, self.reference, self.texts = list(prompts), list(reference), list(texts)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "prompts": len(self.prompts), "texts": sorted(set(self.texts)),
                "compare_bytes": RETENTION_BYTES}

    def run(self, model: Any, tokenizer: Any, *, label: str = "", progress: Any = None) -> TaskResult:
        ours = continue_prompts(model, tokenizer, self.prompts)
        shares = [agreement(a, b) for a, b in zip(ours, self.reference)]
        by_text: dict[str, list[float]] = {}
        for text, share in zip(self.texts, shares):
            by_text.setdefault(text, []).append(share)
        groups = [{"text": text, "n": len(values), "agreement": sum(values) / len(values)}
                  for text, values in by_text.items()]
        summary = {"n": len(shares), "agreement": sum(shares) / len(shares)}
        examples = [{"prompt": p, "reference": r, "output": o}
                    for p, r, o in list(zip(self.prompts, self.reference, ours))[:3]]
        return TaskResult(self.name, label, self.metrics, groups, summary, examples)

    def guard_parts(self, result: TaskResult) -> dict[str, float]:
        """Each text's agreement: the guard holds every one no lower than the input's, not just the mean."""
        return {group["text"]: group["agreement"] for group in result.groups} if len(result.groups) > 1 else {}


def teacher_retention(teacher: Path, texts: dict[str, str], device: torch.device,
                      trust_remote_code: bool = False) -> Retention:
    """The retention task over prompts from ``texts`` (heal passes its held-out split), with the teacher's own
    continuations as reference. The teacher is loaded for this call only, before training: no memory added."""
    from tokensurgeon.evaluation.bpb import load_for_eval

    by_text = retention_prompts(texts)
    prompts = [prompt for prompts in by_text.values() for prompt in prompts]
    if not prompts:
        raise TokenSurgeonError("--guard-task retention: the held-out text gives no prompts; give more text")
    model, tokenizer = load_for_eval(teacher, device=device, trust_remote_code=trust_remote_code)
    return Retention(prompts, continue_prompts(model, tokenizer, prompts),
                     [label for label, prompts in by_text.items() for _ in prompts])
