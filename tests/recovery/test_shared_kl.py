"""The kl_mix term: chunk starts on a real tokenizer pair read the same bytes on both sides, shared tokens pair
equal bytes, and the term is zero with zero gradient at identity, positive once the student moves."""

from __future__ import annotations

import pytest
import torch

from conftest import CORPORA, SMOLLM2_TOKENIZER, TOKENIZERS, build_tiny_model
from tokensurgeon.evaluation import load_for_eval
from tokensurgeon.recovery.data import Side, chunk_starts, samples, shared_tokens, side
from tokensurgeon.recovery.options import RecoveryOptions
from tokensurgeon.recovery.student import load_teacher
from tokensurgeon.recovery.train import Objective
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
    hidden = torch.randn(2, 40, teacher.head.shape[1])
    same = kl(hidden, hidden.clone().requires_grad_(), teacher.head, None, batch, CPU)
    assert abs(same.item()) < 1e-6
    moved = hidden.clone()
    moved[rows, at_student] += torch.randn(len(rows), hidden.shape[-1])
    moved.requires_grad_()
    different = kl(hidden, moved, teacher.head, None, batch, CPU)
    different.backward()
    assert different.item() > 1e-3 and moved.grad[rows, at_student].abs().sum() > 0
    untouched = torch.ones(2, 40, dtype=torch.bool)
    untouched[rows, at_student] = False
    assert moved.grad[untouched].abs().max() == 0  # only the chunk starts carry the term
