"""Heal a patched checkpoint: recovery training (tokensurgeon.recovery) with a held-out guard.

Initialisation cannot move the floor a transplant hits where the donor tokenizer cuts text in
ways the base model never saw; a little training closes much of that gap. heal runs the recovery
engine (docs/recovery.md) on the user's text:

* ``objective``: ``lm`` (next-token loss on the text, the original heal) or ``distill`` (ALM chunk
  divergence toward the teacher, the transplant's base by default; token-level KL when teacher and
  student share a tokenizer, as for a draft healed toward its target), ``lm_mix`` mixing both.
* ``train``: ``rows`` (the rows the transplant computed, read from provenance.jsonl, plus copies of
  rows the base barely trained), ``embeddings`` (every row, the others L2-anchored to their start),
  ``lora`` (embeddings plus LoRA adapters, merged into the output).
* Held-out guard: the last fraction of each text is held out and scored (bits per byte) before
  training and every ``eval_every`` steps; a state counts as better only when it lowers the mean and
  raises no text's score. The best one is kept and the output equals the input when none is better.
  ``eval_texts`` (files never trained on) are scored before and after, and never choose a state.

The output is the input checkpoint with only the trained tensors rewritten (adapters merged, stored
dtype kept, untrained rows byte-identical), its other files copied, plus heal.json and the card.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import open_checkpoint
from ..checkpoint.formats.safetensors import INDEX_NAME
from ..checkpoint.writer import write_weights
from ..config import (CPU_BATCH_SIZE, GENERATE_BATCH_SIZE, RETENTION_GUARD, EvalConfig, HealConfig,
                      check_chunk_terms)
from ..errors import TokenSurgeonError
from ..evaluation import TextScore, evaluate_models
from ..evaluation.bpb import truncate_utf8
from ..evaluation.rows import HealRow, text_labels
from ..recovery.generate import teacher_continuations
from ..recovery.guard import check_guard_tasks
from ..recovery.options import RecoveryOptions
from ..recovery.train import EvalPoint, TextChange, base_of, pick_device, recover
from ..runtime.outdir import atomic_directory, check_output_path
from ..runtime.progress import Progress, Stopwatch, phase
from ..vocab import load_tokenizer

ADAPTER_DIR = "adapter"


@dataclass
class HealReport:
    """What heal did and what it bought: bits per byte before and after, per held-out part and unseen file."""

    version: str
    patched: str
    out: str
    teacher: str | None
    objective: str
    train: str
    trainable: dict[str, int]
    steps_run: int
    best_step: int
    improved: bool
    stopped_by: str
    tokens_per_second: float
    seconds_per_step: float
    options: dict[str, Any]
    device: str
    adapter: str | None = None
    texts: list[HealRow] = field(default_factory=list)
    unseen: list[HealRow] = field(default_factory=list)
    history: list[EvalPoint] = field(default_factory=list)
    tasks_before: dict[str, float] = field(default_factory=dict)  # --guard-task scores: input and kept state
    tasks_after: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_held_out(text: str, fraction: float) -> tuple[str, str]:
    """(training part, held-out part): the last fraction of the UTF-8 bytes, cut between characters."""
    train = truncate_utf8(text, int(len(text.encode("utf-8")) * (1 - fraction)))
    return train, text[len(train):]


def recovery_options(config: HealConfig, guard_tasks: tuple[str, ...]) -> RecoveryOptions:
    """The engine's options from a HealConfig (evaluation context as `evaluate`'s, so ratios compare), with the
    guard tasks resolved (HealConfig.guard_tasks_for)."""
    return RecoveryOptions(
        objective=config.objective, lm_mix=config.lm_mix, kl_mix=config.kl_mix, hidden_mix=config.hidden_mix,
        temperature=config.temperature,
        train=config.train,
        steps=config.steps, lr=config.lr, lora_lr=config.lora_lr, lora_rank=config.lora_rank, body_lr=config.body_lr,
        anchor_weight=config.anchor_weight, batch_rows=config.batch_rows, batch_size=config.batch_size,
        context=config.context, eval_every=config.eval_every, patience=config.patience, eval_max_bytes=config.eval_max_bytes,
        max_minutes=config.max_minutes, guard_tasks=guard_tasks,
        gradient_checkpointing=config.gradient_checkpointing, seed=config.seed)


def resolve_teacher(config: HealConfig) -> Path | None:
    """--teacher, else the base PATCHED's report.json records (when that directory exists), else None."""
    return Path(config.teacher) if config.teacher is not None else base_of(config.patched)


def _read(paths: tuple[Path, ...]) -> dict[str, str]:
    return {label: Path(p).read_text(encoding="utf-8", errors="replace") for label, p in zip(text_labels(paths), paths)}


def _base_scores(config: HealConfig, texts: dict[str, str]) -> list[TextScore] | None:
    """The transplant's base model on the same texts (its report.json names it), for ratios."""
    base = base_of(config.patched)
    if not config.compare_base or base is None or not texts:
        return None
    return evaluate_models([base], texts, device=config.device, context=EvalConfig.context,
                           batch_size=min(config.batch_size or CPU_BATCH_SIZE, EvalConfig.batch_size),
                           max_bytes=config.eval_max_bytes,
                           trust_remote_code=config.trust_remote_code)[0].scores


