"""``--task arithmetic``: can the model still add, subtract and multiply after the transplant?

A donor whose number scheme differs from the base's (Llama 3 groups digits in threes, SmolLM2 and
Gemma 3 split them one by one) changes how every number reaches the model; the OMP paper's main loss
is exactly this. The task makes it measurable:

* Problems ``a + b``, ``a - b`` (a >= b, so answers are never negative) and ``a * b`` with both operands
  of 1 to 6 digits (1 digit: 0-9; d digits: 10^(d-1) to 10^d - 1), ``per_group`` distinct problems per
  operation and length, drawn from ``random.Random`` seeded with the seed, operation and length, so a
  run is the same everywhere.
* A few-shot prompt of ``shots`` solved problems of the same operation and length, drawn from a
  separate stream and never one of the test problems, one per line: ``37 + 45 = 82``; the problem to
  solve ends with ``=``.
* Greedy decoding, BOS prepended by the task (see base.py), ``2 * digits + 3`` new tokens (no stop string:
  transformers' stop_strings rebuilds a table over the whole vocabulary on every call, slower than the few
  extra steps). The answer is the first integer of the first generated line; exact match.
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .base import Progress, Task, TaskResult, context_prefix, encode, register

OPERATIONS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul)}
DIGITS = (1, 2, 3, 4, 5, 6)
GUARD_SEED_OFFSET = 1000  # heal's guard draws other problems than evaluate --task arithmetic (seed 0) scores
GUARD_PER_GROUP = 5  # 45 problems over the three ops and 1-3 digits: ~7 s per evaluation on two CPU cores
GUARD_MAX_DIGITS = 3  # small models get longer operands (nearly) never right: they would add time, not signal
_ANSWER = re.compile(r"\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    op: str
    digits: int
    a: int
    b: int
    answer: int

    @property
    def question(self) -> str:
        return f"{self.a} {OPERATIONS[self.op][0]} {self.b} ="

    @property
    def solved(self) -> str:
        return f"{self.question} {self.answer}"


def operand_range(digits: int) -> tuple[int, int]:
    return (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1


def draw(rng: random.Random, op: str, digits: int) -> Problem:
    low, high = operand_range(digits)
    a, b = rng.randint(low, high), rng.randint(low, high)
    if op == "sub" and a < b:
        a, b = b, a
    return Problem(op, digits, a, b, OPERATIONS[op][1](a, b))


def distinct(rng: random.Random, op: str, digits: int, count: int, exclude: set[tuple[int, int]]) -> list[Problem]:
    """count problems with operand pairs not in exclude (nor repeated); fewer if the space runs out."""
    low, high = operand_range(digits)
    space = (high - low + 1) ** 2 // (2 if op == "sub" else 1)
    problems: list[Problem] = []
    seen = set(exclude)
    while len(problems) < count and len(seen) < space:
        problem = draw(rng, op, digits)
        if (problem.a, problem.b) not in seen:
            seen.add((problem.a, problem.b))
            problems.append(problem)
    return problems


def generate_problems(seed: int = 0, per_group: int = 20, shots: int = 4, ops: tuple[str, ...] = tuple(OPERATIONS),
                      digits: tuple[int, ...] = DIGITS) -> list[tuple[list[Problem], list[Problem]]]:
    """(shots, problems) for each operation and length, in that order; deterministic for a seed."""
    groups = []
    for op in ops:
        for length in digits:
            tests = distinct(random.Random(f"{seed}:{op}:{length}:test"), op, length, per_group, set())
            examples = distinct(random.Random(f"{seed}:{op}:{length}:shots"), op, length, shots,
                                {(p.a, p.b) for p in tests})
            groups.append((examples, tests))
    return groups


def prompt(examples: list[Problem], problem: Problem) -> str:
    return "".join(example.solved + "\n" for example in examples) + problem.question


def parse_answer(text: str) -> int | None:
    """The first integer on the first line of a completion, or None."""
    match = _ANSWER.match(text.split("\n", 1)[0])
    return int(match.group(1)) if match else None


def greedy_complete(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                    batch_size: int = 16) -> list[str]:
    """Greedy completions of max_new_tokens for BOS-prefixed prompts (left padding), cut at the first newline."""
    prefix = context_prefix(tokenizer)
    encoded = [prefix + encode(tokenizer, text) for text in prompts]
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None))
    device = model.get_input_embeddings().weight.device
    out: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths: little padding
    for begin in range(0, len(order), batch_size):
        batch = order[begin:begin + batch_size]
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]):] = 1
        with torch.inference_mode():
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                       temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        for row, i in enumerate(batch):
            text = tokenizer.decode(generated[row, width:].tolist(), skip_special_tokens=True)
            out[i] = text.split("\n", 1)[0]
    return out


@register("arithmetic")
class Arithmetic(Task):
    metrics = ("accuracy",)

    def __init__(self, seed: int = 0, per_group: int = 20, shots: int = 4, ops: tuple[str, ...] = tuple(OPERATIONS),
                 digits: tuple[int, ...] = DIGITS, batch_size: int = 16) -> None:
        unknown = set(ops) - set(OPERATIONS)
        if unknown or not ops or not digits or min(digits) < 1 or per_group < 1 or shots < 0:
            raise ValueError(f"arithmetic: ops from {sorted(OPERATIONS)}, digits >= 1, per_group >= 1, shots >= 0")
        self.seed, self.per_group, self.shots, self.ops, self.digits = seed, per_group, shots, tuple(ops), tuple(digits)
        self.batch_size = batch_size

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "seed": self.seed, "per_group": self.per_group, "shots": self.shots,
                "ops": list(self.ops), "digits": list(self.digits)}

    def guard_variant(self) -> "Arithmetic":
        digits = tuple(d for d in self.digits if d <= GUARD_MAX_DIGITS) or self.digits[:1]
        return Arithmetic(seed=self.seed + GUARD_SEED_OFFSET, per_group=min(self.per_group, GUARD_PER_GROUP),
                          shots=self.shots, ops=self.ops, digits=digits, batch_size=self.batch_size)

    def run(self, model: Any, tokenizer: Any, *, label: str = "", progress: Progress | None = None) -> TaskResult:
        groups = generate_problems(self.seed, self.per_group, self.shots, self.ops, self.digits)
        total, done = sum(len(tests) for _, tests in groups), 0
        rows, examples = [], []
        for shots, tests in groups:
            prompts = [prompt(shots, problem) for problem in tests]
            completions = greedy_complete(model, tokenizer, prompts, 2 * tests[0].digits + 3, self.batch_size)
            correct = [parse_answer(text) == problem.answer for text, problem in zip(completions, tests)]
            rows.append({"op": tests[0].op, "digits": tests[0].digits, "n": len(tests), "correct": sum(correct),
                         "accuracy": sum(correct) / len(tests)})
            examples.append({"question": tests[0].question, "answer": tests[0].answer, "output": completions[0]})
            done += len(tests)
            if progress is not None:
                progress(done, total)
        n, correct = sum(row["n"] for row in rows), sum(row["correct"] for row in rows)
        summary = {"n": n, "correct": correct, "accuracy": correct / n}
        for op in self.ops:
            op_rows = [row for row in rows if row["op"] == op]
            summary[f"accuracy_{op}"] = sum(r["correct"] for r in op_rows) / sum(r["n"] for r in op_rows)
        return TaskResult(self.name, label, self.metrics, rows, summary, examples)


def accuracy_by_digits(result: TaskResult) -> dict[int, float]:
    """Accuracy per operand length over every operation (the table's last column)."""
    by: dict[int, list[int]] = {}
    for row in result.groups:
        counts = by.setdefault(row["digits"], [0, 0])
        counts[0] += row["correct"]
        counts[1] += row["n"]
    return {digits: correct / n for digits, (correct, n) in sorted(by.items())}
