"""The recovery loop: train a patched model toward its base (distill) or its text (lm), keep the best state.

What trains (``train``): ``rows`` = the rows the transplant computed plus copied rows the base barely
trained; ``embeddings`` = every row, copied rows anchored to their start; ``lora`` = embeddings plus
PEFT LoRA adapters on the attention and MLP projections; ``all`` = every weight. The held-out guard
stays: the in-file held-out part of every training text is scored (bits per byte) before training and
every ``eval_every`` steps, and a state counts only when it lowers the mean and raises no text above its
start; when none does, the result is the input, unchanged. ``eval_texts`` are scored before and after
but never choose a state.

Memory, by design: one model copy (the teacher pass reuses the student's body with adapters off and
the base rows swapped in), the base embedding (and untied head), logits for one block of positions at
a time, Adam state of the trainable tensors only, and one CPU copy of them for the best state. ``all``
trains the body too, so the teacher is a second, frozen copy, and Adam holds two more of the model.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from tokensurgeon.checkpoint import Checkpoint, open_checkpoint, read_embeddings
from tokensurgeon.config import RETENTION_GUARD, check_chunk_terms
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.tasks import Task
from tokensurgeon.recovery.batch import measure_batch
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.data import (Sample, Side, chunk_mask, chunk_starts, collate, samples, shared_tokens,
                                        side)
from tokensurgeon.recovery.guard import better, check_guard_tasks, guard_tasks, keeps_skills, score_texts, task_scores
from tokensurgeon.recovery.objectives import alm_loss, chunk_logprobs, lm_loss, state_loss, token_kl, token_logprobs
from tokensurgeon.recovery.student import Teacher, head_weight, hidden_states, load_teacher, softcap, unwrap
from tokensurgeon.recovery.trainable import (BatchRows, embedding_params, free_rows, learning_rates, prepare,
                                             read_provenance, trainable_counts)
from tokensurgeon.vocab.undertrained import undertrained_rows

Progress = Callable[[int, int, str], None]  # (step, steps, note: the loss and tokens/s so far)
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


@dataclass(frozen=True)
class TextChange:
    """One text's bits per byte before training and in the kept state."""
    text: str
    before_bpb: float
    after_bpb: float


@dataclass(frozen=True)
class EvalPoint:
    """A held-out evaluation: the step, the mean objective loss since the last and the mean anchor penalty (copied
    rows' pull to their start, weighted; both None at step 0), each text's bits per byte, and the guard tasks'
    scores where they ran (at step 0, and where bits per byte alone would keep the state)."""
    step: int
    loss: float | None
    held_out_bpb: list[float]
    tasks: dict[str, float] = field(default_factory=dict)
    anchor: float | None = None


