"""Training samples for recovery: text cut first, then the cut string tokenized by student and teacher.

Cutting token sequences after tokenizing would give the two sides different text; cutting the text
first gives both the same bytes, which the chunk alignment then splits into comparable pieces. A
piece that tokenizes longer than the context is trimmed at the last chunk boundary that fits on both
sides, so no chunk is ever cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tokensurgeon.errors import TokenSurgeonError
from tokensurgeon.recovery.chunks import align_chunks, token_spans

_ESTIMATE_BYTES = 20_000  # bytes of each text tokenized to size the pieces


@dataclass(frozen=True)
class Sample:
    """One training piece: student (and teacher) token ids and each token's chunk index."""

    student: list[int]
    teacher: list[int]
    student_chunks: list[int]
    teacher_chunks: list[int]
    n_chunks: int


@dataclass(frozen=True)
class Side:
    """One tokenizer as the sampler sees it: its vocabulary (canonical bytes) and context prefix (BOS)."""

    tokenizer: Any
    vocabulary: Any
    prefix: list[int]


@dataclass
class Batch:
    """Right-padded model inputs; targets -100 where nothing is scored; chunk -1 where a token is in no chunk."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    chunks: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets, self.chunks)))


def side(tokenizer: Any) -> Side:
    from tokensurgeon.evaluation.bpb import context_prefix
    from tokensurgeon.vocab import build_vocabulary

    return Side(tokenizer, build_vocabulary(tokenizer), context_prefix(tokenizer))


def cut_text(text: str, piece_bytes: int) -> list[str]:
    """Pieces of at most piece_bytes UTF-8 bytes, cut after the last whitespace where there is one."""
    pieces, data = [], text
    while data:
        head = data.encode("utf-8")[:piece_bytes].decode("utf-8", errors="ignore") or data[0]
        if len(head) < len(data):
            cut = max(head.rfind(" "), head.rfind("\n"))
            head = head[:cut + 1] if cut > 0 else head
        pieces.append(head)
        data = data[len(head):]
    return [piece for piece in pieces if piece.strip()]


def samples(text: str, label: str, student: Side, teacher: Side | None, context: int) -> list[Sample]:
    """Pieces of text sized to fill the context; with a teacher, each piece aligned in chunks."""
    sides = [student] + ([teacher] if teacher is not None else [])
    head = text.encode("utf-8")[:_ESTIMATE_BYTES].decode("utf-8", errors="ignore")
    tokens = max(len(s.tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]) for s in sides)
    piece_bytes = max(16, int(len(head.encode("utf-8")) / max(tokens, 1) * (context - 1)))
    out = []
    for piece in cut_text(text, piece_bytes):
        sample = _sample(piece, student, teacher, context)
        if sample is not None:
            out.append(sample)
    if not out:
        raise TokenSurgeonError(f"{label}: its training part is too short to train on (give more text or a "
                                "smaller --held-out)")
    return out


def _sample(piece: str, student: Side, teacher: Side | None, context: int) -> Sample | None:
    a = token_spans(student.tokenizer, student.vocabulary, piece)
    if teacher is None:
        ids = a.ids[:context - len(student.prefix)]
        return Sample(ids, [], list(range(len(ids))), [], len(ids)) if len(ids) >= 2 else None
    b = token_spans(teacher.tokenizer, teacher.vocabulary, piece)
    if not a.ids or not b.ids:
        return None
    alignment = align_chunks(a, b)
    limit_a, limit_b = context - len(student.prefix), context - len(teacher.prefix)
    keep = alignment.n_chunks
    while keep and (_count(alignment.chunk_a, keep) > limit_a or _count(alignment.chunk_b, keep) > limit_b):
        keep -= 1
    if keep < 2:
        return None
    n_a, n_b = _count(alignment.chunk_a, keep), _count(alignment.chunk_b, keep)
    return Sample(a.ids[:n_a], b.ids[:n_b], alignment.chunk_a[:n_a], alignment.chunk_b[:n_b], keep)


def _count(chunks: list[int], keep: int) -> int:
    """Tokens in the first keep chunks (chunk indices never decrease along a sequence)."""
    return sum(1 for c in chunks if c < keep)


def collate(rows: list[tuple[list[int], list[int]]], prefix: list[int]) -> Batch:
    """(ids, chunk per token) rows -> a batch; with no prefix the first token is context only, in no chunk."""
    length = max(len(prefix) + len(ids) for ids, _ in rows)
    input_ids = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    targets = torch.full_like(input_ids, -100)
    chunks = torch.full_like(input_ids, -1)
    for i, (ids, chunk) in enumerate(rows):
        row = prefix + ids
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        first = 0 if prefix else 1  # the position predicting token j is len(prefix) + j - 1
        for j in range(first, len(ids)):
            targets[i, len(prefix) + j - 1] = ids[j]
            chunks[i, len(prefix) + j - 1] = chunk[j]
    return Batch(input_ids, mask, targets, chunks)


def chunk_mask(batch_samples: list[Sample], n_chunks: int, student: Side, teacher: Side) -> torch.Tensor:
    """1 for chunks every token of which is scored on both sides (a side without BOS cannot score its first)."""
    mask = torch.zeros((len(batch_samples), n_chunks))
    for i, sample in enumerate(batch_samples):
        mask[i, :sample.n_chunks] = 1
        for s, chunks in ((student, sample.student_chunks), (teacher, sample.teacher_chunks)):
            if not s.prefix:
                mask[i, chunks[0]] = 0
    return mask


def chunk_starts(batch_samples: list[Sample], student: Side, teacher: Side) -> tuple[torch.Tensor, ...]:
    """(row, student position, teacher position) of every chunk's first token, where both sides score it: there
    the two models predict the next token from the same bytes, so their next-token distributions compare."""
    rows, at_student, at_teacher = [], [], []
    for i, sample in enumerate(batch_samples):
        firsts = [_first_tokens(chunks, sample.n_chunks, s.prefix)
                  for s, chunks in ((student, sample.student_chunks), (teacher, sample.teacher_chunks))]
        for a, b in zip(*firsts):
            if a is not None and b is not None:
                rows.append(i)
                at_student.append(a)
                at_teacher.append(b)
    return tuple(torch.tensor(v, dtype=torch.long) for v in (rows, at_student, at_teacher))


def _first_tokens(chunks: list[int], n_chunks: int, prefix: list[int]) -> list[int | None]:
    """Per chunk, the position (collate's layout) predicting its first token; None where that token is unscored
    (the first token of a side without BOS)."""
    first: list[int | None] = [None] * n_chunks
    started = [False] * n_chunks
    for j, c in enumerate(chunks):
        if c < n_chunks and not started[c]:
            started[c] = True
            first[c] = len(prefix) + j - 1 if prefix or j else None
    return first


def shared_tokens(student: Side, teacher: Side) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of the ordinary tokens both vocabularies hold, by canonical bytes: (student ids, teacher ids), paired.
    The first id of each byte string on either side (a vocabulary may spell one string twice)."""
    teacher_ids: dict[bytes, int] = {}
    for i, raw in enumerate(teacher.vocabulary.canonical):
        if raw is not None:
            teacher_ids.setdefault(raw, i)
    pairs, seen = [], set()
    for i, raw in enumerate(student.vocabulary.canonical):
        if raw is not None and raw in teacher_ids and raw not in seen:
            seen.add(raw)
            pairs.append((i, teacher_ids[raw]))
    ids = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return ids[:, 0], ids[:, 1]
