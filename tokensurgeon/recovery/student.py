"""Teacher and student in one model copy: the patched model is the student; the teacher is its own body
read with the base tokenizer, the base embedding/head rows, and any LoRA adapters switched off.

Every transplant keeps the base model's transformer weights byte for byte, so the teacher needs no
second copy of them: memory stays near one model plus the base embedding matrix (and the base head
when it is untied). A teacher whose body differs (a draft's target model) is loaded on its own, frozen.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from tokensurgeon.checkpoint import Checkpoint, open_checkpoint, read_embeddings, read_tensor
from tokensurgeon.errors import TokenSurgeonError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_BODY_PROBES = 3  # body tensors compared with the teacher checkpoint to decide whether one copy serves both


def unwrap(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_weight(model: Any) -> torch.Tensor:
    """The output matrix; a tied head is the input matrix itself."""
    base = unwrap(model)
    head = base.get_output_embeddings()
    return head.weight if head is not None else base.get_input_embeddings().weight


def softcap(model: Any) -> float | None:
    """Gemma-style final logit soft-capping, when the model config has it."""
    config = unwrap(model).config
    return getattr(getattr(config, "text_config", config), "final_logit_softcapping", None)


def hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states (B, L, H): everything but the head, whose logits are taken in blocks."""
    decoder = unwrap(model).get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def add_lora(model: Any, *, rank: int, targets: tuple[str, ...], alpha: float | None = None,
             dropout: float = 0.0) -> Any:
    """Wrap model with PEFT LoRA adapters on the named projections; embeddings stay trainable.

    PEFT freezes every base parameter, the (possibly tied) embeddings included; the caller decides which
    of them train again (train.py re-enables the embedding matrices).
    """
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in unwrap(model).named_modules()}
    missing = sorted(set(targets) - present)
    if missing:
        raise TokenSurgeonError(f"--lora-targets {','.join(missing)}: no such module in this model "
                                f"(it has e.g. {', '.join(sorted(t for t in LORA_TARGETS if t in present))})")
    if rank < 1:
        raise TokenSurgeonError(f"--lora-rank {rank}: must be at least 1")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=dropout,
                        target_modules=list(targets), bias="none")
    return get_peft_model(model, config)


@dataclass
class Teacher:
    """The model that sets the targets: its tokenizer, input rows, head and where its body lives.

    Attributes:
        model: a separate frozen model, or None when the student's own body (adapters off) is the teacher.
        embed: the teacher's input embedding matrix (frozen), swapped into the student for the teacher pass.
        head: the teacher's output matrix (frozen; the same tensor as embed when tied).
    """

    tokenizer: Any
    embed: torch.Tensor
    head: torch.Tensor
    softcap: float | None
    model: Any = None

    @property
    def shares_body(self) -> bool:
        return self.model is None

    def hidden(self, student: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Teacher hidden states, without gradient; through the student's body when they share it."""
        with torch.no_grad():
            if self.model is not None:
                return hidden_states(self.model, input_ids, attention_mask)
            with _adapters_off(student), _input_rows(student, self.embed):
                return hidden_states(student, input_ids, attention_mask)


@contextmanager
def _input_rows(model: Any, weight: torch.Tensor) -> Iterator[None]:
    """Run the student's embedding module on another matrix (its scaling, e.g. Gemma's sqrt(H), still applies)."""
    module = unwrap(model).get_input_embeddings()
    own = module.weight
    module.weight = torch.nn.Parameter(weight, requires_grad=False)
    try:
        yield
    finally:
        module.weight = own


def _adapters_off(model: Any):
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


def same_body(student: Any, teacher: Checkpoint) -> bool:
    """Whether the student's transformer weights are the teacher checkpoint's (a few tensors, compared exactly)."""
    state = unwrap(student).state_dict()
    skip = {teacher.input_name, teacher.output_name}
    names = [name for name in teacher.tensors if name not in skip]
    if not names or any(name not in state for name in names):
        return False
    probes = [names[int(i * (len(names) - 1) / max(_BODY_PROBES - 1, 1))] for i in range(_BODY_PROBES)]
    for name in probes:
        stored = read_tensor(teacher.tensors[name])
        if state[name].shape != stored.shape or not torch.equal(state[name].to("cpu", stored.dtype), stored):
            return False
    return True


def load_teacher(path: Path, student: Any, *, device: torch.device, share_body: bool = True,
                 trust_remote_code: bool = False) -> Teacher:
    """The teacher at path: its rows only when its body is the student's (and share_body: the body will not
    train), else the whole model, frozen."""
    from tokensurgeon.evaluation import load_for_eval
    from tokensurgeon.vocab import load_tokenizer

    checkpoint = open_checkpoint(path, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if share_body and same_body(student, checkpoint):
        embed, head = read_embeddings(checkpoint)
        embed = embed.to(device=device, dtype=torch.float32)
        head = embed if head is None else head.to(device=device, dtype=torch.float32)
        return Teacher(tokenizer, embed, head, softcap(student))
    model, tokenizer = load_for_eval(path, device=device, trust_remote_code=trust_remote_code)
    model.requires_grad_(False)
    return Teacher(tokenizer, model.get_input_embeddings().weight, head_weight(model), softcap(model), model)