@dataclass
class RecoveryResult:
    """What training did: scores before/after (bits per byte), the evaluation history, speed and the best state.

    replacements holds the best state's changed checkpoint tensors (merged, in the stored dtype); it is
    empty when no state beat the input.
    """

    improved: bool
    best_step: int
    steps_run: int
    trainable: dict[str, int]
    held_out: list[TextChange]
    unseen: list[TextChange]
    history: list[EvalPoint]
    tokens_per_second: float
    seconds_per_step: float
    stopped_by: str
    device: str
    batch_size: int = 0  # as trained: --batch-size, or what batch.py sized
    tasks_before: dict[str, float] = field(default_factory=dict)  # guard tasks (guard.py), input and kept state
    tasks_after: dict[str, float] = field(default_factory=dict)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but replacements (tensors), as plain data."""
        return asdict(replace(self, replacements={}), dict_factory=lambda items: {
            k: v for k, v in items if k != "replacements"})


class _Sampler:
    """Seeded draws of training samples, the texts in turn so a short text trains as often as a long one."""

    def __init__(self, per_text: list[list[Sample]], seed: int) -> None:
        self.per_text, self.drawn = per_text, 0
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, n: int) -> list[Sample]:
        out = []
        for _ in range(n):
            pool = self.per_text[self.drawn % len(self.per_text)]
            out.append(pool[int(torch.randint(len(pool), (1,), generator=self.generator))])
            self.drawn += 1
        return out


class Objective:
    """The training loss of one batch of samples, by options.objective."""

    def __init__(self, options: RecoveryOptions, student: Side, teacher: Teacher | None,
                 teacher_side: Side | None) -> None:
        self.options, self.student, self.teacher, self.teacher_side = options, student, teacher, teacher_side
        self.identity = teacher_side is None and teacher is not None  # one tokenizer: token-level KL
        self.shared = (shared_tokens(student, teacher_side) if options.kl_mix and teacher_side is not None
                       else None)  # (student ids, teacher ids) of the kl_mix term
        self.shared_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # those with a row on both sides, on device

    def __call__(self, model: Any, batch_samples: list[Sample], device: torch.device
                 ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(loss, student tokens read, the student token ids in the batch)."""
        options = self.options
        batch = collate([(s.student, s.student_chunks) for s in batch_samples], self.student.prefix).to(device)
        teacher_hidden = None
        if options.objective == "distill":
            if self.identity:
                teacher_hidden = self.teacher.hidden(model, batch.input_ids, batch.attention_mask)
            else:
                teacher_batch = collate([(s.teacher, s.teacher_chunks) for s in batch_samples],
                                        self.teacher_side.prefix).to(device)
                teacher_hidden = self.teacher.hidden(model, teacher_batch.input_ids, teacher_batch.attention_mask)
                with torch.no_grad():
                    teacher_tokens = token_logprobs(teacher_hidden, self.teacher.head, teacher_batch.targets,
                                                    softcap=self.teacher.softcap, block=options.block)
        hidden = hidden_states(model, batch.input_ids, batch.attention_mask)
        head, scored = head_weight(model), batch.targets >= 0
        tokens = int(batch.attention_mask.sum())
        if options.objective == "lm" or options.lm_mix:
            logprobs = token_logprobs(hidden, head, batch.targets, softcap=softcap(model), block=options.block)
        loss = lm_loss(logprobs, scored) if options.objective == "lm" else None
        if options.objective == "distill":
            if self.identity:
                loss = token_kl(teacher_hidden, self.teacher.head, hidden, head, scored,
                                teacher_softcap=self.teacher.softcap, softcap=softcap(model), block=options.block)
            else:
                if not options.lm_mix:
                    logprobs = token_logprobs(hidden, head, batch.targets, softcap=softcap(model),
                                              block=options.block)
                n = max(s.n_chunks for s in batch_samples)
                mask = chunk_mask(batch_samples, n, self.student, self.teacher_side).to(device)
                loss = alm_loss(chunk_logprobs(teacher_tokens, teacher_batch.chunks, n),
                                chunk_logprobs(logprobs, batch.chunks, n), mask, options.temperature)
            if options.lm_mix:
                loss = loss + options.lm_mix * lm_loss(logprobs, scored)
            if self.teacher_side is not None and (options.kl_mix or options.hidden_mix):
                rows, at_student, at_teacher = (t.to(device) for t in chunk_starts(batch_samples, self.student,
                                                                                    self.teacher_side))
                teacher_states, states = teacher_hidden[rows, at_teacher], hidden[rows, at_student]
                if options.kl_mix:
                    loss = loss + options.kl_mix * self.shared_kl(teacher_states, states, head, softcap(model))
                if options.hidden_mix:
                    loss = loss + options.hidden_mix * state_loss(teacher_states, states)
        return loss, tokens, batch.input_ids[batch.attention_mask.bool()].unique()

    def shared_kl(self, teacher_states: torch.Tensor, states: torch.Tensor, head: torch.Tensor,
                  student_softcap: float | None) -> torch.Tensor:
        """KL(teacher || student) of next-token distributions over the shared tokens (each renormalised), from the
        hidden states at the chunk starts: there both read the same bytes, and this is where greedy decoding picks
        its next token."""
        device = states.device
        if self.shared_rows is None:  # the student's row count is known from its first batch on
            student_ids, teacher_ids = self.shared
            keep = (student_ids < head.shape[0]) & (teacher_ids < self.teacher.head.shape[0])
            self.shared_rows = student_ids[keep].to(device), teacher_ids[keep].to(device)
        student_ids, teacher_ids = self.shared_rows
        return token_kl(teacher_states, self.teacher.head[teacher_ids], states, head[student_ids],
                        torch.ones(len(states), device=device), teacher_softcap=self.teacher.softcap,
                        softcap=student_softcap, block=self.options.block)


