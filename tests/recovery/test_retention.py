"""The retention guard: agreement by hand, prompts at word boundaries, and the guard refusing states whose greedy
continuations leave the teacher's."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from conftest import CORPORA, SMOLLM2_TOKENIZER, build_tiny_model
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation import load_for_eval
from tokensurgeon.recovery.guard import check_guard_tasks, guard_tasks
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.retention import agreement, retention_prompts, teacher_retention
from tokensurgeon.recovery.train import recover

TEXT = (CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:6000]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("ret") / "tiny", SMOLLM2_TOKENIZER, tied=True,
                            dtype=torch.float32)


@pytest.mark.parametrize("ours, reference, expected", [
    ("the cat sat", "the cat sat", 1.0),
    ("the dog", "the cat", 4 / 7),  # "the " agrees, then d != c
    ("", "", 1.0),
    ("x", "", 0.0),
    ("", "abcd", 0.0),
    ("ab", "abcd", 0.5),  # ours stopped early: the bytes it did not write do not agree
    ("é", "è", 0.5),  # bytes, not characters: both start with 0xC3
])
def test_agreement_is_the_share_of_the_references_leading_bytes(ours, reference, expected):
    assert agreement(ours, reference, compare_bytes=16) == pytest.approx(expected)


def test_agreement_compares_only_the_leading_bytes():
    assert agreement("0123456789abcdefXYZ", "0123456789abcdef!!!", compare_bytes=16) == 1.0
    assert agreement("0123456789abcdefXYZ", "0123456789abcdef!!!", compare_bytes=17) == pytest.approx(16 / 17)


def test_prompts_start_and_end_at_word_boundaries():
    prompts = retention_prompts({"news": TEXT}, count=10, chars=80)
    assert len(prompts) == 10 and len(set(prompts)) == 10
    for prompt in prompts:
        at = TEXT.index(prompt)
        assert 0 < len(prompt) <= 80 and prompt == prompt.strip()
        assert at == 0 or TEXT[at - 1].isspace()
        assert TEXT[at + len(prompt)].isspace()


def test_a_model_agrees_with_itself_and_a_changed_one_less(tiny):
    held_out = {"news": TEXT[4000:]}
    task = teacher_retention(tiny, held_out, CPU)
    model, tokenizer = load_for_eval(tiny, device=CPU)
    assert task.run(model, tokenizer).summary["agreement"] == 1.0
    with torch.no_grad():
        torch.manual_seed(0)
        weight = model.get_input_embeddings().weight
        weight.add_(torch.randn_like(weight) * weight.std() * 2)
    assert task.run(model, tokenizer).summary["agreement"] < 0.9


def test_retention_needs_a_teacher():
    with pytest.raises(TokenSurgeonError, match="needs a teacher"):
        check_guard_tasks(("arithmetic", "retention"), has_teacher=False)
    with pytest.raises(TokenSurgeonError, match="needs a teacher"):
        guard_tasks(("retention",))
    check_guard_tasks(("arithmetic", "retention"), has_teacher=True)


def test_the_guard_keeps_no_state_whose_continuations_leave_the_teachers(tiny, tmp_path):
    """The teacher is the input itself, so the input agrees 1.0; lm training moves the continuations, and a state
    is kept only where they still agree fully, however much bits per byte improves."""
    options = RecoveryOptions(objective="lm", train="embeddings", lr=0.1, steps=2, eval_every=1, context=32,
                              batch_size=2, eval_max_bytes=600, eval_context=64)
    texts, held_out = {"news": TEXT[:5000]}, {"news": TEXT[5000:]}
    _, plain = recover(shutil.copytree(tiny, tmp_path / "plain"), texts, held_out, options, device="cpu")
    assert plain.improved
    _, guarded = recover(shutil.copytree(tiny, tmp_path / "guarded"), texts, held_out,
                         replace(options, guard_tasks=("retention",)), teacher=tiny, device="cpu")
    assert guarded.tasks_before == {"retention": 1.0}
    scored = [point for point in guarded.history[1:] if point.tasks]
    assert scored and any(point.tasks["retention"] < 1.0 for point in scored)
    assert guarded.improved == any(point.tasks["retention"] == 1.0 for point in scored)
    if not guarded.improved:
        assert guarded.replacements == {} and guarded.tasks_after == {"retention": 1.0}
