"""Options of heal (recovery training of a patched checkpoint), with their defaults; re-exported by
tokensurgeon.config. The recovery engine's own options (recovery/options.py) take theirs from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import TokenSurgeonError

HEAL_OBJECTIVES = ("distill", "lm")
HEAL_TRAIN = ("rows", "embeddings", "lora", "all")
HEAL_ROWS = {"new": "rows", "all": "embeddings"}  # the old --rows values, kept as aliases of --train
DEFAULT_HEAL_OBJECTIVE = "distill"  # docs/heal.md: on P2 and on P1 at 30 CPU minutes, better ratio and behaviour
DEFAULT_HEAL_TRAIN = "lora"
CPU_BATCH_SIZE = 4  # sequences per step on CPU when --batch-size is not given
MAX_AUTO_BATCH = 64  # the most sequences per step sized from free GPU memory (recovery/batch.py)
GENERATE_PROMPT_TOKENS = 32  # teacher tokens of user text before each --generate continuation
GENERATE_BATCH_SIZE = 32  # prompts the teacher continues at once (greedy, KV-cached: small beside training)
RETENTION_GUARD = "retention"  # --guard-task value: agreement with the teacher's continuations (recovery/retention.py)
DEFAULT_GUARD_TASKS = (RETENTION_GUARD,)  # with a teacher; docs/heal.md: it refused the P1 states that lost behaviour
NO_GUARD = "none"  # --guard-task none: no guard task, the held-out rule alone
RETENTION_PROMPTS = 24  # prompts from the held-out text: 24 x 16 greedy tokens is seconds a guard run on CPU
RETENTION_PROMPT_CHARS = 80  # at most this many characters a prompt, cut at a word boundary
RETENTION_NEW_TOKENS = 16  # greedy tokens each side writes
RETENTION_BYTES = 16  # leading bytes of the teacher's continuation compared (bench_recovery's measure)


@dataclass(frozen=True)
class HealConfig:
    """Options of one heal: recovery training of a patched checkpoint (jobs/heal.py on tokensurgeon.recovery).

    Attributes:
        texts: text files; the last ``held_out`` fraction of each (by bytes) is held out, the rest trained on.
        objective: "lm" (next-token loss on the text) or "distill" (ALM chunk divergence toward the teacher;
            token-level KL when teacher and student share a tokenizer, as for drafts); ``lm_mix`` adds the LM
            loss to distill with that weight, ``kl_mix`` the next-token KL over the tokens both vocabularies
            share, at the positions where both tokenizations start a token at the same byte, ``hidden_mix`` the
            distance between the two models' last hidden states at those positions (same width only).
        train: "rows" (rows the transplant computed plus copies of barely trained base rows), "embeddings"
            (every row, ``anchor_weight`` pulling the others back), "lora" (embeddings plus LoRA adapters of
            rank ``lora_rank`` on the attention and MLP projections, merged into the output) or "all" (every
            weight, the body at ``body_lr``; the teacher is then a second model copy, never the student's body).
        rows: deprecated alias of the previous heal: objective "lm" with train "rows" ("new") or "embeddings"
            ("all"); an objective or train given beside it must agree with it.
        teacher: the distillation teacher; None = the base recorded in PATCHED/report.json.
        eval_texts: held-out files never trained on, scored before and after beside the in-file held-out split.
        max_minutes: training time budget (None = steps only).
        save_adapter: also write the PEFT adapter (LoRA + embeddings) to OUT/adapter (--train lora).
        anchor_weight: L2 penalty weight (summed squared distance) keeping anchored rows near their start.
        batch_rows: only rows of tokens in a step's batch move in that step. Adam's step does not shrink with the
            gradient, so the softmax's tiny push on the rows of tokens the text never shows (every row, under a
            tied head) would move them as far as the rows trained.
        batch_size: sequences per step; None = CPU_BATCH_SIZE on CPU, on CUDA as many as free memory holds (at
            most MAX_AUTO_BATCH; recovery/batch.py). Evaluation passes take at most evaluate's batch.
        context: tokens per training sequence, BOS included.
        eval_every: steps between held-out evaluations; the best one is kept.
        patience: stop after this many evaluations in a row without a better held-out score.
        eval_max_bytes: score at most this many bytes of each held-out part (quick, bounded evaluations).
        guard_tasks: evaluation tasks (names or multiple-choice .jsonl files) the kept state must score no lower on
            than the input; a generated task runs other items than ``evaluate --task`` (Task.guard_variant);
            "retention" (needs a teacher) is agreement with the teacher's greedy continuations of held-out prompts.
            None: DEFAULT_GUARD_TASKS when there is a teacher, none without; ("none",): none (``guard_tasks_for``).
        guard_texts: files the retention guard cuts its prompts from, instead of the held-out split: the kinds of
            text whose behaviour must not change (never training text: the guard would then test what it fits).
        compare_base: also score the transplant's base model on the held-out text (for ratios).
        generate: train on this many greedy continuations the teacher writes from prompts cut from the training
            text, instead of the text itself (recovery/generate.py); the held-out split stays the user's text.
    """

    patched: Path
    texts: tuple[Path, ...]
    out: Path
    objective: str | None = None
    lm_mix: float = 0.0
    kl_mix: float = 0.0
    hidden_mix: float = 0.0
    temperature: float = 100.0
    train: str | None = None
    rows: str | None = None
    teacher: Path | None = None
    eval_texts: tuple[Path, ...] = ()
    guard_tasks: tuple[str, ...] | None = None
    guard_texts: tuple[Path, ...] = ()
    steps: int = 100
    lr: float = 1e-3
    lora_lr: float = 5e-4
    lora_rank: int = 16
    body_lr: float = 1e-4  # --train all: the transformer weights'; embeddings keep lr
    anchor_weight: float = 1.0
    batch_rows: bool = True  # docs/heal.md: P2 ratio 1.419 -> 1.413, retention 0.289 -> 0.328; P1 retention kept
    batch_size: int | None = None
    context: int = 128
    held_out: float = 0.1
    eval_every: int = 20
    patience: int = 3
    eval_max_bytes: int | None = 8000
    max_minutes: float | None = None
    save_adapter: bool = False
    gradient_checkpointing: bool = False
    compare_base: bool = True
    generate: int = 0
    seed: int = 0
    device: str = "auto"
    force: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.texts:
            raise TokenSurgeonError("heal needs text to train on: pass --text FILE (repeatable)")
        for text in (*self.texts, *self.eval_texts, *self.guard_texts):
            if not Path(text).is_file():
                raise TokenSurgeonError(f"text file {text} does not exist")
        trained = {Path(text).resolve() for text in self.texts}
        for text in self.guard_texts:
            if Path(text).resolve() in trained:
                raise TokenSurgeonError(f"--guard-text {text} is also a --text: the guard's prompts must come from "
                                        "text that is not trained on")
        if self.rows is not None:
            if self.rows not in HEAL_ROWS:
                raise TokenSurgeonError(f"--rows must be 'new' or 'all' (aliases of --train rows|embeddings), "
                                        f"not {self.rows!r}")
            alias = {"objective": "lm", "train": HEAL_ROWS[self.rows]}
            for name, value in alias.items():
                if getattr(self, name) not in (None, value):
                    raise TokenSurgeonError(f"--rows {self.rows} means --objective lm --train {alias['train']}; it "
                                            f"conflicts with --{name} {getattr(self, name)}: drop --rows")
                object.__setattr__(self, name, value)
        object.__setattr__(self, "objective", self.objective or DEFAULT_HEAL_OBJECTIVE)
        object.__setattr__(self, "train", self.train or DEFAULT_HEAL_TRAIN)
        if self.objective not in HEAL_OBJECTIVES:
            raise TokenSurgeonError(f"--objective must be one of {', '.join(HEAL_OBJECTIVES)}, not {self.objective!r}")
        if self.train not in HEAL_TRAIN:
            raise TokenSurgeonError(f"--train must be one of {', '.join(HEAL_TRAIN)}, not {self.train!r}")
        if self.teacher is not None and not (Path(self.teacher) / "config.json").is_file():
            raise TokenSurgeonError(f"--teacher {self.teacher}: not a model directory (no config.json)")
        if self.save_adapter and self.train != "lora":
            raise TokenSurgeonError("--save-adapter needs --train lora (only LoRA training makes an adapter)")
        batch = 1 if self.batch_size is None else self.batch_size  # None: sized by the device (recovery/batch.py)
        if min(self.steps, self.eval_every, self.patience, batch, self.lora_rank) < 1:
            raise TokenSurgeonError("--steps, --eval-every, --patience, --batch-size and --lora-rank must be at "
                                    "least 1")
        if (not (self.lr > 0 and self.lora_lr > 0 and self.body_lr > 0 and self.temperature > 0)
                or min(self.anchor_weight, self.lm_mix, self.kl_mix, self.hidden_mix) < 0):
            raise TokenSurgeonError("--lr, --lora-lr, --body-lr and --temperature must be positive, --anchor-weight, "
                                    "--lm-mix, --kl-mix and --hidden-mix at least 0")
        check_distill_terms(self.objective, self.kl_mix, self.hidden_mix)
        if self.guard_tasks is not None and NO_GUARD in self.guard_tasks and len(self.guard_tasks) > 1:
            raise TokenSurgeonError("--guard-task none turns the guard tasks off; it does not go with others")
        if self.generate < 0:
            raise TokenSurgeonError("--generate must be at least 0")
        if self.context < 4:
            raise TokenSurgeonError("--context must be at least 4 tokens")
        if not 0 < self.held_out < 1:
            raise TokenSurgeonError(f"--held-out must be a fraction between 0 and 1, not {self.held_out}")
        if self.eval_max_bytes is not None and self.eval_max_bytes < 1:
            raise TokenSurgeonError("--eval-max-bytes must be positive")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise TokenSurgeonError("--max-minutes must be positive")

    def guard_tasks_for(self, has_teacher: bool) -> tuple[str, ...]:
        return guard_tasks_for(self.guard_tasks, has_teacher)


def check_distill_terms(objective: str, kl_mix: float, hidden_mix: float) -> None:
    """--kl-mix and --hidden-mix compare the student with a teacher: with --objective lm they would be ignored."""
    if objective != "distill" and (kl_mix or hidden_mix):
        raise TokenSurgeonError(f"--kl-mix and --hidden-mix are terms of --objective distill, not of --objective "
                                f"{objective}")


def check_chunk_terms(kl_mix: float, hidden_mix: float, *, across: bool, width: int, teacher_width: int) -> None:
    """--kl-mix and --hidden-mix compare the two models where two tokenizations meet; say so rather than ignore them."""
    if not (kl_mix or hidden_mix):
        return
    if not across:
        raise TokenSurgeonError("--kl-mix and --hidden-mix compare two tokenizations; teacher and student share one "
                                "here, and distillation is already the token-level KL over the whole vocabulary")
    if hidden_mix and width != teacher_width:
        raise TokenSurgeonError(f"--hidden-mix compares hidden states, but the student's are {width} wide and the "
                                f"teacher's {teacher_width}")


def guard_tasks_for(given: tuple[str, ...] | None, has_teacher: bool) -> tuple[str, ...]:
    """The guard tasks a heal runs: those given (("none",): none), else DEFAULT_GUARD_TASKS when there is a
    teacher to compare with, else none."""
    if given is None:
        return DEFAULT_GUARD_TASKS if has_teacher else ()
    return () if given == (NO_GUARD,) else given