def fit(model: Any, tokenizer: Any, train_texts: dict[str, str], held_out: dict[str, str],
        options: RecoveryOptions, *, teacher: Teacher | None = None, free: list[int] | None = None,
        unseen: dict[str, str] | None = None, device: torch.device | None = None,
        retention: Task | None = None, progress: Progress | None = None) -> tuple[Any, RecoveryResult]:
    """Train model (in place) and leave it in its best state; returns (model, possibly PEFT-wrapped; result).

    ``retention`` is the task ``--guard-task retention`` runs (retention.teacher_retention). replacements in
    the result are filled by merged_tensors, not here.
    """
    device = device or next(model.parameters()).device
    torch.manual_seed(options.seed)
    if options.objective == "distill" and teacher is None:
        raise TokenSurgeonError("--objective distill needs a teacher: the transplant's base (report.json) or "
                                "--teacher DIR")
    if options.train == "all" and teacher is not None and teacher.shares_body:
        raise AssertionError("train all moves the body a shared-body teacher reads (load_teacher(share_body=False))")
    student_side = side(tokenizer)
    shared_tokenizer = teacher is not None and teacher.tokenizer.get_vocab() == tokenizer.get_vocab()
    teacher_side = side(teacher.tokenizer) if options.objective == "distill" and not shared_tokenizer else None
    if teacher is not None:
        check_chunk_terms(options.kl_mix, options.hidden_mix, across=teacher_side is not None,
                          width=head_weight(model).shape[1], teacher_width=teacher.head.shape[1])
    per_text = [samples(text, label, student_side, teacher_side, options.context)
                for label, text in train_texts.items()]
    model, trainable, anchors = prepare(model, options, free)
    embeddings = embedding_params(model)
    batch_rows = BatchRows(list(embeddings.values())) if options.batch_rows else None
    optimizer = torch.optim.AdamW(learning_rates(trainable, embeddings, options), weight_decay=0.0)
    objective = Objective(options, student_side, teacher, teacher_side)
    sampler = _Sampler(per_text, options.seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()  # CPU: float32
    if options.batch_size is None:
        longest = sorted((s for pool in per_text for s in pool), key=lambda s: -len(s.student))
        size = sum(p.numel() * p.element_size() for p in trainable.values())
        options = replace(options, batch_size=measure_batch(
            lambda n: _probe(model, objective, (longest[:n] * n)[:n], device, autocast), size, device))

    def snapshot() -> dict[str, torch.Tensor]:
        return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}

    unseen, guards = unseen or {}, guard_tasks(options.guard_tasks, retention)
    before = best = score_texts(model, tokenizer, held_out, options)
    unseen_before = score_texts(model, tokenizer, unseen, options)
    tasks_before = tasks_best = task_scores(model, tokenizer, guards)
    best_state, best_step, stale, step, losses, penalties, tokens, train_seconds = snapshot(), 0, 0, 0, [], [], 0, 0.0
    history = [EvalPoint(step=0, loss=None, held_out_bpb=before, tasks=tasks_before)]
    deadline = None if options.max_minutes is None else time.monotonic() + 60 * options.max_minutes
    stopped_by = "steps"
    model.train()
    while step < options.steps:
        if stale >= options.patience:
            stopped_by = "patience"
            break
        if deadline is not None and time.monotonic() > deadline:
            stopped_by = "max-minutes"
            break
        clock = time.perf_counter()
        step += 1
        with autocast:
            loss, read, seen = objective(model, sampler.next(options.batch_size), device)
        penalty = options.anchor_weight * sum((((param if index is None else param[index]) - start).pow(2).sum()
                                               for param, index, start in anchors), torch.zeros((), device=device))
        optimizer.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        if batch_rows is not None:
            batch_rows.before_step(seen)
        optimizer.step()
        if batch_rows is not None:
            batch_rows.after_step()
        train_seconds += time.perf_counter() - clock
        losses.append(loss.item())
        penalties.append(penalty.item())
        tokens += read
        if progress is not None:
            progress(step, options.steps, f"loss {sum(losses) / len(losses):.3f}, {tokens / train_seconds:,.0f} tok/s")
        out_of_time = deadline is not None and time.monotonic() > deadline
        if step % options.eval_every and step != options.steps and not out_of_time:
            continue  # the last step is always evaluated, so a budget's final steps are not lost
        scores = score_texts(model, tokenizer, held_out, options)
        improved = better(scores, best, before)
        tasks = task_scores(model, tokenizer, guards) if improved else {}
        history.append(EvalPoint(step=step, loss=sum(losses) / len(losses), held_out_bpb=scores, tasks=tasks,
                                 anchor=sum(penalties) / len(penalties)))
        losses, penalties = [], []
        if improved and keeps_skills(tasks, tasks_before):
            best, best_state, best_step, stale, tasks_best = scores, snapshot(), step, 0, tasks
        else:
            stale += 1
    with torch.no_grad():  # the best state, or the input's values when nothing beat them
        for name, value in best_state.items():
            trainable[name].copy_(value)
    unseen_after = score_texts(model, tokenizer, unseen, options) if best_step else unseen_before
    result = RecoveryResult(
        improved=best_step > 0, best_step=best_step, steps_run=step,
        trainable=trainable_counts(trainable, options, free),
        held_out=_rows(held_out, before, best), unseen=_rows(unseen, unseen_before, unseen_after),
        history=history, tasks_before=tasks_before, tasks_after=tasks_best, tokens_per_second=tokens / train_seconds if train_seconds else 0.0,
        seconds_per_step=train_seconds / step if step else 0.0, stopped_by=stopped_by, device=str(device),
        batch_size=options.batch_size)
    return model, result


