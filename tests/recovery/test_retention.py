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
from tokensurgeon.recovery.guard import check_guard_tasks, guard_tasks, keeps_skills, task_scores
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.retention import Retention, agreement, continue_prompts, retention_prompts, teacher_retention
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
    by_text = retention_prompts({"news": TEXT}, count=10, chars=80)
    assert list(by_text) == ["news"]
    prompts = by_text["news"]
    assert len(prompts) == 10 and len(set(prompts)) == 10
    for prompt in prompts:
        at = TEXT.index(prompt)
        assert 0 < len(prompt) <= 80 and prompt == prompt.strip()
        assert at == 0 or TEXT[at - 1].isspace()
        assert TEXT[at + len(prompt)].isspace()


def test_prompts_are_dealt_to_the_texts_in_turn_and_keyed_by_text():
    texts = {"a": TEXT[:3000], "empty": " ", "b": TEXT[3000:]}
    by_text = retention_prompts(texts, count=5, chars=80)
    assert list(by_text) == ["a", "b"] and [len(v) for v in by_text.values()] == [3, 2]
    assert all(prompt in texts[label] for label, prompts in by_text.items() for prompt in prompts)


def test_the_guard_holds_each_texts_agreement_not_just_the_mean(tiny):
    """Text a's references are the model's own continuations (agreement 1.0), text b's are not (0.0): the task
    reports both, and a state whose mean rose while one text fell is not kept."""
    model, tokenizer = load_for_eval(tiny, device=CPU)
    prompts = retention_prompts({"a": TEXT[:3000], "b": TEXT[3000:]}, count=4)
    own = continue_prompts(model, tokenizer, prompts["a"])
    task = Retention(prompts["a"] + prompts["b"], own + ["\x00 never written"] * len(prompts["b"]),
                     ["a"] * len(prompts["a"]) + ["b"] * len(prompts["b"]))
    result = task.run(model, tokenizer)
    assert [(g["text"], g["n"], g["agreement"]) for g in result.groups] == [("a", 2, 1.0), ("b", 2, 0.0)]
    assert result.summary["agreement"] == 0.5
    before = task_scores(model, tokenizer, {"retention": task})
    assert before == {"retention": 0.5, "retention:a": 1.0, "retention:b": 0.0}
    assert not keeps_skills({"retention": 0.6, "retention:a": 0.9, "retention:b": 0.3}, before)
    assert keeps_skills({"retention": 0.6, "retention:a": 1.0, "retention:b": 0.2}, before)


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
