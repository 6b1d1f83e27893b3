"""OMP (Goddard & Fernandes Neto, arXiv 2506.06607): sparse codes found in the donor's space,
replayed in the base's.

The tokens both vocabularies share are anchors: each has a row in the donor embedding and one in
the base embedding. A new donor token's donor row is approximated as a k-sparse combination of
anchor donor rows (orthogonal matching pursuit); the same k coefficients on the same anchors'
base rows give its base row. Untied models repeat this for the output head, from the donor's head
when it has one.

Tokens that are not valid UTF-8 on their own (a space plus the first byte of a Devanagari
character, say) are built from their byte-level pieces instead: their donor rows are rarely
trained, and a wrong row on such a token can carry much of a text's loss. So are tokens whose OMP
code leaves more than half of the donor row unexplained (``max_residual``, relative): the code is
then a fit to noise (coefficients spread over unrelated anchors), and the pieces' mean is safer.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from ..config import OMPConfig
from ..errors import MethodError
from ..runtime.matmul import fast_selection_dtype
from ._shared.pieces import is_partial_utf8, piece_means
from ._shared.sparse_coding import omp_batches
from .base import InitContext, InitMethod, InitResult, Provenance, gather_rows, weighted_rows

_REPLAY_BLOCK = 16384  # rows replayed or measured at a time; a multiple of weighted_rows' block keeps the bytes


class OMPMethod(InitMethod):
    name: ClassVar[str] = "omp"
    summary: ClassVar[str] = "k-sparse combination of shared anchors in the donor space, replayed in the base (OMP)"
    needs_donor_embeddings: ClassVar[bool] = True
    upcasts_rows: ClassVar[bool] = True  # gathered rows are upcast (anchors, targets), never a whole matrix

    def __init__(self, k: int = OMPConfig.k, normalize_atoms: bool = OMPConfig.normalize_atoms,
                 candidates: int | None = OMPConfig.candidates, refresh: int = OMPConfig.refresh,
                 refresh_pool: int = OMPConfig.refresh_pool, max_residual: float = OMPConfig.max_residual,
                 fast_select: bool = OMPConfig.fast_select) -> None:
        if int(k) < 1 or int(refresh) < 1 or int(refresh_pool) < 1:
            raise MethodError(f"omp: k, refresh and refresh_pool must be at least 1, got {k}, {refresh}, {refresh_pool}")
        if not float(max_residual) > 0:
            raise MethodError(f"omp: max_residual must be positive, got {max_residual}")
        self.k = int(k)
        self.normalize_atoms = bool(normalize_atoms)
        self.candidates = candidates
        self.refresh, self.refresh_pool = int(refresh), int(refresh_pool)
        self.max_residual = float(max_residual)
        self.fast_select = bool(fast_select)

    def anchors(self, ctx: InitContext) -> tuple[list[int], list[int]]:
        """Donor ids of ordinary shared tokens with a donor row, and their base ids."""
        rows = ctx.donor_embed.shape[0]
        donor_ids = [i for i, kind in enumerate(ctx.alignment.match) if kind in ("exact", "bytes") and i < rows]
        return donor_ids, [ctx.alignment.source[i] for i in donor_ids]

    def initialise(self, ctx: InitContext) -> InitResult:
        """Solve every new token, then give its pieces' mean instead to two kinds: partial-UTF-8 tokens, and
        tokens whose code leaves more than ``max_residual`` of the donor row unexplained (their codes
        are fits to noise: on P1, newline-plus-indent tokens, which cost wikitext most of its gap)."""
        anchor_donor, anchor_base = self.anchors(ctx)
        if len(anchor_donor) < self.k:
            raise MethodError(f"omp: only {len(anchor_donor)} shared tokens to use as anchors, fewer than k={self.k}")
        new_ids, pieces = ctx.new_ids, ctx.alignment.decompositions
        paths = ["bytes-subword-mean" if is_partial_utf8(ctx.donor_vocab.canonical[i]) and pieces.get(i) else "omp"
                 for i in new_ids]
        solve = [row for row, path in enumerate(paths) if path == "omp"]
        targets = [new_ids[r] for r in solve]
        embed_codes = self.solve(ctx, ctx.donor_embed, anchor_donor, targets)
        residuals = relative_residuals(ctx.donor_embed, targets, embed_codes.residual_norm)
        for row, residual in zip(solve, residuals):
            if not residual <= self.max_residual and pieces.get(new_ids[row]):  # NaN included
                paths[row] = "omp-residual-subword-mean"
        embed = self.replay(ctx, ctx.base_embed, anchor_base, embed_codes, solve, paths)
        head = None
        if ctx.untied:
            head_codes = (embed_codes if ctx.donor_head is None
                          else self.solve(ctx, ctx.donor_head, anchor_donor, targets))
            head = self.replay(ctx, ctx.base_head, anchor_base, head_codes, solve, paths)
        return InitResult(embed, head, self.provenance(ctx, paths, solve, embed_codes, residuals, anchor_base),
                          info={"selection_dtype": str(self.select_dtype(ctx)).removeprefix("torch.")})

    def replay(self, ctx: InitContext, base_matrix: torch.Tensor, anchor_base: list[int], codes,
               solve: list[int], paths: list[str]) -> torch.Tensor:
        """Apply the codes to the anchors' base rows; rows on a subword-mean path get their pieces' mean."""
        rows = torch.empty(len(paths), base_matrix.shape[1], device=base_matrix.device)
        if solve:
            # (S, k) base ids; the codes come back on the device they were solved on (CUDA when present)
            sources = torch.tensor(anchor_base, dtype=torch.long, device=codes.indices.device)[codes.indices]
            at = torch.tensor(solve, dtype=torch.long, device=rows.device)
            for start in range(0, len(solve), _REPLAY_BLOCK):  # blocks: no second (S, d) copy for 200k rows
                part = slice(start, start + _REPLAY_BLOCK)
                rows[at[part]] = weighted_rows(base_matrix, sources[part], codes.coefficients[part])
        picked = [row for row, path in enumerate(paths) if path != "omp"]
        if picked:
            pieces = [ctx.alignment.decompositions[ctx.new_ids[row]] for row in picked]
            rows[picked] = piece_means(base_matrix, pieces, ctx.base_mean(base_matrix)).float()
        return rows

    def solve(self, ctx: InitContext, donor_matrix: torch.Tensor, anchor_donor: list[int], target_ids: list[int]):
        """OMP codes of the targets' donor rows over the anchors' donor rows."""
        rows = donor_matrix.shape[0]
        targets = donor_matrix[[i if i < rows else 0 for i in target_ids]]
        missing = [j for j, i in enumerate(target_ids) if i >= rows]
        targets[missing] = 0  # ids past the donor's rows have no donor embedding: no signal to match
        k = min(self.k, donor_matrix.shape[1])  # more atoms than dimensions are linearly dependent
        # bf16 ranking: anchors as stored (the solver upcasts the rows it gathers, so bf16 anchors need no float32
        # copy); float32 ranking: float32 anchors, which the solver ranks and gathers from (no second copy)
        select = self.select_dtype(ctx)
        stored = torch.float32 if select == torch.float32 else donor_matrix.dtype
        anchors = gather_rows(donor_matrix, anchor_donor, stored)
        return omp_batches(targets, anchors, k, device=ctx.device,
                           normalize_atoms=self.normalize_atoms, candidates=self.candidates,
                           refresh=self.refresh, refresh_pool=self.refresh_pool, progress=ctx.progress,
                           select_dtype=select)

    def select_dtype(self, ctx: InitContext) -> torch.dtype:
        """bf16 full correlations where they multiply faster than float32 here (``fast_select``), else float32."""
        return fast_selection_dtype(torch.device(ctx.device)) if self.fast_select else torch.float32

    def provenance(self, ctx: InitContext, paths: list[str], solve: list[int], codes, residuals: list[float],
                   anchor_base: list[int]) -> list[Provenance]:
        """Each row's path, base sources and weights. An OMP row's sources and weights are views of one (S, k)
        array each: a draft's 200k codes of 64 would take gigabytes as Python lists."""
        result = [Provenance(path) for path in paths]
        if solve:
            sources = np.asarray(anchor_base, dtype=np.int64)[codes.indices.cpu().numpy()]  # (S, k) base ids
            weights = codes.coefficients.cpu().numpy()  # (S, k)
            for position, row in enumerate(solve):
                result[row] = Provenance("omp", sources[position], weights[position], residual=residuals[position])
        for row, path in enumerate(paths):
            if path != "omp":
                parts = list(ctx.alignment.decompositions[ctx.new_ids[row]])
                result[row] = Provenance(path, parts, [1.0 / len(parts)] * len(parts), residual=result[row].residual)
        return result


def relative_residuals(donor_matrix: torch.Tensor, target_ids: list[int], residual_norm: torch.Tensor) -> list[float]:
    """||donor row - its reconstruction|| / ||donor row|| per target: how much of it the code leaves out."""
    rows = donor_matrix.shape[0]
    ids = torch.tensor([i if i < rows else 0 for i in target_ids], dtype=torch.long, device=donor_matrix.device)
    scale = torch.cat([torch.linalg.vector_norm(donor_matrix[ids[start:start + _REPLAY_BLOCK]].float(), dim=1)
                       for start in range(0, len(ids), _REPLAY_BLOCK)] or [torch.zeros(0)]).clamp(min=1e-12)
    return (residual_norm.to(scale.device) / scale).tolist()
