"""Training text written by the teacher: its greedy continuations of prompts cut from the user's text.

Speculative decoding keeps a draft's tokens only where they equal the target's own greedy choices, so
the text a draft must imitate is the target's output, not the user's: sequence-level distillation
(Kim & Rush 2016; DistillSpec, Zhou et al. 2024) trains on it. With the transplant's base as teacher,
the same continuations carry the base's behaviour (what it writes) rather than the user's text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tokensurgeon.config import GENERATE_PROMPT_TOKENS

Tick = Callable[[int, int], None]  # (continuations written, total)


def prompt_starts(texts: dict[str, str], count: int, prompt_tokens: int = GENERATE_PROMPT_TOKENS) -> list[str]:
    """prompt_starts_by_text's snippets, grouped by text in one list."""
    return [snippet for snippets in prompt_starts_by_text(texts, count, prompt_tokens).values() for snippet in snippets]


def prompt_starts_by_text(texts: dict[str, str], count: int, prompt_tokens: int = GENERATE_PROMPT_TOKENS
                          ) -> dict[str, list[str]]:
    """``count`` snippets dealt to the texts in turn, keyed by text (a text that gives none is left out), spread
    evenly over each, each starting after a space or newline and long enough for ``prompt_tokens`` tokens (16
    characters a token)."""
    labels = [label for label, text in texts.items() if text.strip()]
    span = 16 * prompt_tokens
    out: dict[str, list[str]] = {}
    for turn, label in enumerate(labels):
        text, n = texts[label], len(range(turn, count, len(labels)))
        room = max(len(text) - span, 0)
        for j in range(n):
            at = room * j // max(n, 1)
            if at:  # start at a word: after the next whitespace
                cut = min((i for i in (text.find(" ", at), text.find("\n", at)) if i >= 0), default=at - 1)
                at = cut + 1
            if text[at:at + span].strip():
                out.setdefault(label, []).append(text[at:at + span])
    return out


def teacher_continuations(teacher: Path, texts: dict[str, str], count: int, *, context: int, batch_size: int,
                          device: torch.device, trust_remote_code: bool = False, progress: Tick | None = None
                          ) -> list[str]:
    """Up to ``count`` texts, each a prompt of GENERATE_PROMPT_TOKENS teacher tokens from ``texts`` and the
    teacher's greedy continuation filling a training sequence of ``context`` tokens, decoded (special tokens
    dropped). The teacher is loaded for this call only, before training, so it adds no memory to training."""
    from tokensurgeon.evaluation.bpb import context_prefix, load_for_eval

    model, tokenizer = load_for_eval(teacher, device=device, dtype=torch.bfloat16 if device.type == "cuda"
                                     else torch.float32, trust_remote_code=trust_remote_code)
    prefix = context_prefix(tokenizer)
    prompts = [tokenizer(snippet, add_special_tokens=False, verbose=False)["input_ids"][:GENERATE_PROMPT_TOKENS]
               for snippet in prompt_starts(texts, count)]
    prompts = [ids for ids in prompts if ids]
    new_tokens = max(1, context - len(prefix) - GENERATE_PROMPT_TOKENS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (prefix or [0])[0]
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [prefix + ids for ids in prompts[start:start + batch_size]]
        width = max(map(len, rows))  # left-padded: generation continues every row from its last column
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=new_tokens,
                                       do_sample=False, pad_token_id=pad)
        for row, ids in zip(rows, generated.tolist()):
            text = tokenizer.decode(row[len(prefix):] + ids[width:], skip_special_tokens=True)
            if text.strip():
                out.append(text)
        if progress is not None:
            progress(min(start + batch_size, len(prompts)), len(prompts))
    del model
    return out
