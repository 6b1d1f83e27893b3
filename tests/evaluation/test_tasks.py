"""Task retention: generated arithmetic checked independently, multiple choice against hand-computed log-likelihoods."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation.tasks import TASKS, get_task, markdown_table, table_rows
from tokensurgeon.evaluation.tasks import arithmetic as arith
from tokensurgeon.evaluation.tasks.base import TaskResult
from tokensurgeon.evaluation.tasks.multiple_choice import MultipleChoice, encode_pair, loglikelihoods, read_items


def _solve(question: str) -> int:
    """Independent check: parse '<a> <op> <b> =' and compute it."""
    a, op, b, equals = question.split()
    assert equals == "="
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_generated_problems_are_right_and_deterministic():
    groups = arith.generate_problems(seed=7, per_group=20, shots=4)
    assert len(groups) == 3 * 6
    assert groups == arith.generate_problems(seed=7, per_group=20, shots=4)
    assert groups != arith.generate_problems(seed=8, per_group=20, shots=4)
    for shots, tests in groups:
        assert len(tests) == 20 and len(shots) == 4
        pairs = [(p.a, p.b) for p in tests]
        assert len(set(pairs)) == 20 and not set(pairs) & {(p.a, p.b) for p in shots}
        for problem in shots + tests:
            assert _solve(problem.question) == problem.answer
            assert problem.answer >= 0
            if problem.digits > 1:
                assert len(str(problem.a)) == len(str(problem.b)) == problem.digits
            else:
                assert 0 <= problem.a <= 9 and 0 <= problem.b <= 9
        text = arith.prompt(shots, tests[0])
        assert text.endswith(tests[0].question) and text.count("\n") == 4
        for line in text.splitlines()[:-1]:
            question, answer = line.rsplit(" ", 1)
            assert _solve(question) == int(answer)


def test_small_operand_space_is_not_overdrawn():
    shots, tests = arith.generate_problems(per_group=200, shots=4, ops=("sub",), digits=(1,))[0]
    assert len(tests) == len({(p.a, p.b) for p in tests}) <= 55 and len(tests) > 40


@pytest.mark.parametrize("text, expected", [(" 82\n", 82), ("82", 82), (" -3 apples", -3), (" 1205756625.0", 1205756625),
                                            ("", None), (" eighty", None), ("\n82", None)])
def test_parse_answer(text, expected):
    assert arith.parse_answer(text) == expected


def test_scoring_counts_exact_matches(monkeypatch):
    """An oracle scores 1, an off-by-one model 0: the scoring is exact match on the parsed answer."""
    def oracle(model, tokenizer, prompts, max_new_tokens, batch_size=16, wrong=0):
        return [f" {_solve(p.splitlines()[-1]) + wrong}\nignored" for p in prompts]

    task = get_task("arithmetic", per_group=3, shots=2)
    monkeypatch.setattr(arith, "greedy_complete", oracle)
    perfect = task.run(None, None, label="oracle")
    assert perfect.summary["accuracy"] == 1.0 and perfect.summary["n"] == 54
    monkeypatch.setattr(arith, "greedy_complete", lambda *a, **k: oracle(*a, **k, wrong=1))
    wrong = task.run(None, None, label="off-by-one")
    assert wrong.summary["accuracy"] == 0.0
    assert arith.accuracy_by_digits(perfect) == {d: 1.0 for d in range(1, 7)}
    header, rows = table_rows([perfect, wrong])
    assert header == ["op", "digits", "n", "oracle accuracy", "off-by-one accuracy"]
    assert rows[-1] == ["all", "", "54", "1.000", "0.000"]
    assert markdown_table([perfect, wrong]).count("\n") == 2 + 18 + 1


def test_batched_greedy_equals_one_at_a_time(tiny_models):
    model, tokenizer = _load(tiny_models["tied"])
    shots, tests = arith.generate_problems(per_group=5, shots=2, ops=("add", "mul"), digits=(1, 4))[3]
    prompts = [arith.prompt(shots, p) for p in tests] + ["1 + 1 ="]  # unequal lengths: left padding is exercised
    batched = arith.greedy_complete(model, tokenizer, prompts, 6, batch_size=8)
    single = [arith.greedy_complete(model, tokenizer, [p], 6, batch_size=1)[0] for p in prompts]
    assert batched == single


def test_arithmetic_runs_on_a_model(tiny_models):
    model, tokenizer = _load(tiny_models["tied"])
    result = get_task("arithmetic", per_group=2, shots=1, digits=(1, 2)).run(model, tokenizer, label="tiny")
    assert [(row["op"], row["digits"]) for row in result.groups] == [(op, d) for op in ("add", "sub", "mul") for d in (1, 2)]
    assert 0.0 <= result.summary["accuracy"] <= 1.0 and json.dumps(result.to_dict())


def _by_hand(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | BOS + context), one forward pass per continuation token, no batching or padding."""
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = [tokenizer.bos_token_id] + context_ids
    total = 0.0
    for token in continuation_ids:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        total += (logits[token] - torch.logsumexp(logits, 0)).item()
        ids.append(token)
    return total


