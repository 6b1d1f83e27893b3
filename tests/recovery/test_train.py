"""Training: identity transplant at the loss minimum, gradients only where --train says, merged output equal
to the PEFT model, and the guard returning the input when nothing improves."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CORPORA, SMOLLM2_TOKENIZER, build_tiny_model
from tokensurgeon.checkpoint import open_checkpoint
from tokensurgeon.evaluation import load_for_eval
from tokensurgeon.evaluation.tasks import TASKS, Task
from tokensurgeon.evaluation.tasks.base import TaskResult
from tokensurgeon.recovery.data import samples, side
from tokensurgeon.recovery.student import load_teacher
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.train import Objective, fit, merged_tensors, recover
from tokensurgeon.recovery.trainable import BatchRows, embedding_params, keep_rows, learning_rates, prepare

TEXT = (CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:6000]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A float32 tied tiny model with a provenance.jsonl marking rows 1000-1999 as computed."""
    out = build_tiny_model(tmp_path_factory.mktemp("rec") / "tiny", SMOLLM2_TOKENIZER, tied=True,
                           dtype=torch.float32)
    rows = open_checkpoint(out).vocab_rows
    lines = [{"id": i, "path": "copy" if not 1000 <= i < 2000 else "subword-mean", "sources": [i]}
             for i in range(rows)]
    (out / "provenance.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return out


def _options(**kw):
    return RecoveryOptions(**({"steps": 2, "eval_every": 1, "context": 32, "batch_size": 2,
                               "eval_max_bytes": 600, "eval_context": 64} | kw))


@pytest.mark.parametrize("kl_mix,hidden_mix", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)])
def test_identity_transplant_is_at_the_minimum(tiny, kl_mix, hidden_mix):
    """Student == teacher (same body, same rows): distill loss 0 and no gradient anywhere, with the shared-token
    KL term or the hidden-state term too."""
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    teacher = load_teacher(tiny, model, device=torch.device("cpu"))
    assert teacher.shares_body
    options = _options(train="embeddings", kl_mix=kl_mix, hidden_mix=hidden_mix)
    model, trainable, _ = prepare(model, options, None)
    student = side(tokenizer)
    # a second tokenizer object (the teacher's) forces the chunk path (ALM), not token-level KL
    objective = Objective(options, student, teacher, side(teacher.tokenizer))
    batch = samples(TEXT, "news", student, side(teacher.tokenizer), options.context)[:2]
    loss, _, _ = objective(model, batch, torch.device("cpu"))
    loss.backward()
    assert abs(loss.item()) < 1e-5
    assert max(p.grad.abs().max().item() for p in trainable.values()) < 1e-6


@pytest.mark.parametrize("train", ["rows", "embeddings", "lora", "all"])
def test_gradients_reach_only_what_train_names(tiny, train):
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    options = _options(objective="lm", train=train)
    model, trainable, _ = prepare(model, options, list(range(1000, 2000)))
    objective = Objective(options, side(tokenizer), None, None)
    loss, _, _ = objective(model, samples(TEXT, "news", side(tokenizer), None, 32)[:2], torch.device("cpu"))
    loss.backward()
    graded = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # lora_B starts at zero, so lora_A's first gradient is zero too: it is trainable but not graded yet
    assert graded <= set(trainable) and graded == {n for n in trainable if "lora_A" not in n}
    if train == "all":
        assert graded == {n for n, _ in model.named_parameters()}
        return
    assert all("embed_tokens" in n or (train == "lora" and "lora_" in n) for n in graded)
    if train == "lora":
        assert any("lora_" in n for n in graded)
    embed = [p for n, p in model.named_parameters() if "embed_tokens" in n][0]
    if train == "rows":
        assert embed.grad[:1000].abs().max() == 0 and embed.grad[2000:].abs().max() == 0


def test_merged_output_equals_peft_logits(tiny):
    """Adapters with non-zero weights (as after training) merge into plain projections with the same logits."""
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    model, trainable, _ = prepare(model, _options(train="lora"), None)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trainable.items():
            param.add_(torch.randn_like(param) * (0.05 if "lora_" in name else 0.01))
    replacements = merged_tensors(model, open_checkpoint(tiny))
    assert any("q_proj" in name for name in replacements) and "model.embed_tokens.weight" in replacements
    plain = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    plain.load_state_dict(replacements, strict=False)
    ids = torch.tensor([tokenizer(TEXT[:200])["input_ids"]])
    model.eval()
    with torch.no_grad():
        ours, merged = model(input_ids=ids).logits, plain(ids).logits
    assert torch.allclose(merged, ours, atol=1e-4)


