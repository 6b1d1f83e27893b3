"""The teacher's continuations as training text (recovery/generate.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CORPORA
from tokensurgeon.config import GENERATE_PROMPT_TOKENS
from tokensurgeon.recovery.generate import prompt_starts, teacher_continuations


def test_prompt_starts_take_the_texts_in_turn_and_start_at_words():
    words = " ".join(f"w{i:03d}" for i in range(400))  # 5 characters a word
    texts = {"a": words, "b": "x" * 10 + " " + words, "empty": "  \n"}
    snippets = prompt_starts(texts, 5, prompt_tokens=2)  # 32 characters each
    assert len(snippets) == 5 and all(len(s) == 32 for s in snippets)
    # a gets 3 of the 5 prompts and b 2 (the texts in turn), grouped by text; each text's first snippet is its start
    assert snippets[0] == words[:32] and snippets[3] == texts["b"][:32]
    room = len(words) - 32  # a's second and third start after the first space at room/3 and 2 room/3
    for snippet, at in ((snippets[1], room // 3), (snippets[2], 2 * room // 3)):
        start = words.index(" ", at) + 1
        assert snippet == words[start:start + 32] and snippet.startswith("w")
    assert prompt_starts({"x": "   "}, 3) == [] and prompt_starts({}, 3) == []


def _greedy(model, tokenizer, prompt: list[int], new: int) -> str:
    """Greedy decoding by hand: the full sequence re-read each step, the argmax appended, stop at EOS."""
    ids = list(prompt)
    for _ in range(new):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] == tokenizer.eos_token_id:
            break
    return tokenizer.decode(ids[1:], skip_special_tokens=True)


def test_continuations_are_the_teachers_greedy_output(tiny_models):
    """Batched (left-padded: one prompt is shorter) generation equals greedy decoding one prompt at a time."""
    teacher = tiny_models["tied"]
    spa = (CORPORA / "udhr" / "spa.txt").read_text(encoding="utf-8")
    texts = {"spa": spa, "short": "Hola mundo."}
    context = GENERATE_PROMPT_TOKENS + 8
    written = teacher_continuations(teacher, texts, 3, context=context, batch_size=3, device=torch.device("cpu"))
    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    prompts = [tokenizer(s, add_special_tokens=False)["input_ids"][:GENERATE_PROMPT_TOKENS]
               for s in prompt_starts(texts, 3)]
    assert [len(p) for p in prompts] == [GENERATE_PROMPT_TOKENS, GENERATE_PROMPT_TOKENS,
                                         len(tokenizer("Hola mundo.")["input_ids"])]
    prefix = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    expected = [_greedy(model, tokenizer, prefix + p, context - 1 - GENERATE_PROMPT_TOKENS) for p in prompts]
    assert written == expected
    assert written[2].startswith("Hola mundo.") and len(written[2]) > len("Hola mundo.")


@pytest.mark.parametrize("batch_size", [1, 2])
def test_continuations_do_not_depend_on_the_batch(tiny_models, batch_size):
    texts = {"spa": (CORPORA / "udhr" / "spa.txt").read_text(encoding="utf-8")}
    args = dict(context=GENERATE_PROMPT_TOKENS + 6, device=torch.device("cpu"))
    ticks = []
    one = teacher_continuations(tiny_models["tied"], texts, 3, batch_size=batch_size,
                                progress=lambda done, total: ticks.append((done, total)), **args)
    assert one == teacher_continuations(tiny_models["tied"], texts, 3, batch_size=3, **args)
    assert ticks[-1] == (3, 3) and len(ticks) == -(-3 // batch_size)
