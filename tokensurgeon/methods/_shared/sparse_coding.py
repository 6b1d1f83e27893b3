"""Batch orthogonal matching pursuit: k-sparse codes for many targets over one shared dictionary.

The OMP transplant (Goddard & Fernandes Neto, arXiv 2506.06607) writes each new donor embedding as a
k-sparse combination of anchor embeddings; this module is only that solver. Its main path follows
Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): ``alpha0 = X A^T`` and the Gram ``G = A A^T`` are
computed once, and each step updates ``alpha = alpha0 - G[I, :]^T gamma`` with ``gamma`` from a
progressively extended Cholesky factor of ``G[I, I]``. A step then costs O(t * N) per target (t atoms
chosen so far) whatever the embedding width D, where correlating the residual with every atom, as
mergekit does, costs O(N * D); no least-squares problem is ever solved from scratch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import OMPConfig
from ...runtime.progress import Tick

_GRAM_SHARE = 0.5  # the (N, N) Gram may take at most this share of free memory
_GRAM_CAP = 1 << 30  # ...and at most 1 GiB (N <= 16k anchors)
_BATCH_SHARE = 0.25  # one batch's working set may take this share of the memory left after it
_BATCH_CAP = 256 << 20  # ...and at most 256 MiB on CPU: ~300 targets over 46k anchors feed the GEMMs (1.4x faster
# than ~75 on P1), and the working set stays small beside the embeddings themselves
_BATCH_CAP_CUDA = 4 << 30  # on a GPU each step is ~20 kernel launches whatever the batch: fewer, larger batches
_JITTER = 1e-6  # floor on Cholesky pivots, relative to the mean squared atom norm
_PINV_RTOL = 1e-4  # singular values below this share of the largest are dropped when codes are repaired


@dataclass(frozen=True)
class OMPResult:
    """``targets[b] ~= coefficients[b] @ dictionary[indices[b]]`` for every row b.

    indices: (B, k) long, distinct within a row, in the order OMP chose them.
    coefficients: (B, k) float32, for the original (unnormalised) dictionary rows.
    residual_norm: (B,) float32, ``||target - reconstruction||``.
    """

    indices: Tensor
    coefficients: Tensor
    residual_norm: Tensor


def free_memory_bytes(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: the CUDA allocator's view, else MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gram_fits(n_atoms: int, device: torch.device) -> bool:
    """Whether an (N, N) float32 Gram is small (at most _GRAM_CAP) and leaves room for the batches.

    The cap keeps peak memory following the embeddings: a 46k-anchor Gram would be 8.5 GB.
    """
    size = n_atoms * n_atoms * 4
    return size <= _GRAM_CAP and size <= _GRAM_SHARE * free_memory_bytes(device)


def fast_selection_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware multiplies it natively, else float32: the refreshed path's full correlations
    only rank atoms into pools whose correlations stay float32, so bf16 changes a pool only at near ties, and
    its GEMM is ~5x faster on CPUs with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    cpu = torch.cpu
    native = [getattr(cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if device.type == "cpu" and any(check() for check in native) else torch.float32


def selection_atoms(dictionary: Tensor, normalize_atoms: bool) -> tuple[Tensor, Tensor]:
    """The float32 atoms OMP correlates with, and each atom's scale back to the original rows.

    With ``normalize_atoms`` the atoms are unit rows (zero rows stay zero), so selection is not
    biased towards long embeddings; coefficients found for them are divided by the scale.
    """
    atoms = dictionary.to(torch.float32)  # (N, D)
    if not normalize_atoms:
        return atoms, torch.ones(atoms.shape[0], device=atoms.device)
    norms = atoms.norm(dim=1)  # (N,)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    return atoms / scale[:, None], scale


def batch_omp(targets: Tensor, dictionary: Tensor, k: int, *, normalize_atoms: bool = OMPConfig.normalize_atoms,
              candidates: int | None = OMPConfig.candidates, gram: Tensor | None = None,
              refresh: int = OMPConfig.refresh, refresh_pool: int = OMPConfig.refresh_pool,
              selection: Tensor | None = None, workspace: dict[str, Tensor] | None = None) -> OMPResult:
    """k-sparse OMP codes of ``targets`` (B, D) over the rows of ``dictionary`` (N, D), in float32.

    Work happens on ``targets.device``, for the whole batch at once (``omp_batches`` splits large B).
    The Gram is used when ``gram`` is given or when the (N, N) Gram fits ``gram_fits`` (at most 1 GiB and
    half of free memory, i.e. N <= 16k anchors)
    (then it is built here). Which path runs:

    * ``candidates`` None (or >= N), with a Gram: Batch-OMP, exact. Each step costs t * N per target
      whatever D is; memory ~4 * k * N bytes per target.
    * ``candidates`` None, no Gram fits, ``refresh`` > 1 (omp_batches' default 8): residual OMP that
      correlates with every atom only every ``refresh`` steps and picks among each target's
      ``refresh_pool`` best atoms in between (see ``_pursue_refreshed``): k/refresh GEMMs instead of k;
      on P1's real embeddings its residual is within 3% of exact OMP's.
    * ``candidates`` None, no Gram fits, ``refresh`` 1: residual OMP, exact. Each step correlates the residual with
      every atom, one GEMM of N * D per target as in mergekit, with Cholesky updates instead of a refit.
    * ``candidates=M`` < N: exact Batch-OMP inside each target's M atoms of largest |initial correlation|.
      Cheaper per step but approximate: on real embeddings, whose shared mean direction dominates the
      initial ranking, it leaves a far larger residual (bench/bench_omp_solver.py measures it).

    ``gram`` is the Gram of the selection atoms (unit rows when ``normalize_atoms``); pass it to reuse
    one Gram across batches. ``selection``: the selection atoms in a lower precision (``fast_selection_dtype``)
    for the refreshed path's full correlations; None uses the float32 atoms. ``workspace``: buffers kept from an
    earlier batch, reused (see ``_buffer``). Ties go to the lowest atom index.
    """
    _check(targets, dictionary, k, candidates, gram)
    if refresh < 1 or refresh_pool < 1:
        raise ValueError(f"refresh={refresh} and refresh_pool={refresh_pool} must be at least 1")
    device = targets.device
    x = targets.to(torch.float32)  # (B, D)
    dictionary = dictionary.to(device=device, dtype=torch.float32)  # (N, D)
    atoms, scale = selection_atoms(dictionary, normalize_atoms)
    n_atoms = atoms.shape[0]
    floor = _JITTER * float(atoms.square().sum(dim=1).mean().clamp_min(torch.finfo(torch.float32).tiny))
    pool_size = candidates if candidates is not None and candidates < n_atoms else None
    if gram is None and gram_fits(n_atoms, device):
        gram = atoms @ atoms.T  # (N, N)
    if gram is None and pool_size is None and refresh > 1:
        indices, gamma = _pursue_refreshed(x, atoms, k, floor, refresh, refresh_pool,
                                           atoms if selection is None else selection.to(device), workspace)
    elif gram is None and pool_size is None:
        indices, gamma = _pursue_residual(x, atoms, k, floor)
    else:
        gram = None if gram is None else gram.to(device=device, dtype=torch.float32)
        indices, gamma = _pursue_gram(x, atoms, k, floor, gram, pool_size)
    chosen = _buffer(workspace, "chosen", (*indices.shape, atoms.shape[1]), x)  # (B, k, D)
    torch.index_select(atoms, 0, indices.flatten(), out=chosen.view(-1, atoms.shape[1]))
    residual = (x - torch.bmm(gamma.unsqueeze(1), chosen).squeeze(1)).norm(dim=1)  # (B,)
    # A least-squares code never leaves more than the target itself; more (or NaN) means the updates overflowed.
    broken = ~(residual <= x.norm(dim=1) * (1 + 1e-3))
    if broken.any():
        gamma[broken] = _min_norm_codes(x[broken], atoms[indices[broken]])
    coefficients = gamma / scale[indices]  # (B, k)
    if atoms is not dictionary:  # normalised atoms: the reconstruction uses the original rows
        torch.index_select(dictionary, 0, indices.flatten(), out=chosen.view(-1, atoms.shape[1]))
    reconstruction = torch.einsum("bk,bkd->bd", coefficients, chosen)  # (B, D)
    return OMPResult(indices, coefficients, (x - reconstruction).norm(dim=1))


def omp_batches(targets: Tensor, dictionary: Tensor, k: int, *, device: str | torch.device | None = None,
                batch_size: int | None = None, progress: Tick | None = None,
                normalize_atoms: bool = OMPConfig.normalize_atoms, candidates: int | None = OMPConfig.candidates,
                gram: Tensor | None = None, refresh: int = OMPConfig.refresh,
                refresh_pool: int = OMPConfig.refresh_pool,
                select_dtype: torch.dtype = torch.float32) -> OMPResult:
    """``batch_omp`` over any number of targets on ``device``, in batches sized from free memory.

    ``select_dtype`` other than float32 (``fast_selection_dtype``) runs the refreshed path's full
    correlations in that precision, from one converted copy of the atoms.
    The dictionary is moved and its Gram built once; results come back on the targets' device.
    ``progress(done, total)`` is called after every batch. Same inputs give bit-identical outputs on
    CPU; another batch size can move the last float bits of a GEMM, and so break a near tie.
    """
    _check(targets, dictionary, k, candidates, gram)
    run_on = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dictionary = dictionary.to(device=run_on, dtype=torch.float32)  # (N, D)
    (n_atoms, dim), total = dictionary.shape, targets.shape[0]
    if gram is None and gram_fits(n_atoms, run_on):
        atoms, _ = selection_atoms(dictionary, normalize_atoms)
        gram = atoms @ atoms.T  # (N, N)
        del atoms
    selection = None
    if gram is None and select_dtype != torch.float32:
        selection = selection_atoms(dictionary, normalize_atoms)[0].to(select_dtype)  # (N, D)
    # Working set per target in floats: ~3 vectors over N, the chosen atoms, and on the Batch-OMP
    # paths the chosen atoms' Gram rows over the atoms searched.
    searched = min(candidates or n_atoms, n_atoms)
    exact_without_gram = gram is None and searched == n_atoms
    floats = 3 * n_atoms + k * dim + (refresh_pool * (dim + k + refresh_pool) if exact_without_gram else k * searched)
    cap = _BATCH_CAP_CUDA if run_on.type == "cuda" else _BATCH_CAP
    budget = min(_BATCH_SHARE * free_memory_bytes(run_on), cap)
    size = batch_size or max(1, int(budget) // (4 * floats))
    # Results allocated once: per-batch pieces between large buffers fragmented the heap (3.9 GB at 216k targets).
    out = targets.device
    result = OMPResult(torch.empty(total, k, dtype=torch.long, device=out),
                       torch.empty(total, k, dtype=torch.float32, device=out),
                       torch.empty(total, dtype=torch.float32, device=out))
    workspace: dict[str, Tensor] = {}  # every batch reuses the first one's largest buffers
    for start in range(0, total, size):
        part = batch_omp(targets[start:start + size].to(run_on), dictionary, k, normalize_atoms=normalize_atoms,
                         candidates=candidates, gram=gram, refresh=refresh, refresh_pool=refresh_pool,
                         selection=selection, workspace=workspace)
        for into, field in zip((result.indices, result.coefficients, result.residual_norm),
                               (part.indices, part.coefficients, part.residual_norm)):
            into[start:start + size] = field
        if progress is not None:
            progress(min(start + size, total), total)
    return result


def _check(targets: Tensor, dictionary: Tensor, k: int, candidates: int | None, gram: Tensor | None) -> None:
    if targets.ndim != 2 or dictionary.ndim != 2 or targets.shape[1] != dictionary.shape[1]:
        raise ValueError(f"targets (B, D) and dictionary (N, D) must share D; got {tuple(targets.shape)} "
                         f"and {tuple(dictionary.shape)}")
    n_atoms = dictionary.shape[0]
    if not 1 <= k <= n_atoms:
        raise ValueError(f"k={k} must be between 1 and the number of dictionary atoms N={n_atoms}: "
                         "a k-sparse code needs k distinct atoms")
    if candidates is not None and candidates < k:
        raise ValueError(f"candidates={candidates} must be at least k={k}")
    if gram is not None and tuple(gram.shape) != (n_atoms, n_atoms):
        raise ValueError(f"gram must be ({n_atoms}, {n_atoms}); got {tuple(gram.shape)}")


def _buffer(workspace: dict[str, Tensor] | None, name: str, shape: tuple[int, ...], like: Tensor,
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


def _min_norm_codes(x: Tensor, chosen: Tensor) -> Tensor:
    """Least-squares codes (B, k) of x (B, D) over each row's chosen atoms (B, k, D) by a pseudo-inverse (dropping
    directions below _PINV_RTOL of the largest), for rows whose Cholesky updates overflowed: a target that is
    (nearly) one atom with a near duplicate in the dictionary (bench/bench_audit.py, duplicate) leaves later pivots
    at the jitter floor once its residual is ~0, and the coefficients grow past float32."""
    return (torch.linalg.pinv(chosen.transpose(1, 2), rtol=_PINV_RTOL) @ x.unsqueeze(-1)).squeeze(-1)


def _exclude(scores: Tensor, chosen: Tensor) -> Tensor:
    """``scores`` (B, N) with each row's ``chosen`` (B, t) entries set to -1, in place.

    Indexed assignment, not ``scatter_``: torch's CPU scatter of a value walks the whole (B, N) tensor
    (~95 ms for 256 x 46k, against 0.2 ms here), which was a sixth of the solve at 200k targets.
    """
    rows = torch.arange(scores.shape[0], device=scores.device)[:, None]
    scores[rows, chosen] = -1.0
    return scores


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


def _pursue_gram(x: Tensor, atoms: Tensor, k: int, floor: float, gram: Tensor | None,
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


def _pursue_residual(x: Tensor, atoms: Tensor, k: int, floor: float) -> tuple[Tensor, Tensor]:
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


def _pursue_refreshed(x: Tensor, atoms: Tensor, k: int, floor: float, refresh: int,
                      pool_size: int, selection: Tensor,
                      workspace: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """OMP that correlates the residual with every atom only every ``refresh`` steps.

    At each refresh each target keeps its ``pool_size`` atoms of largest |residual correlation|;
    the steps in between pick among them exactly, from the pool's Gram and its chosen atoms' Gram
    rows (alpha_pool = x A_P^T - gamma G[I, P]). Costs k/refresh full GEMMs instead of k; the atom
    chosen can differ from exact OMP only when an atom outside the pool overtakes every pooled
    atom within ``refresh`` steps. The full correlations use ``selection`` (the atoms, maybe in bf16).
    Per refresh the pool's Gram is one batched GEMM, so the steps in between only gather: per-step
    batched products against the pool were memory-bound and cost most of the time at 200k targets.
    """
    batch, dim = x.shape
    chosen_atoms = _buffer(workspace, "chosen", (batch, k, dim), x)  # (B, k, D)
    rhs = x.new_empty(batch, k)  # (B, k): A_I x
    chol = x.new_zeros(batch, k, k)
    ids = torch.zeros(batch, k, dtype=torch.long, device=x.device)
    gamma = x.new_zeros(batch, 0)
    rows = torch.arange(batch, device=x.device)
    # Buffers reused by every refresh: fresh allocations of this size cost page faults on each one.
    size = min(pool_size, atoms.shape[0])
    scores = _buffer(workspace, "scores", (batch, atoms.shape[0]), x, selection.dtype)  # (B, N)
    pool_atoms = _buffer(workspace, "pool_atoms", (batch * size, dim), x)  # (B*M, D)
    pool_gram = _buffer(workspace, "pool_gram", (batch, size, size), x)  # (B, M, M)
    gram_rows = _buffer(workspace, "gram_rows", (batch, k, size), x)  # (B, k, M): G[I, P], filled up to t
    for start in range(0, k, refresh):
        if start:  # the atoms chosen since the last refresh, in one gather rather than one per step
            since = ids[:, start - refresh:start]  # (B, refresh)
            chosen_atoms[:, start - refresh:start] = atoms.index_select(0, since.flatten()).view(batch, refresh, dim)
        residual = x - torch.bmm(gamma.unsqueeze(1), chosen_atoms[:, :start]).squeeze(1)  # (B, D)
        _exclude(torch.mm(residual.to(selection.dtype), selection.T, out=scores).abs_(), ids[:, :start])
        pool = scores.topk(min(size, atoms.shape[0] - start), dim=1).indices  # (B, m)
        width = pool.shape[1]
        pooled = torch.index_select(atoms, 0, pool.flatten(), out=pool_atoms[:batch * width]).view(batch, width, dim)
        pool_x = torch.bmm(pooled, x.unsqueeze(-1)).squeeze(-1)  # (B, m)
        gram = torch.bmm(pooled, pooled.transpose(1, 2), out=pool_gram[:, :width, :width])  # (B, m, m)
        stop = min(k, start + refresh)
        chosen_rows = gram_rows[:, :stop, :width]
        # Assigned: torch's CPU bmm(out=strided view) takes a slow path (1-5 s, not 0.06 s, for 1024 targets).
        chosen_rows[:, :start] = torch.bmm(chosen_atoms[:, :start], pooled.transpose(1, 2))
        taken = torch.zeros(pool.shape, dtype=torch.bool, device=x.device)  # (B, m)
        for step in range(start, stop):
            alpha = pool_x - torch.bmm(gamma.unsqueeze(1), chosen_rows[:, :step]).squeeze(1)  # (B, m)
            position = alpha.abs_().masked_fill_(taken, -1.0).argmax(dim=1)  # (B,)
            taken[rows, position] = True
            ids[:, step] = pool[rows, position]
            rhs[:, step] = pool_x[rows, position]
            chosen_rows[:, step] = gram[rows, position]
            cross = chosen_rows[:, :step].gather(2, position.view(batch, 1, 1).expand(batch, step, 1))  # (B, t, 1)
            _grow_cholesky(chol, step, cross.squeeze(-1), gram[rows, position, position], floor)
            gamma = _solve(chol, rhs[:, :step + 1])
    return ids, gamma
