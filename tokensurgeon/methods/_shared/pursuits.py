"""The pursuit loops of the OMP solver (sparse_coding.py): Batch-OMP over a Gram, residual OMP, and residual OMP
refreshed every few steps; each takes a batch of float32 targets and gives (B, k) atom ids and coefficients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_RANK_BLOCK = 128  # columns per block of the refreshed path's full correlations (see _pool)


def buffer(workspace: dict[str, Tensor] | None, name: str, shape: tuple[int, ...], like: Tensor,
           dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised tensor of ``shape``, carved from ``workspace[name]`` (made or grown as needed) when given:
    fresh buffers of tens of MB in each of a draft's ~700 batches cost page faults every time."""
    dtype = dtype or like.dtype
    if workspace is None:
        return like.new_empty(shape, dtype=dtype)
    size, held = math.prod(shape), workspace.get(name)
    if held is None or held.numel() < size or held.dtype != dtype:
        held = workspace[name] = like.new_empty(size, dtype=dtype)
    return held[:size].view(shape)


def gather(atoms: Tensor, ids: Tensor, out: Tensor, workspace: dict[str, Tensor] | None) -> Tensor:
    """atoms[ids] into the float32 ``out`` (ids.numel() rows of D, in any layout); atoms stored in a lower
    precision are gathered as they are, then upcast (exactly)."""
    if atoms.dtype == out.dtype and out.is_contiguous():
        return torch.index_select(atoms, 0, ids, out=out.view(-1, atoms.shape[1])).view(out.shape)
    rows = torch.index_select(atoms, 0, ids, out=buffer(workspace, "stored", (ids.numel(), atoms.shape[1]), atoms))
    return out.copy_(rows.view(out.shape))


def _grow_cholesky(chol: Tensor, step: int, cross: Tensor, pivot: Tensor, floor: float) -> None:
    """Append row ``step`` to the lower factors ``chol`` (B, k, k) of G[I, I], given G[I, new] (B, t)."""
    if step:
        w = torch.linalg.solve_triangular(chol[:, :step, :step], cross.unsqueeze(-1), upper=False)  # (B, t, 1)
        chol[:, step, :step] = w.squeeze(-1)
        pivot = pivot - w.square().sum(dim=(1, 2))
    # An atom dependent on earlier ones has a ~0 pivot: the floor keeps the factor solvable.
    chol[:, step, step] = pivot.clamp_min(floor).sqrt()


def _solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """gamma (B, t) with G[I, I] gamma = A_I x = rhs (B, t), from the leading factors in ``chol``."""
    size = rhs.shape[1]
    return torch.cholesky_solve(rhs.unsqueeze(-1), chol[:, :size, :size]).squeeze(-1)


def _exclude(scores: Tensor, chosen: Tensor) -> Tensor:
    """``scores`` (B, N) with each row's ``chosen`` (B, t) entries set to -1, in place.

    Indexed assignment, not ``scatter_``: torch's CPU scatter of a value walks the whole (B, N) tensor
    (~95 ms for 256 x 46k, against 0.2 ms here), which was a sixth of the solve at 200k targets.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)[:, None]
    scores[rows, chosen] = -1.0
    return scores


def _as_ordered_ints(scores: Tensor) -> Tensor:
    """Scores (|correlations|, -1 where excluded) on the CPU viewed as signed integers of their width: non-negative
    floats order like their bits and -1 stays below them all, so topk picks the same ids in the same order, ~1.3x
    faster (a quarter of a second of P1's solve)."""
    ints = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}.get(scores.dtype)
    return scores.view(ints) if ints is not None and scores.device.type == "cpu" else scores


def _top_atoms(magnitude: Tensor, size: int) -> Tensor:
    """Ids (B, M) of each row's ``size`` largest entries, ascending, ties going to the lowest ids.

    Ascending ids keep argmax ties on the lowest id, as in the full search. ``topk`` alone breaks a
    tie at the cut arbitrarily (all of a zero target's scores tie), so such rows are redone.
    """
    top = magnitude.topk(size, dim=1)
    ids, threshold = top.indices, top.values[:, -1:]  # (B, M), (B, 1)
    ties = magnitude == threshold  # (B, N)
    cut = ties.sum(dim=1) > (top.values == threshold).sum(dim=1)  # (B,): rows whose cut splits a tie
    if cut.any():
        above, ties = magnitude[cut] > threshold[cut], ties[cut]
        keep = above | (ties & (ties.cumsum(dim=1) <= size - above.sum(dim=1, keepdim=True)))
        ids[cut] = keep.nonzero()[:, 1].view(-1, size)
    return ids.sort(dim=1).values