def _probe(model: Any, objective: Objective, batch: list[Sample], device: torch.device, autocast: Any) -> None:
    """One forward and backward of batch, nothing updated (batch.py measures its memory)."""
    with autocast:
        loss = objective(model, batch, device)[0]
    loss.backward()
    model.zero_grad(set_to_none=True)


def _rows(texts: dict[str, str], before: list[float], after: list[float]) -> list[TextChange]:
    return [TextChange(label, b, a) for label, b, a in zip(texts, before, after)]


def merged_tensors(model: Any, checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint tensors training changed (adapters merged into their projections), in the stored dtype.

    Merging happens on a copy of each adapted weight, so model stays a PEFT model. Names are the
    checkpoint's; a changed tensor the checkpoint does not store is a bug and raises.
    """
    base = unwrap(model)
    changed = {name: p.detach() for name, p in embedding_params(model).items()}
    if not hasattr(model, "get_base_model"):  # no adapters: every weight that trained (train all) changed
        rows = {id(p) for p in changed.values()}
        changed |= {name: p.detach() for name, p in base.named_parameters() if p.requires_grad and id(p) not in rows}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            weight = module.base_layer.weight.detach()
            with torch.no_grad():
                changed[f"{name}.weight"] = weight + sum(module.get_delta_weight(a) for a in module.active_adapters)
    out = {}
    for name, tensor in changed.items():
        info = checkpoint.tensors.get(name)
        if info is None:
            raise AssertionError(f"trained tensor {name} is not in the checkpoint")
        out[name] = tensor.to("cpu", dtype=_DTYPES[info.dtype])
    if checkpoint.tied and checkpoint.output_name:  # tied but saved twice: both copies change
        out[checkpoint.output_name] = out[checkpoint.input_name]
    return out


def base_of(patched: Path) -> Path | None:
    """The base model a transplant recorded in its report.json (the default teacher), when it exists."""
    report = Path(patched) / "report.json"
    try:
        base = Path(json.loads(report.read_text(encoding="utf-8"))["base"]["path"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return base if (base / "config.json").is_file() else None


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present (trained under bf16 autocast), else CPU in float32."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TokenSurgeonError(f"--device {name} requested but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def recover(patched: Path, train_texts: dict[str, str], held_out: dict[str, str], options: RecoveryOptions, *,
            teacher: Path | None = None, unseen: dict[str, str] | None = None, device: str = "auto",
            guard_texts: dict[str, str] | None = None, trust_remote_code: bool = False,
            progress: Progress | None = None) -> tuple[Any, RecoveryResult]:
    """Load PATCHED and its teacher, train by options, return (model in its best state, result with replacements).

    The teacher defaults to the base in PATCHED's report.json; without one only --objective lm can run. The
    retention guard cuts its prompts from ``guard_texts`` when given, else from the held-out split.
    """
    from tokensurgeon.evaluation import load_for_eval
    from tokensurgeon.vocab import build_vocabulary, load_tokenizer

    from tokensurgeon.recovery.retention import teacher_retention

    target = pick_device(device)
    checkpoint = open_checkpoint(patched, trust_remote_code=trust_remote_code)
    teacher_dir = Path(teacher) if teacher is not None else base_of(patched)
    if teacher is not None and not (Path(teacher) / "config.json").is_file():
        raise TokenSurgeonError(f"--teacher {teacher}: not a model directory (no config.json)")
    check_guard_tasks(options.guard_tasks, has_teacher=teacher_dir is not None)
    retention = (teacher_retention(teacher_dir, guard_texts or held_out, target, trust_remote_code)  # before student
                 if RETENTION_GUARD in options.guard_tasks else None)
    model, tokenizer = load_for_eval(patched, device=target, trust_remote_code=trust_remote_code)
    provenance = read_provenance(patched, checkpoint.vocab_rows)
    teacher_model, undertrained = None, set()
    if teacher_dir is not None:
        teacher_checkpoint = open_checkpoint(teacher_dir, trust_remote_code=trust_remote_code)
        teacher_tokenizer = load_tokenizer(teacher_dir, trust_remote_code=trust_remote_code)
        undertrained = undertrained_rows(read_embeddings(teacher_checkpoint)[0],
                                         build_vocabulary(teacher_tokenizer).byte_fallback)
        if options.objective == "distill":  # the teacher's rows (or model) are needed only to distil
            teacher_model = load_teacher(teacher_dir, model, device=target, share_body=options.train != "all",
                                         trust_remote_code=trust_remote_code)
    model, result = fit(model, tokenizer, train_texts, held_out, options,
                        teacher=teacher_model,
                        free=free_rows(provenance, undertrained), unseen=unseen, device=target, retention=retention,
                        progress=progress)
    if result.improved:
        result.replacements = merged_tensors(model, checkpoint)
    return model, result
