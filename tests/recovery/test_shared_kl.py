"""The terms at chunk starts (kl_mix, hidden_mix): chunk starts on a real tokenizer pair read the same bytes on both
sides, shared tokens pair equal bytes, each term is zero with zero gradient at identity and positive once the student
moves, and both are refused where they cannot apply."""

from __future__ import annotations

import pytest
import torch

from conftest import CORPORA, SMOLLM2_TOKENIZER, TOKENIZERS, build_tiny_model
from tokensurgeon.config import HealConfig
from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.evaluation import load_for_eval
from tokensurgeon.recovery.data import Side, chunk_starts, collate, samples, shared_tokens, side
from tokensurgeon.recovery.objectives import state_loss
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.student import Teacher, hidden_states, load_teacher
from tokensurgeon.recovery.train import Objective, fit
from tokensurgeon.recovery.trainable import prepare
from tokensurgeon.vocab import load_tokenizer

TEXT = ((CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:3000]
        + (CORPORA / "udhr" / "ukr.txt").read_text(encoding="utf-8")[:1500])
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair():
    return side(load_tokenizer(SMOLLM2_TOKENIZER)), side(load_tokenizer(TOKENIZERS / "llama3"))


def _bytes_before(ids: list[int], j: int, vocabulary) -> int:
    return sum(len(vocabulary.canonical[i]) for i in ids[:j])


@pytest.mark.parametrize("bos", [True, False], ids=["bos", "no-bos"])
def test_chunk_starts_predict_chunk_first_tokens_from_the_same_bytes(pair, bos):
    student, teacher = pair
    if not bos:  # a student side without BOS cannot score its first token: that chunk start drops out
        student = Side(student.tokenizer, student.vocabulary, [])
    batch = samples(TEXT, "mixed", student, teacher, 64)[:6]
    rows, at_student, at_teacher = chunk_starts(batch, student, teacher)
    assert len(rows) == sum(s.n_chunks for s in batch) - (0 if bos else len(batch))
    for i, ps, pt in zip(rows.tolist(), at_student.tolist(), at_teacher.tolist()):
        sample = batch[i]
        j, k = ps - len(student.prefix) + 1, pt - len(teacher.prefix) + 1  # the tokens these positions predict
        chunk = sample.student_chunks[j]
        assert sample.teacher_chunks[k] == chunk and chunk < sample.n_chunks
        assert (j == 0 or sample.student_chunks[j - 1] < chunk) and (k == 0 or sample.teacher_chunks[k - 1] < chunk)
        assert (_bytes_before(sample.student, j, student.vocabulary)
                == _bytes_before(sample.teacher, k, teacher.vocabulary))


def test_shared_tokens_pair_equal_bytes(pair):
    student, teacher = pair
    ids_s, ids_t = shared_tokens(student, teacher)
    assert len(ids_s) == len(ids_t) > 20_000 and len(set(ids_s.tolist())) == len(ids_s)
    for a, b in zip(ids_s.tolist()[::97], ids_t.tolist()[::97]):
        assert student.vocabulary.canonical[a] == teacher.vocabulary.canonical[b] is not None


def test_kl_mix_is_zero_at_identity_and_moves_once_the_student_differs(tmp_path):
    tiny = build_tiny_model(tmp_path / "tiny", SMOLLM2_TOKENIZER, tied=True, dtype=torch.float32)
    model, tokenizer = load_for_eval(tiny, device=CPU)
    teacher = load_teacher(tiny, model, device=CPU)
    options = RecoveryOptions(train="embeddings", kl_mix=1.0, context=32, batch_size=2)
    model, trainable, _ = prepare(model, options, None)
    student = side(tokenizer)
    objective = Objective(options, student, teacher, side(teacher.tokenizer))  # two tokenizer objects: ALM path
    assert objective.shared is not None and len(objective.shared[0]) > 40_000
    batch = samples(TEXT, "mixed", student, side(teacher.tokenizer), options.context)[:2]
    rows, at_student, at_teacher = chunk_starts(batch, student, objective.teacher_side)
    assert len(rows) > 0
    kl = objective.shared_kl
    states = torch.randn(len(rows), teacher.head.shape[1])
    same = kl(states, states.clone().requires_grad_(), teacher.head, None)
    assert abs(same.item()) < 1e-6
    moved = (states + torch.randn_like(states)).requires_grad_()
    different = kl(states, moved, teacher.head, None)
    different.backward()
    assert different.item() > 1e-3 and moved.grad.abs().sum(-1).min() > 0  # every chunk start carries the term