def _generated(config: HealConfig, teacher: Path, prompts_from: dict[str, str], progress: Progress | None) -> str:
    """The teacher's greedy continuations of config.generate prompts, as one training text."""
    written = teacher_continuations(teacher, prompts_from, config.generate, context=config.context,
                                    batch_size=GENERATE_BATCH_SIZE, device=pick_device(config.device),
                                    trust_remote_code=config.trust_remote_code, progress=phase(progress, "generate"))
    if not written:
        raise TokenSurgeonError("--generate: the teacher wrote nothing from the training text's prompts (give more "
                                "text, or drop --generate)")
    return "\n\n".join(written)


def heal(config: HealConfig, progress: Progress | None = None) -> HealReport:
    """Train PATCHED by config (objective, train) on config.texts and write the best state to config.out.

    Raises:
        TokenSurgeonError: bad input (missing directory, no teacher for distill, no provenance with
            --train rows, text too short, an output that is or holds an input, output exists without force).
    """
    clock = Stopwatch()
    teacher = resolve_teacher(config)
    guards = config.guard_tasks_for(has_teacher=teacher is not None)
    check_guard_tasks(guards, has_teacher=teacher is not None)  # fails now, not after the models load
    if config.guard_texts and RETENTION_GUARD not in guards:
        raise TokenSurgeonError("--guard-text gives the retention guard its prompts, and no retention guard runs "
                                "here (it needs a teacher, and --guard-task values replace it unless one is "
                                "retention)")
    task_files = [Path(spec) for spec in guards if Path(spec).is_file()]
    inputs = [config.patched, *config.texts, *config.eval_texts, *config.guard_texts, *task_files]
    inputs += [teacher] if teacher is not None else []
    check_output_path(config.out, inputs, force=config.force)
    checkpoint = open_checkpoint(config.patched, trust_remote_code=config.trust_remote_code)
    if teacher is None and config.objective == "distill":
        raise TokenSurgeonError(f"--objective distill needs a teacher: {config.patched}/report.json names no base "
                                "model that exists here; pass --teacher DIR or use --objective lm")
    if teacher is None and config.generate:
        raise TokenSurgeonError(f"--generate needs a teacher: {config.patched}/report.json names no base model that "
                                "exists here; pass --teacher DIR")
    if teacher is not None and (config.kl_mix or config.hidden_mix):  # HealConfig: only with distill
        remote = config.trust_remote_code  # fails now, not after the base model is scored
        vocabs = [load_tokenizer(p, trust_remote_code=remote).get_vocab() for p in (config.patched, teacher)]
        check_chunk_terms(config.kl_mix, config.hidden_mix, across=vocabs[0] != vocabs[1],
                          width=checkpoint.hidden_size,
                          teacher_width=open_checkpoint(teacher, trust_remote_code=remote).hidden_size)
    texts = _read(config.texts)
    splits = {label: split_held_out(text, config.held_out) for label, text in texts.items()}
    held_out = {label: held for label, (_, held) in splits.items()}
    unseen = _read(config.eval_texts)
    base_held, base_unseen = _base_scores(config, held_out), _base_scores(config, unseen)
    clock.lap("base")
    train_texts = {label: train for label, (train, _) in splits.items()}
    if config.generate:
        train_texts = {"teacher": _generated(config, teacher, train_texts, progress)}
        clock.lap("generate")
    tick = (lambda step, steps, note: progress("heal", step, steps, note)) if progress is not None else None
    with torch.random.fork_rng():  # the seed governs this run only, not the caller's generator
        model, result = recover(config.patched, train_texts, held_out,
                                recovery_options(config, guards), teacher=teacher, unseen=unseen, device=config.device,
                                guard_texts=_read(config.guard_texts) or None,
                                trust_remote_code=config.trust_remote_code, progress=tick)
    clock.lap("train")
    with atomic_directory(config.out) as staging:
        write_weights(checkpoint, staging, result.replacements, progress=phase(progress, "write"))
        weights = set(checkpoint.files) | {checkpoint.path / INDEX_NAME}
        for source in sorted(Path(config.patched).iterdir()):
            if source.is_file() and source not in weights and source.name != "heal.json":
                shutil.copyfile(source, staging / source.name)
        adapter = None
        if config.save_adapter:
            adapter = staging / ADAPTER_DIR
            if hasattr(model, "peft_config"):
                model.peft_config["default"].base_model_name_or_path = str(config.patched)
            # the adapter holds the LoRA weights and the trained embedding matrices (applied to PATCHED)
            model.save_pretrained(adapter, save_embedding_layers=True)
        del model
        clock.timings["total"] = clock.total()
        report = HealReport(
            version=__version__, patched=str(config.patched), out=str(config.out),
            teacher=str(teacher) if teacher is not None else None, objective=config.objective, train=config.train,
            trainable=result.trainable, steps_run=result.steps_run, best_step=result.best_step,
            improved=result.improved, stopped_by=result.stopped_by, tokens_per_second=result.tokens_per_second,
            seconds_per_step=result.seconds_per_step,
            options={"steps": config.steps, "lr": config.lr, "lora_lr": config.lora_lr, "lora_rank": config.lora_rank,
                     "body_lr": config.body_lr,
                     "lm_mix": config.lm_mix, "kl_mix": config.kl_mix, "hidden_mix": config.hidden_mix,
                     "temperature": config.temperature,
                     "anchor_weight": config.anchor_weight, "batch_rows": config.batch_rows,
                     "batch_size": result.batch_size,
                     "context": config.context, "held_out": config.held_out, "eval_every": config.eval_every,
                     "patience": config.patience, "eval_max_bytes": config.eval_max_bytes,
                     "max_minutes": config.max_minutes, "guard_tasks": list(guards),
                     "guard_texts": [str(p) for p in config.guard_texts],
                     "generate": config.generate, "seed": config.seed},
            device=result.device, adapter=str(config.out / ADAPTER_DIR) if adapter is not None else None,
            texts=[_text_row(row, held_out, config, base_held[i] if base_held else None,
                             train_bytes=None if config.generate else len(splits[row.text][0].encode("utf-8")))
                   for i, row in enumerate(result.held_out)],
            unseen=[_text_row(row, unseen, config, base_unseen[i] if base_unseen else None)
                    for i, row in enumerate(result.unseen)],
            history=result.history, tasks_before=result.tasks_before, tasks_after=result.tasks_after,
            timings=clock.timings)
        (staging / "heal.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        _write_card(config, report, staging)
    return report


def _write_card(config: HealConfig, report: HealReport, staging: Path) -> None:
    """README.md: the patched model's card (kept as it was in PATCHED) with a Healing section."""
    from ..report.card import append_section, invoked_command

    fallback = (f"tokensurgeon heal {config.patched} -o {config.out} --objective {config.objective} "
                f"--train {config.train} --steps {config.steps}")
    append_section(Path(config.patched), staging, "Healing", card_lines(report), command=invoked_command(fallback),
                   tags=("healed",))


def card_lines(report: HealReport) -> list[str]:
    """The model card's Healing section: objective, what trained, bits per byte before and after."""
    from ..report.card import markdown_table

    objective = {"lm": "next-token loss on text", "distill": f"distillation toward `{report.teacher}`"}
    trained = {"rows": "the transplant's computed embedding rows", "embeddings": "every embedding row",
               "lora": "the embeddings and LoRA adapters (merged)", "all": "every weight"}
    lines = [f"Recovery training of {trained.get(report.train, report.train)} by "
             f"{objective.get(report.objective, report.objective)} for {report.steps_run} steps "
             f"({report.tokens_per_second:,.0f} tokens/s); the best held-out state (step {report.best_step}) is kept"
             + ("." if report.improved else ", which is the unhealed one: no step improved it.")]
    if report.options.get("generate"):
        lines[0] += (f" The training text was {report.options['generate']} greedy continuations the teacher wrote "
                     "from prompts cut from the user's text.")
    if report.tasks_before:
        lines += ["", "Guard tasks (a kept state scores no lower than the input on each, and on each text of "
                  "retention; other items than `evaluate --task`): "
                  + ", ".join(f"{name} {report.tasks_before[name]:.3f} -> {report.tasks_after[name]:.3f}"
                              for name in report.tasks_before)]
    for title, rows in (("Bits per byte on the held-out end of each training text:", report.texts),
                        ("Bits per byte on files never trained on:", report.unseen)):
        if not rows:
            continue
        with_base = any(row.base_bpb is not None for row in rows)
        header = ["text", "bytes"] + (["base"] if with_base else []) + ["before heal", "after heal"]
        cells = [[row.text, f"{row.held_out_bytes:,}"]
                 + ([f"{row.base_bpb:.4f}" if row.base_bpb is not None else ""] if with_base else [])
                 + [f"{row.before_bpb:.4f}", f"{row.after_bpb:.4f}"] for row in rows]
        lines += ["", title, ""] + markdown_table(header, cells, "lr" + "r" * (len(header) - 2))
    return lines


def _text_row(row: TextChange, texts: dict[str, str], config: HealConfig, base: TextScore | None,
              train_bytes: int | None = None) -> HealRow:
    """One text's bits per byte before and after, with the base's and the ratios when the base was scored."""
    scored = len(texts[row.text].encode("utf-8"))
    if config.eval_max_bytes is not None:
        scored = min(scored, config.eval_max_bytes)
    if base is None:
        return HealRow(row.text, train_bytes, scored, row.before_bpb, row.after_bpb)
    return HealRow(row.text, train_bytes, scored, row.before_bpb, row.after_bpb, base_bpb=base.bits_per_byte,
                   before_ratio=row.before_bpb / base.bits_per_byte, after_ratio=row.after_bpb / base.bits_per_byte)
