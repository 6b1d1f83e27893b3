"""The patched matrices and what the report says about their rows: copied rows bit-exact from the base,
new rows from the method, padding rows the mean; provenance per row, norms, worst approximations."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np
import torch

from ..methods import InitResult, Provenance
from ..methods._shared.pieces import piece_means
from ..methods.base import mean_rows
from ..runtime.memory import gathered, tensor_sha256
from ..vocab.alignment import COPIED
from ..vocab.pair import TokenizerPair
from .session import Session


_DEPARTURE_BLOCK = 8192  # new rows compared with their pieces' mean at a time (float32 copies of this many rows)


class AssembledMatrix:
    """The patched (n_rows, d) matrix, built a block of rows at a time on demand: copied rows bit-exact
    from the base, new rows from the method, padding rows the mean.

    Writing and hashing read it by row slices (``matrix[a:b]``), so the whole output never exists
    in memory: a transplant holds the base matrices and the new rows (in the base dtype), no more.
    tests/jobs/test_export.py checks the rows against a whole-matrix reference.

    The slices read in row order from the first row on (the writer's pass) are hashed as they go, so
    ``sha256()`` after writing needs no second assembly of the rows.
    """

    def __init__(self, base_matrix: torch.Tensor, pair: TokenizerPair, new_rows: torch.Tensor | None,
                 pad_row: torch.Tensor | None) -> None:
        alignment = pair.alignment
        self.base, self.dtype = base_matrix, base_matrix.dtype
        self.shape = torch.Size((alignment.n_rows, base_matrix.shape[1]))
        kinds = {kind: 0 for kind in COPIED} | {"padding": 2}
        self.kind = torch.tensor([kinds.get(kind, 1) for kind in alignment.match], dtype=torch.int8)
        if pad_row is None and bool((self.kind == 2).any()):
            raise ValueError("AssembledMatrix needs a pad row: the alignment has padding rows")
        self.source = torch.tensor(alignment.source, dtype=torch.long)
        self.new_position = torch.full((alignment.n_rows,), -1, dtype=torch.long)
        self.new_position[alignment.new_ids] = torch.arange(len(alignment.new_ids))
        self.new_rows = new_rows.to(device="cpu", dtype=self.dtype) if alignment.new_ids else None
        self.pad_row = None if pad_row is None else pad_row.to(device="cpu", dtype=self.dtype)
        self.digest, self.hashed_rows = hashlib.sha256(), 0  # rows [0, hashed_rows) handed out in order

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def element_size(self) -> int:
        return self.base.element_size()

    def contiguous(self) -> "AssembledMatrix":
        return self

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise ValueError("AssembledMatrix takes contiguous row slices only")
        kind = self.kind[start:stop]
        out = torch.empty(max(stop - start, 0), self.shape[1], dtype=self.dtype)
        copied = (kind == 0).nonzero().flatten()
        for positions, rows in gathered(self.base, self.source[start:stop][copied]):
            out[copied[positions]] = rows
        new = (kind == 1).nonzero().flatten()
        if new.numel():
            out[new] = self.new_rows[self.new_position[start:stop][new]]
        padding = (kind == 2).nonzero().flatten()
        if padding.numel():
            out[padding] = self.pad_row
        if start == self.hashed_rows < stop:
            self.digest.update(out.view(torch.uint8).numpy().data)
            self.hashed_rows = stop
        return out

    def materialise(self) -> torch.Tensor:
        return self[:]

    def sha256(self) -> str:
        """sha256 of the whole matrix's bytes (row-major), as ``runtime.memory.tensor_sha256`` gives it."""
        if self.hashed_rows < self.shape[0]:
            return tensor_sha256(self)
        return self.digest.hexdigest()


def provenance_rows(pair: TokenizerPair, result: InitResult) -> Iterator[dict[str, Any]]:
    """One JSON-able row per donor row, how it got its values, made as provenance.jsonl is written: a draft's
    200k rows of 64 sources and weights would take gigabytes as Python objects all at once."""
    alignment, vocab = pair.alignment, pair.donor_vocab
    computed = dict(zip(alignment.new_ids, result.provenance))
    for donor_id, kind in enumerate(alignment.match):
        row: dict[str, Any] = {"id": donor_id, "token": vocab.tokens[donor_id] if donor_id < vocab.size else None,
                               "match": kind}
        if kind in COPIED:
            row |= {"path": "copy", "sources": [alignment.source[donor_id]], "weights": [1.0]}
        elif kind == "padding":
            row |= {"path": "padding-mean", "sources": [], "weights": []}
        else:
            prov = computed[donor_id]
            row |= {"path": prov.path, "sources": np.asarray(prov.sources, dtype=np.int64).tolist(),
                    "weights": np.round(np.asarray(prov.weights, dtype=np.float64), 6).tolist()}  # readable JSON
            if prov.residual is not None:
                row["residual"] = round(prov.residual, 6)
        yield row


def row_norm_histograms(matrix: AssembledMatrix, base_norms: torch.Tensor, bins: int = 40) -> dict[str, Any]:
    """Histogram counts of the L2 norms of copied (shared) and new input-embedding rows, on common bins:
    new rows far outside the shared rows' range are the first sign of a bad initialisation. ``base_norms``: every
    base row's norm (base_rows.RowStats)."""
    shared = base_norms[matrix.source[matrix.kind == 0]]
    new = (torch.linalg.vector_norm(matrix.new_rows.float(), dim=1) if matrix.new_rows is not None
           else torch.zeros(0))
    shared, new = shared[shared.isfinite()], new[new.isfinite()]  # --allow-nonfinite rows stay out of the picture
    both = torch.cat([shared, new])
    if not both.numel():
        return {}
    low, high = both.min().item(), both.max().item()
    high = high if high > low else low + 1.0
    count = lambda values: torch.histc(values, bins=bins, min=low, max=high).long().tolist()  # noqa: E731
    return {"edges": torch.linspace(low, high, bins + 1).tolist(), "shared": count(shared), "new": count(new),
            "shared_median": shared.median().item() if shared.numel() else None,
            "new_median": new.median().item() if new.numel() else None}


def new_row_departures(session: Session, result: InitResult, top: int = 20) -> dict[str, Any]:
    """The new tokens a method approximated worst, for the report.

    Methods that approximate a target (omp: the donor row) put a relative residual in their provenance;
    those are reported. Otherwise the measure is how far each new row lies from its pieces' mean
    (the subword-mean row), relative to that row's norm: where the method departs most from the
    tokenizer-only baseline. Computed before the rows are handed to the writer.
    """
    pair, new_ids = session.pair, session.pair.alignment.new_ids
    tokens = pair.donor_vocab.tokens
    residual = [p.residual for p in result.provenance]
    if new_ids and all(r is not None for r in residual):
        values = torch.tensor(residual, dtype=torch.float32)
        measure = f"relative residual of the {result.provenance[0].path} approximation in the donor space"
    else:
        with_pieces = [row for row, i in enumerate(new_ids) if pair.alignment.decompositions.get(i)]
        if not with_pieces:
            return {}
        values = torch.full((len(new_ids),), float("nan"))
        for start in range(0, len(with_pieces), _DEPARTURE_BLOCK):  # blocks: a draft has 200k+ new rows
            block = with_pieces[start:start + _DEPARTURE_BLOCK]
            pieces = [pair.alignment.decompositions[new_ids[row]] for row in block]
            reference = piece_means(session.base_embed, pieces, session.base_embed[0]).float()
            rows = result.embed[block].float().to(reference.device)
            values[block] = (torch.linalg.vector_norm(rows - reference, dim=1)
                             / torch.linalg.vector_norm(reference, dim=1).clamp(min=1e-12)).cpu()
        measure = "distance of the new row from its pieces' mean (subword-mean row), relative to that row's norm"
    order = torch.nan_to_num(values, nan=-1.0).argsort(descending=True)[:top].tolist()
    return {"measure": measure, "max": float(torch.nan_to_num(values, nan=0.0).max()),
            "tokens": [{"id": new_ids[row], "token": tokens[new_ids[row]] if new_ids[row] < len(tokens) else None,
                        "value": round(float(values[row]), 6)} for row in order if values[row] == values[row]]}


def extra_vocab_tensors(session: Session) -> dict[str, torch.Tensor | AssembledMatrix]:
    """The base's other vocabulary-sized tensors (checkpoint.vocab_extras) on the donor's rows, by the same
    alignment as the embeddings: shared tokens keep their base rows, new tokens get the mean of their
    pieces' rows, padding rows the mean row (a bias: its minimum, so padding is never predicted).

    A per-layer table shorter than the embedding (Gemma3n reads ids past it as id 0) reads row 0 for them.
    """
    from ..checkpoint import read_tensor

    base, alignment = session.base, session.pair.alignment
    out: dict[str, torch.Tensor | AssembledMatrix] = {}
    for key, role in base.vocab_extras:
        stored = read_tensor(base.tensors[key])
        table = stored.unsqueeze(1) if role == "bias" else stored
        rows = table.shape[0]
        pieces = [tuple(p for p in alignment.decompositions.get(i, ()) if p < rows) for i in alignment.new_ids]
        defined = [i for i in session.pair.base_vocab.defined_ids() if i < rows]
        mean = mean_rows(table, defined)
        new_rows = piece_means(table, pieces, mean) if pieces else None
        pad = table.float().min(dim=0).values if role == "bias" else mean
        matrix = AssembledMatrix(table, session.pair, new_rows, pad)
        matrix.source = torch.where(matrix.source < rows, matrix.source, torch.zeros_like(matrix.source))
        out[key] = matrix.materialise().squeeze(1).contiguous() if role == "bias" else matrix
    return out