def pursue_gram(x: Tensor, atoms: Tensor, k: int, floor: float, gram: Tensor | None,
                pool_size: int | None) -> tuple[Tensor, Tensor]:
    """Batch-OMP over all atoms, or over each target's ``pool_size`` atoms of largest |alpha0|."""
    alpha0 = x @ atoms.T  # (B, N)
    pool = None if pool_size is None else _top_atoms(alpha0.abs(), pool_size)  # (B, M)
    if pool is not None:
        alpha0 = alpha0.gather(1, pool)  # (B, M)
    batch, width = alpha0.shape
    diagonal = atoms.square().sum(dim=1) if gram is None else gram.diagonal()  # (N,)
    rows = x.new_empty(batch, k, width)  # (B, k, M): Gram rows of the chosen atoms over the searched ones
    chol = x.new_zeros(batch, k, k)  # lower Cholesky factors of G[I, I]
    picked = torch.zeros(batch, k, dtype=torch.long, device=x.device)  # (B, k): positions among the searched
    scores = alpha0.abs().unsqueeze(1)  # (B, 1, M), then the output buffer of every update
    for step in range(k):
        position = _exclude(scores.squeeze(1), picked[:, :step]).argmax(dim=1)  # (B,)
        picked[:, step] = position
        chosen = position if pool is None else pool.gather(1, position[:, None]).squeeze(1)  # (B,) atom ids
        if gram is None:
            rows[:, step] = (atoms[chosen] @ atoms.T).gather(1, pool)
        else:
            rows[:, step] = gram.index_select(0, chosen) if pool is None else gram[chosen[:, None], pool]
        cross = rows[:, step].gather(1, picked[:, :step])  # (B, t) = G[I, chosen]
        _grow_cholesky(chol, step, cross, diagonal[chosen], floor)
        gamma = _solve(chol, alpha0.gather(1, picked[:, :step + 1]))  # (B, t+1)
        if step + 1 < k:  # alpha = alpha0 - gamma @ G[I, :], written into the scores buffer
            torch.baddbmm(alpha0.unsqueeze(1), gamma.unsqueeze(1), rows[:, :step + 1], alpha=-1, out=scores).abs_()
    return (picked if pool is None else pool.gather(1, picked)), gamma