def test_state_loss_is_relative_squared_distance():
    teacher = torch.tensor([[3.0, 4.0], [0.0, 5.0]])  # mean squared norm 25
    same = teacher.clone().requires_grad_()
    loss = state_loss(teacher, same)
    loss.backward()
    assert loss.item() == 0 and same.grad.abs().max() == 0
    assert state_loss(teacher, torch.zeros(2, 2)).item() == pytest.approx(1.0)
    assert state_loss(teacher, teacher + torch.tensor([[1.0, 0.0], [0.0, 0.0]])).item() == pytest.approx(0.5 / 25)
    assert state_loss(teacher[:0], teacher[:0]).item() == 0  # no chunk start in a batch: no term, no NaN


def test_hidden_mix_adds_the_state_distance_at_chunk_starts(tmp_path):
    """The term the objective adds is state_loss of the two models' states at the chunk starts, recomputed here
    from hidden_states and the teacher pass, for a student whose rows moved."""
    tiny = build_tiny_model(tmp_path / "tiny", SMOLLM2_TOKENIZER, tied=True, dtype=torch.float32)
    model, tokenizer = load_for_eval(tiny, device=CPU)
    teacher = load_teacher(tiny, model, device=CPU)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(0.05 * torch.randn_like(model.get_input_embeddings().weight))
    student, teacher_side = side(tokenizer), side(teacher.tokenizer)
    batch = samples(TEXT, "mixed", student, teacher_side, 32)[:2]
    losses = {}
    for mix in (0.0, 2.0):
        options = RecoveryOptions(train="embeddings", hidden_mix=mix, context=32, batch_size=2)
        losses[mix] = Objective(options, student, teacher, teacher_side)(model, batch, CPU)[0].item()
    rows, at_student, at_teacher = chunk_starts(batch, student, teacher_side)
    s_batch = collate([(s.student, s.student_chunks) for s in batch], student.prefix)
    t_batch = collate([(s.teacher, s.teacher_chunks) for s in batch], teacher_side.prefix)
    with torch.no_grad():
        states = hidden_states(model, s_batch.input_ids, s_batch.attention_mask)[rows, at_student]
        teacher_states = teacher.hidden(model, t_batch.input_ids, t_batch.attention_mask)[rows, at_teacher]
    expected = state_loss(teacher_states, states).item()
    assert expected > 1e-4
    assert losses[2.0] - losses[0.0] == pytest.approx(2 * expected, rel=1e-4)


def test_chunk_terms_are_refused_where_they_cannot_apply(tmp_path):
    with pytest.raises(TokenSurgeonError, match="--objective distill"):
        RecoveryOptions(objective="lm", hidden_mix=1.0)
    with pytest.raises(TokenSurgeonError, match="--objective distill"):
        HealConfig(patched=tmp_path, texts=(CORPORA / "lee_news.txt",), out=tmp_path / "out", objective="lm",
                   kl_mix=1.0)
    tiny = build_tiny_model(tmp_path / "tiny", SMOLLM2_TOKENIZER, tied=True, dtype=torch.float32)
    model, tokenizer = load_for_eval(tiny, device=CPU)
    same = load_teacher(tiny, model, device=CPU)
    texts = {"news": TEXT}
    with pytest.raises(TokenSurgeonError, match="share one"):
        fit(model, tokenizer, texts, texts, RecoveryOptions(hidden_mix=1.0, train="embeddings"), teacher=same)
    narrow = Teacher(load_tokenizer(TOKENIZERS / "llama3"), torch.zeros(8, 7), torch.zeros(8, 7), None)
    with pytest.raises(TokenSurgeonError, match="7"):
        fit(model, tokenizer, texts, texts, RecoveryOptions(hidden_mix=1.0, train="embeddings"), teacher=narrow)
