"""``--task FILE.jsonl``: a user's own multiple-choice benchmark, scored by log-likelihood.

The lm-eval-harness convention, so a number here means what it means there:

* One item per line: ``{"context": str, "choices": [str, ...], "gold": int}`` (an optional ``"group"``
  string gives per-group rows too). A ``.json`` file may hold a list of such items instead.
* Each choice is scored as the continuation ``delimiter + choice`` (delimiter ``" "``) of the context.
  Trailing whitespace of the context moves to the continuation, and the continuation's tokens are
  those of ``tokenize(context + continuation)`` after the ``len(tokenize(context))`` context tokens
  (lm-eval's ``_encode_pair``). BOS is prepended by the task (see base.py); too long an input loses
  context tokens from the left.
* ``acc``: the choice with the highest summed log-likelihood is the gold one. ``acc_norm``: the same
  after dividing each log-likelihood by the choice's length in characters (lm-eval's ``acc_norm``).
  Ties go to the first choice (numpy's argmax).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import TokenSurgeonError
from .base import Progress, Task, TaskResult, context_prefix, encode


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    gold: int
    group: str = ""


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    """Items of a JSONL (or JSON list) file, checked field by field with the line number in errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenSurgeonError(f"--task {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        records = (list(enumerate(json.loads(text), 1)) if path.suffix == ".json"
                   else [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()])
    except json.JSONDecodeError as exc:
        kind = "JSON" if path.suffix == ".json" else "JSON lines"
        raise TokenSurgeonError(f"--task {path}: not valid {kind}: {exc}") from exc
    items = [_item(record, f"{path}:{n}") for n, record in records[:limit]]
    if not items:
        raise TokenSurgeonError(f"--task {path}: no items")
    return items


def _item(record: Any, where: str) -> Item:
    if not isinstance(record, dict):
        raise TokenSurgeonError(f"{where}: expected an object with context, choices and gold")
    context, choices, gold = record.get("context"), record.get("choices"), record.get("gold")
    if not isinstance(context, str):
        raise TokenSurgeonError(f"{where}: 'context' must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TokenSurgeonError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise TokenSurgeonError(f"{where}: 'gold' must be the index of the right choice (0 to {len(choices) - 1})")
    return Item(context, tuple(choices), gold, str(record.get("group", "")))


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of context and continuation tokens (whitespace moved to the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], *, batch_size: int = 8,
                   progress: Progress | None = None) -> list[float]:
    """Summed log-likelihood (nats) of each continuation given its context, BOS prepended."""
    prefix = context_prefix(tokenizer)
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    requests = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids:
            raise TokenSurgeonError(f"choice {continuation!r} has no tokens of its own after context "
                                    f"{context[-40:]!r}")
        ids = (prefix + context_ids + continuation_ids)[-limit:]
        requests.append((ids, min(len(continuation_ids), len(ids) - 1)))
    device = model.get_input_embeddings().weight.device
    scores = [0.0] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]))
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        width = max(len(requests[i][0]) for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, :len(requests[i][0])] = torch.tensor(requests[i][0])
            mask[row, :len(requests[i][0])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            length, scored = len(requests[i][0]), requests[i][1]
            logprobs = F.log_softmax(logits[row, length - scored - 1:length - 1].float(), dim=-1)
            targets = ids[row, length - scored:length].to(logprobs.device)
            scores[i] = logprobs.gather(1, targets[:, None]).sum().item()
        if progress is not None:
            progress(min(begin + batch_size, len(order)), len(order))
    return scores


def first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


class MultipleChoice(Task):
    name = "multiple_choice"
    metrics = ("acc", "acc_norm")

    def __init__(self, path: Path, *, delimiter: str = " ", limit: int | None = None, batch_size: int = 8) -> None:
        self.path, self.delimiter, self.batch_size = Path(path), delimiter, batch_size
        self.items = read_items(self.path, limit)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "file": str(self.path), "items": len(self.items), "delimiter": self.delimiter}

    def run(self, model: Any, tokenizer: Any, *, label: str = "", progress: Progress | None = None) -> TaskResult:
        pairs = [(item.context, self.delimiter + choice) for item in self.items for choice in item.choices]
        flat = loglikelihoods(model, tokenizer, pairs, batch_size=self.batch_size, progress=progress)
        by_group: dict[str, list[int]] = {}
        examples, start = [], 0
        for item in self.items:
            lls = flat[start:start + len(item.choices)]
            start += len(item.choices)
            normed = [ll / len(choice) for ll, choice in zip(lls, item.choices)]
            acc, acc_norm = first_argmax(lls) == item.gold, first_argmax(normed) == item.gold
            for group in {"all", item.group} - {""}:
                counts = by_group.setdefault(group, [0, 0, 0])
                counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + acc, counts[2] + acc_norm
            if len(examples) < 3:
                examples.append({"context": item.context[-80:], "gold": item.gold,
                                 "loglikelihoods": [round(ll, 4) for ll in lls]})
        rows = [{"group": group, "n": n, "acc": right / n, "acc_norm": right_norm / n}
                for group, (n, right, right_norm) in sorted(by_group.items(), key=lambda kv: kv[0] != "all")]
        return TaskResult(self.name, label, self.metrics, rows, dict(rows[0]), examples)