def _accept(x: Tensor, atoms: Tensor, chosen: Tensor, step: int, ids: Tensor, chosen_atoms: Tensor, rhs: Tensor,
            chol: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """Add each target's chosen atom at ``step``: record it, grow the Cholesky factor, re-solve.

    Returns the new coefficients (B, step+1) and the chosen atoms (B, D).
    """
    ids[:, step] = chosen
    new_atom = atoms[chosen]  # (B, D)
    chosen_atoms[:, step] = new_atom
    rhs[:, step] = (new_atom * x).sum(dim=1)
    cross = torch.bmm(chosen_atoms[:, :step], new_atom.unsqueeze(-1)).squeeze(-1)  # (B, t)
    _grow_cholesky(chol, step, cross, new_atom.square().sum(dim=1), floor)
    return _solve(chol, rhs[:, :step + 1]), new_atom  # (B, t+1), (B, D)


def pursue_residual(x: Tensor, atoms: Tensor, k: int, floor: float) -> tuple[Tensor, Tensor]:
    """OMP without a Gram: each step correlates the residual with every atom (one GEMM)."""
    batch, dim = x.shape
    chosen_atoms = x.new_empty(batch, k, dim)  # (B, k, D)
    rhs = x.new_empty(batch, k)  # (B, k): A_I x
    chol = x.new_zeros(batch, k, k)
    ids = torch.zeros(batch, k, dtype=torch.long, device=x.device)
    residual = x
    for step in range(k):
        scores = _exclude((residual @ atoms.T).abs_(), ids[:, :step])  # (B, N)
        chosen = scores.argmax(dim=1)  # (B,)
        gamma, _ = _accept(x, atoms, chosen, step, ids, chosen_atoms, rhs, chol, floor)
        residual = x - torch.bmm(gamma.unsqueeze(1), chosen_atoms[:, :step + 1]).squeeze(1)  # (B, D)
    return ids, gamma


def ranking_matrix(atoms: Tensor, dtype: torch.dtype) -> Tensor:
    """The refreshed path's full-correlation operand, (D, N) or (D, N').

    float32: the transposed view of the float32 atoms (upcast once where they are stored lower), no copy; the
    solver then gathers from those same rows (``ranked_rows``). A lower precision: a contiguous transposed copy,
    N' rounded up to whole blocks of _RANK_BLOCK with zero columns, since (D, N) bf16 multiplies ~1.45x faster
    than the (N, D) rows' transposed view on AMX; float32 multiplies as fast either way on the CPUs measured
    (294 x 640 by 640 x 46,080: ~100-120 ms both ways on a 2-core Xeon). ``pursue_refreshed`` pads its scores to
    whole blocks either way, so that ``_pool`` can look at block maxima first."""
    if dtype == torch.float32:
        return atoms.to(dtype).T
    width = -(-atoms.shape[0] // _RANK_BLOCK) * _RANK_BLOCK
    ranking = atoms.new_zeros(atoms.shape[1], width, dtype=dtype)
    ranking[:, :atoms.shape[0]] = atoms.T
    return ranking


def ranked_rows(ranking: Tensor) -> Tensor | None:
    """The float32 atoms (N, D) that a float32 ``ranking_matrix`` is a view of; None for a lower-precision copy."""
    return ranking.T if ranking.dtype == torch.float32 and ranking.T.is_contiguous() else None


def _pool(scores: Tensor, size: int) -> Tensor:
    """Ids (B, size) of each row's ``size`` largest ``scores`` (B, N'), largest first.

    The largest entries lie in the blocks of _RANK_BLOCK columns with the largest maxima, so one pass of block
    maxima and a top-k over the few blocks chosen gives the same values as a top-k over the whole row (which
    atom wins a tie at the cut may differ): for 294 rows over 46k atoms and a pool of 64, 4.4 ms against 9.8 ms
    (2-core AMD EPYC). The chosen blocks are copied whole (``index_select``): a ``gather`` of them took 8.0 ms.
    Blocks of 64 took 3.7 ms but break ties at the cut differently, which moved P1's ben ratio by 0.005.
    """
    batch, width = scores.shape
    blocks = width // _RANK_BLOCK
    if 4 * size > blocks:
        return scores.topk(size, dim=1).indices
    tiles = scores.view(batch, blocks, _RANK_BLOCK)
    best = tiles.amax(dim=2).topk(size, dim=1).indices  # (B, size): the blocks
    offsets = (best + blocks * torch.arange(batch, device=scores.device)[:, None]).flatten()  # (B * size,)
    within = tiles.reshape(-1, _RANK_BLOCK).index_select(0, offsets).view(batch, -1).topk(size, dim=1).indices
    return best.gather(1, within // _RANK_BLOCK) * _RANK_BLOCK + within % _RANK_BLOCK


def pursue_refreshed(x: Tensor, atoms: Tensor, k: int, floor: float, refresh: int,
                     pool_size: int, ranking: Tensor,
                     workspace: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """OMP that correlates the residual with every atom only every ``refresh`` steps.

    At each refresh each target keeps its ``pool_size`` atoms of largest |residual correlation|
    (``ranking``: ``ranking_matrix``); the steps in between pick among them exactly. The atom chosen
    can differ from exact OMP only when an atom outside the pool overtakes every pooled atom within
    ``refresh`` steps; k/refresh full GEMMs instead of k.

    Between refreshes the pursuit is Gram-Schmidt in pool coordinates: with q_0..q_t-1 the chosen atoms
    orthonormalised, ``projections[:, j, p] = q_j . a_p`` over the pool and ``alpha`` = the residual's
    correlations with the pool, a step picks s = argmax |alpha|, appends q_t = (a_s - sum_j u_j q_j) / norm
    (u = projections[:, :t, s]) and subtracts (alpha_s / norm) q_t from alpha. So a step is one small
    batched product and no factorisation; the lower factor ``chol`` (= R^T of A_I = R^T Q, the Cholesky
    factor of G[I, I]) and the coefficients c_t = q_t . x give gamma by one triangular solve per refresh.
    """
    batch, dim = x.shape
    n_atoms = atoms.shape[0]
    size = min(pool_size, n_atoms)
    # One stack per target, so that one product per refresh gives the pool's Gram, alpha and the chosen atoms'
    # products with the pool: rows [0, size) the pooled atoms, row size the residual, then the chosen atoms.
    # Reused by every refresh and batch: fresh allocations of this size cost page faults on each one. Named as
    # batch_omp's chosen-atoms buffer, which takes the same memory once the pursuit is done.
    stack = buffer(workspace, "chosen", (batch, size + 1 + k, dim), x)  # (B, M+1+k, D)
    pooled_rows, residual, chosen_atoms = stack[:, :size], stack[:, size], stack[:, size + 1:]
    padded = -(-n_atoms // _RANK_BLOCK) * _RANK_BLOCK  # whole blocks for _pool; the padding is never pooled
    scores = buffer(workspace, "scores", (batch, padded), x, ranking.dtype)  # (B, N')
    chol = x.new_zeros(batch, k, k)  # lower: row t holds u and norm of step t
    coded = x.new_zeros(batch, k)  # (B, k): c_t = q_t . x
    ids = torch.zeros(batch, k, dtype=torch.long, device=x.device)
    projections = buffer(workspace, "projections", (batch, k, size), x)  # (B, k, M): q_j . a_p, filled up to t
    rows = torch.arange(batch, device=x.device)
    for start in range(0, k, refresh):
        gamma = _coefficients(chol[:, :start, :start], coded[:, :start])  # (B, t)
        residual.copy_(x - torch.bmm(gamma.unsqueeze(1), chosen_atoms[:, :start]).squeeze(1))  # (B, D)
        torch.mm(residual.to(ranking.dtype), ranking, out=scores[:, :ranking.shape[1]]).abs_()
        scores[:, n_atoms:] = -1.0  # the padding columns
        pool = _pool(_as_ordered_ints(_exclude(scores, ids[:, :start])), min(size, n_atoms - start))  # (B, m)
        width = pool.shape[1]
        pooled = pooled_rows[:, :width]
        gather(atoms, pool.flatten(), pooled, workspace)
        # One product, assigned into its own buffer (CPU bmm(out=strided view) takes a slow path):
        # rows [0, m) the pool's Gram, row size alpha = A_P r, rows after it A_I A_P^T.
        products = torch.bmm(stack[:, :size + 1 + start], pooled.transpose(1, 2),
                             out=buffer(workspace, "products", (batch, size + 1 + start, width), x))
        gram, alpha = products[:, :width], products[:, size].clone()  # (B, m, m), (B, m)
        stop = min(k, start + refresh)
        basis = projections[:, :stop, :width]
        if start:  # q_j . a_p = L^-1 (A_I A_P^T)
            basis[:, :start] = torch.linalg.solve_triangular(chol[:, :start, :start], products[:, size + 1:],
                                                             upper=False)
        taken = torch.zeros(pool.shape, dtype=torch.bool, device=x.device)  # (B, m)
        for step in range(start, stop):
            position = alpha.abs().masked_fill_(taken, -1.0).argmax(dim=1)  # (B,)
            taken[rows, position] = True
            ids[:, step] = pool[rows, position]
            chosen_atoms[:, step] = pooled[rows, position]
            along = basis[:, :step].gather(2, position.view(batch, 1, 1).expand(batch, step, 1))  # (B, t, 1)
            # An atom dependent on earlier ones has a ~0 pivot: the floor keeps the factor solvable.
            norm = (gram[rows, position, position] - along.square().sum(dim=(1, 2))).clamp_min(floor).sqrt()  # (B,)
            chol[:, step, :step] = along.squeeze(-1)
            chol[:, step, step] = norm
            direction = gram[rows, position] - torch.bmm(along.transpose(1, 2), basis[:, :step]).squeeze(1)  # (B, m)
            basis[:, step] = direction.div_(norm.unsqueeze(1))
            coded[:, step] = alpha[rows, position] / norm
            alpha.sub_(coded[:, step, None] * basis[:, step])
    return ids, _coefficients(chol, coded)


def _coefficients(chol: Tensor, coded: Tensor) -> Tensor:
    """gamma (B, t) with A_I^T gamma = sum_j c_j q_j: L^T gamma = c for the lower factor L (B, t, t)."""
    return torch.linalg.solve_triangular(chol.transpose(1, 2), coded.unsqueeze(-1), upper=True).squeeze(-1)
