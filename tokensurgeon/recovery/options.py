"""The options of one recovery run. Defaults shared with heal come from config.HealConfig (one place), the
evaluation's from config.EvalConfig; ``lora_targets`` and ``block`` are the engine's own."""

from __future__ import annotations

from dataclasses import dataclass

from tokensurgeon.config import (DEFAULT_HEAL_OBJECTIVE, DEFAULT_HEAL_TRAIN, HEAL_OBJECTIVES, HEAL_TRAIN, EvalConfig,
                                 HealConfig, check_distill_terms)
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.recovery.student import LORA_TARGETS


@dataclass(frozen=True)
class RecoveryOptions:
    """How to recover one patched model; see the module docstring for train and the guard.

    Attributes:
        objective: "distill" (ALM chunk divergence toward the teacher; token-level KL when the tokenizers
            are one) or "lm" (next-token loss on the text).
        lm_mix: weight of the LM loss added to the distillation loss (objective "distill").
        kl_mix: weight of the next-token KL over the tokens both vocabularies share, at chunk starts, added to
            the ALM loss (objective "distill" across two tokenizers): ALM matches the likelihood of the text's
            own chunks, not which continuation the model prefers, which greedy decoding follows.
        hidden_mix: weight of the distance between student and teacher last hidden states at those same
            positions (objectives.state_loss): the whole state the next prediction is read from, not one
            token's likelihood; needs teacher and student of one width.
        temperature: ALM temperature (the paper's default 100); the loss is scaled by it (objectives.py).
        lora_lr: learning rate of the LoRA adapters (lr is the embeddings').
        body_lr: learning rate of the transformer weights under train "all".
        max_minutes: stop training after this many minutes (None: no budget).
        block: positions per block of float32 logits.
    """

    objective: str = DEFAULT_HEAL_OBJECTIVE
    lm_mix: float = HealConfig.lm_mix
    kl_mix: float = HealConfig.kl_mix
    hidden_mix: float = HealConfig.hidden_mix
    temperature: float = HealConfig.temperature
    train: str = DEFAULT_HEAL_TRAIN
    steps: int = HealConfig.steps
    lr: float = HealConfig.lr
    lora_lr: float = HealConfig.lora_lr
    lora_rank: int = HealConfig.lora_rank
    body_lr: float = HealConfig.body_lr
    lora_targets: tuple[str, ...] = LORA_TARGETS
    anchor_weight: float = HealConfig.anchor_weight
    batch_rows: bool = HealConfig.batch_rows
    batch_size: int | None = HealConfig.batch_size  # None: fit() sizes it (batch.py)
    context: int = HealConfig.context
    eval_every: int = HealConfig.eval_every
    patience: int = HealConfig.patience
    eval_max_bytes: int | None = HealConfig.eval_max_bytes
    guard_tasks: tuple[str, ...] = ()  # heal resolves its default (HealConfig.guard_tasks_for); the engine's is none
    eval_context: int = EvalConfig.context
    eval_batch_size: int = EvalConfig.batch_size  # the most windows per evaluation pass
    max_minutes: float | None = HealConfig.max_minutes
    gradient_checkpointing: bool = HealConfig.gradient_checkpointing
    block: int = 1024
    seed: int = HealConfig.seed

    def __post_init__(self) -> None:
        if self.objective not in HEAL_OBJECTIVES:
            raise TokenSurgeonError(f"--objective {self.objective}: choose one of {', '.join(HEAL_OBJECTIVES)}")
        if self.train not in HEAL_TRAIN:
            raise TokenSurgeonError(f"--train {self.train}: choose one of {', '.join(HEAL_TRAIN)}")
        batch = 1 if self.batch_size is None else self.batch_size  # None: sized by fit() (batch.py)
        if min(self.steps, batch, self.eval_every, self.patience) < 1 or self.context < 4:
            raise TokenSurgeonError("steps, batch size, eval-every and patience must be >= 1 and context >= 4")
        if self.temperature <= 0 or min(self.lm_mix, self.kl_mix, self.hidden_mix) < 0 or min(
                self.lr, self.lora_lr, self.body_lr) <= 0:
            raise TokenSurgeonError("temperature and learning rates must be > 0, lm-mix, kl-mix and hidden-mix >= 0")
        check_distill_terms(self.objective, self.kl_mix, self.hidden_mix)