def test_train_all_learns_the_body_at_its_own_rate_beside_a_separate_teacher(tiny):
    """train all: the teacher is a second copy (the body it would share moves), the body trains at body_lr and the
    embeddings at lr, and every changed weight is written, giving the trained model's logits."""
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    assert load_teacher(tiny, model, device=torch.device("cpu")).shares_body
    teacher = load_teacher(tiny, model, device=torch.device("cpu"), share_body=False)
    assert not teacher.shares_body
    options = _options(train="all", lr=1e-3, body_lr=1e-5)
    model, trainable, _ = prepare(model, options, list(range(1000, 2000)))
    groups = learning_rates(trainable, embedding_params(model), options)
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-3, 1), (1e-5, len(trainable) - 1)]
    torch.manual_seed(1)
    with torch.no_grad():
        for param in trainable.values():
            param.add_(torch.randn_like(param) * 0.01)
    replacements = merged_tensors(model, open_checkpoint(tiny))
    assert set(replacements) == set(open_checkpoint(tiny).tensors)
    plain = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    result = plain.load_state_dict(replacements, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied: stored once
    ids = torch.tensor([tokenizer(TEXT[:200])["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_train_all_refuses_a_teacher_that_reads_the_students_body(tiny):
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    teacher = load_teacher(tiny, model, device=torch.device("cpu"))
    with pytest.raises(AssertionError, match="shared-body teacher"):
        fit(model, tokenizer, {"news": TEXT[:3000]}, {"news": TEXT[3000:4000]},
            _options(objective="distill", train="all"), teacher=teacher)


def test_guard_returns_the_input_when_nothing_improves(tiny, tmp_path):
    """An absurd learning rate makes every state worse: the model ends as it began and nothing is replaced."""
    patched = shutil.copytree(tiny, tmp_path / "p")
    start = AutoModelForCausalLM.from_pretrained(patched, dtype=torch.float32).state_dict()
    model, result = recover(patched, {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                            _options(objective="lm", train="lora", lr=50.0, lora_lr=50.0), device="cpu")
    assert not result.improved and result.replacements == {}
    assert result.held_out[0].after_bpb == result.held_out[0].before_bpb
    merged = model.merge_and_unload().state_dict()
    assert all(torch.equal(merged[name], tensor) for name, tensor in start.items())


def test_result_to_dict_leaves_out_replacements_with_a_graph():
    """Merged LoRA tensors used to carry a grad_fn, and asdict's deepcopy of them raised."""
    from tokensurgeon.recovery.train import RecoveryResult

    weight = torch.ones(2, requires_grad=True)
    result = RecoveryResult(True, 1, 1, {"w": 2}, [], [], [], 1.0, 1.0, "steps", "cpu", replacements={"w": weight * 2})
    data = result.to_dict()
    assert "replacements" not in data and data["trainable"] == {"w": 2}


def test_batch_rows_moves_only_the_rows_of_tokens_in_the_batch(tiny):
    """Under a tied head every row gets the softmax's push; Adam's step does not shrink with the gradient, so
    without batch_rows the rows of tokens the batch never shows move as far as the others."""
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    options = _options(objective="lm", train="embeddings", anchor_weight=0.0)
    model, _, _ = prepare(model, options, None)
    embed = [p for n, p in model.named_parameters() if "embed_tokens" in n][0]
    batch = samples(TEXT, "news", side(tokenizer), None, 32)[:2]
    moved = {}
    for keep in (False, True):
        start = embed.detach().clone()
        optimizer = torch.optim.AdamW([embed], lr=1e-3, weight_decay=0.0)
        loss, _, seen = Objective(options, side(tokenizer), None, None)(model, batch, torch.device("cpu"))
        loss.backward()
        if keep:
            keep_rows([embed], seen)
        optimizer.step()
        moved[keep] = set((embed.detach() != start).any(dim=1).nonzero().flatten().tolist())
        with torch.no_grad():
            embed.copy_(start)
        embed.grad = None
    in_batch = {int(i) for s in batch for i in s.student} | set(side(tokenizer).prefix)  # prefix: BOS
    assert moved[True] == in_batch
    assert len(moved[False] - in_batch) > 1000  # the defect batch_rows exists for


def test_fit_applies_batch_rows_every_step(tiny, monkeypatch, tmp_path):
    import tokensurgeon.recovery.train as train

    calls = []

    class Counting(train.BatchRows):
        def before_step(self, ids):
            calls.append((len(self.params), ids.numel()))
            super().before_step(ids)

    monkeypatch.setattr(train, "BatchRows", Counting)
    patched = shutil.copytree(tiny, tmp_path / "p")
    recover(patched, {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
            _options(objective="lm", train="embeddings", batch_rows=True), device="cpu")
    assert len(calls) == 2 and all(n == 1 and ids > 0 for n, ids in calls)  # 2 steps; one tied matrix


def test_rows_seen_earlier_do_not_ride_adams_momentum(tiny):
    """A row in step 1's batch but not in step 2's: zeroing its gradient alone still lets Adam move it in step 2
    (its momentum); BatchRows puts it back."""
    model, tokenizer = load_for_eval(tiny, device=torch.device("cpu"))
    options = _options(objective="lm", train="embeddings", anchor_weight=0.0)
    model, _, _ = prepare(model, options, None)
    embed = [p for n, p in model.named_parameters() if "embed_tokens" in n][0]
    pool = samples(TEXT, "news", side(tokenizer), None, 32)
    objective = Objective(options, side(tokenizer), None, None)
    start = embed.detach().clone()
    drift = {}
    for fixed in (False, True):
        with torch.no_grad():
            embed.copy_(start)
        optimizer, rows = torch.optim.AdamW([embed], lr=1e-3, weight_decay=0.0), BatchRows([embed])
        after = []
        for batch in (pool[:1], pool[5:6]):
            embed.grad = None
            loss, _, seen = objective(model, batch, torch.device("cpu"))
            loss.backward()
            if fixed:
                rows.before_step(seen)
            else:
                keep_rows([embed], seen)
            optimizer.step()
            if fixed:
                rows.after_step()
            after.append((embed.detach().clone(), set(seen.tolist())))
        only_first = sorted(after[0][1] - after[1][1])
        assert len(only_first) > 5
        drift[fixed] = (after[1][0][only_first] - after[0][0][only_first]).abs().max().item()
    assert drift[False] > 1e-4 and drift[True] == 0.0


class _Scripted(Task):
    """A guard task whose accuracy at successive runs is given (run 1 is the input's, before training)."""
    metrics = ("accuracy",)

    def __init__(self, accuracies):
        self.accuracies = iter(accuracies)

    def run(self, model, tokenizer, *, label="", progress=None):
        return TaskResult(self.name, label, self.metrics, [], {"accuracy": next(self.accuracies)})


@pytest.mark.parametrize("accuracies, kept", [((0.5, 0.25, 0.25), False), ((0.5, 0.5, 0.75), True)])
def test_guard_task_keeps_no_state_that_loses_the_skill(tiny, tmp_path, monkeypatch, accuracies, kept):
    """Bits per byte improves at both evaluations (checked without a guard); a state that scores lower on a guard
    task than the input is still not kept, and the result records the task before and after."""
    options = _options(objective="lm", train="embeddings", lr=1e-2)
    _, plain = recover(shutil.copytree(tiny, tmp_path / "plain"), {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                       options, device="cpu")
    assert plain.improved and plain.best_step == 2
    monkeypatch.setitem(TASKS, "scripted", lambda: _Scripted(accuracies))
    _Scripted.name = "scripted"
    _, result = recover(shutil.copytree(tiny, tmp_path / "guarded"), {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                        replace(options, guard_tasks=("scripted",)), device="cpu")
    assert result.improved == kept and result.tasks_before == {"scripted": 0.5}
    assert result.tasks_after == {"scripted": 0.75 if kept else 0.5}
    assert [point.tasks for point in result.history] == [{"scripted": a} for a in accuracies]


def test_guard_tasks_are_keyed_by_what_the_user_named(tmp_path):
    """Two multiple-choice files are both task "multiple_choice": keyed by name, one score would hide the other."""
    from tokensurgeon.recovery.guard import guard_tasks

    files = []
    for name in ("first.jsonl", "second.jsonl"):
        path = tmp_path / name
        path.write_text(json.dumps({"context": "c", "choices": ["a", "b"], "gold": 0}) + "\n")
        files.append(str(path))
    tasks = guard_tasks(("arithmetic", *files))
    assert list(tasks) == ["arithmetic", *files]
    assert [task.name for task in tasks.values()] == ["arithmetic", "multiple_choice", "multiple_choice"]


def test_a_time_budget_evaluates_its_last_step(tiny, tmp_path, monkeypatch):
    """--max-minutes ends training between evaluations; the steps since the last one are still evaluated.
    The clock is the steps done, a minute each: 2.5 minutes end training after step 3."""
    import tokensurgeon.recovery.train as train

    done, notes = [0], []
    monkeypatch.setattr(train.time, "monotonic", lambda: 60.0 * done[0])
    patched = shutil.copytree(tiny, tmp_path / "p")
    _, result = recover(patched, {"news": TEXT[:5000]}, {"news": TEXT[5000:]},
                        _options(objective="lm", train="embeddings", steps=50, eval_every=40, max_minutes=2.5),
                        device="cpu", progress=lambda step, steps, note: (done.__setitem__(0, step), notes.append(note)))
    assert result.stopped_by == "max-minutes" and result.steps_run == 3
    assert [point.step for point in result.history] == [0, 3]
    # copied rows are anchored (train embeddings): from step 2 on they have moved, and their pull is reported
    # apart from the objective's loss
    assert result.history[0].anchor is None and result.history[1].anchor > 0 and result.history[1].loss > 0
    assert len(notes) == 3 and all(re.fullmatch(r"loss \d+\.\d{3}, [\d,]+ tok/s", note) for note in notes)