def test_encode_pair_moves_trailing_space(tiny_models):
    _, tokenizer = _load(tiny_models["tied"])
    context_ids, continuation_ids = encode_pair(tokenizer, "The sky is ", "blue")
    assert context_ids == tokenizer("The sky is", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(continuation_ids) == " blue"


def test_multiple_choice_matches_hand_computed_loglikelihoods(tiny_models, tmp_path):
    model, tokenizer = _load(tiny_models["tied"])
    items = [{"context": "The capital of France is", "choices": ["Paris", "a very long city name indeed", "Rome"], "gold": 0},
             {"context": "Two plus two equals", "choices": ["four", "five"], "gold": 1, "group": "math"},
             {"context": "Question: what colour is grass?\nAnswer:", "choices": ["green", "purple", "x"], "gold": 2}]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    pairs = [(item["context"], " " + choice) for item in items for choice in item["choices"]]
    hand = [_by_hand(model, tokenizer, *pair) for pair in pairs]
    batched = loglikelihoods(model, tokenizer, pairs, batch_size=3)
    assert batched == pytest.approx(hand, abs=1e-3)

    result = MultipleChoice(path).run(model, tokenizer, label="tiny")
    start, acc, acc_norm = 0, 0, 0
    for item in items:
        lls = hand[start:start + len(item["choices"])]
        start += len(item["choices"])
        acc += max(range(len(lls)), key=lambda i: lls[i]) == item["gold"]
        normed = [ll / len(c) for ll, c in zip(lls, item["choices"])]
        acc_norm += max(range(len(lls)), key=lambda i: normed[i]) == item["gold"]
    assert result.summary["acc"] == pytest.approx(acc / 3) and result.summary["acc_norm"] == pytest.approx(acc_norm / 3)
    assert [row["group"] for row in result.groups] == ["all", "math"] and result.groups[1]["n"] == 1
    assert all(math.isfinite(ll) for ex in result.examples for ll in ex["loglikelihoods"])


def test_multiple_choice_file_errors(tmp_path):
    bad_gold = tmp_path / "gold.jsonl"
    bad_gold.write_text(json.dumps({"context": "c", "choices": ["a", "b"], "gold": 2}) + "\n")
    with pytest.raises(TokenSurgeonError, match=r"gold.jsonl:1: 'gold'"):
        read_items(bad_gold)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"context": "c", "choices": ["a", "b"], "gold": 0}\n{oops\n')
    with pytest.raises(TokenSurgeonError, match="not valid JSON lines"):
        read_items(broken)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"context": "c", "choices": ["a", "b"], "gold": 1}] * 5))
    assert len(read_items(listed, limit=2)) == 2


def test_get_task():
    assert "arithmetic" in TASKS
    with pytest.raises(TokenSurgeonError, match="not a task"):
        get_task("spelling")
    assert isinstance(TaskResult("t", "m", ("acc",), [], {}).to_dict(), dict)


def test_evaluate_task_from_the_command_line(tiny_models, tmp_path):
    from typer.testing import CliRunner

    from tokensurgeon.cli import app

    items = tmp_path / "mc.jsonl"
    items.write_text(json.dumps({"context": "The sky is", "choices": ["blue", "green"], "gold": 0}) + "\n")
    result = CliRunner().invoke(app, ["evaluate", str(tiny_models["tied"]), str(tiny_models["untied"]), "--task",
                                      str(items), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stderr may hold a progress line when the machine is slow
    assert data["task"]["items"] == 1 and [r["summary"]["n"] for r in data["results"]] == [1, 1]
    result = CliRunner().invoke(app, ["evaluate", str(tiny_models["tied"]), "--task", "arithmetic", "--task-items", "1",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "task: arithmetic" in result.output and "mul" in result.output
    result = CliRunner().invoke(app, ["evaluate", str(tiny_models["tied"])])
    assert result.exit_code == 2 and "--task" in result.output


def test_arithmetic_guard_variant_draws_other_fewer_short_problems():
    """heal's guard must not tune on what `evaluate --task arithmetic` scores, and runs at every evaluation."""
    task = arith.Arithmetic()
    guard = task.guard_variant()
    assert guard.seed != task.seed and guard.per_group <= 5 and max(guard.digits) <= 3 and guard.ops == task.ops
    scored = {p.question for _, tests in arith.generate_problems(task.seed, task.per_group, task.shots, task.ops,
                                                                 (1, 2, 3)) for p in tests}
    guarded = {p.question for _, tests in arith.generate_problems(guard.seed, guard.per_group, guard.shots, guard.ops,
                                                                  guard.digits) for p in tests}
    assert len(guarded) == 3 * 3 * guard.per_group and len(guarded & scored) < len(guarded) / 3
