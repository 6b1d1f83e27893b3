"""Batch orthogonal matching pursuit: k-sparse codes for many targets over one shared dictionary.

The OMP transplant (Goddard & Fernandes Neto, arXiv 2506.06607) writes each new donor embedding as a
k-sparse combination of anchor embeddings; this module is only that solver. Its main path follows
Batch-OMP (Rubinstein, Zibulevsky & Elad 2008): ``alpha0 = X A^T`` and the Gram ``G = A A^T`` are
computed once, and each step updates ``alpha = alpha0 - G[I, :]^T gamma`` with ``gamma`` from a
progressively extended Cholesky factor of ``G[I, I]``. A step then costs O(t * N) per target (t atoms
chosen so far) whatever the embedding width D, where correlating the residual with every atom, as
mergekit does, costs O(N * D); no least-squares problem is ever solved from scratch. The pursuit loops
themselves are in pursuits.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ...config import OMPConfig
from ...runtime.progress import Tick
from .pursuits import buffer, gather, pursue_gram, pursue_refreshed, pursue_residual, ranked_rows, ranking_matrix

_GRAM_SHARE = 0.5  # the (N, N) Gram may take at most this share of free memory
_GRAM_CAP = 1 << 30  # ...and at most 1 GiB (N <= 16k anchors)
_BATCH_SHARE = 0.25  # one batch's working set may take this share of the memory left after it
_BATCH_CAP = 256 << 20  # ...and at most 256 MiB on CPU: ~300 targets over 46k anchors feed the GEMMs (1.4x faster
# than ~75 on P1), and the working set stays small beside the embeddings themselves
_BATCH_CAP_CUDA = 4 << 30  # on a GPU each step is ~20 kernel launches whatever the batch: fewer, larger batches
_JITTER = 1e-6  # floor on Cholesky pivots, relative to the mean squared atom norm
_FLOOR_BLOCK = 8192  # atoms squared at a time to find that floor
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


def selection_atoms(dictionary: Tensor, normalize_atoms: bool) -> tuple[Tensor, Tensor]:
    """The atoms OMP correlates with (the rows as given, or float32 unit rows), and each atom's scale back to the
    original rows.

    With ``normalize_atoms`` the atoms are unit rows (zero rows stay zero), so selection is not
    biased towards long embeddings; coefficients found for them are divided by the scale.
    """
    if not normalize_atoms:
        return dictionary, torch.ones(dictionary.shape[0], device=dictionary.device)
    atoms = dictionary.to(torch.float32)  # (N, D)
    norms = atoms.norm(dim=1)  # (N,)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    return atoms / scale[:, None], scale


def pivot_floor(dictionary: Tensor, normalize_atoms: bool) -> float:
    """The floor on Cholesky pivots: _JITTER times the atoms' mean squared norm, a block of rows at a time (a
    float32 square of all of them was a 106 MB transient in every batch on P1)."""
    squares = torch.cat([selection_atoms(block, normalize_atoms)[0].float().square().sum(dim=1)
                         for block in dictionary.split(_FLOOR_BLOCK)])
    return _JITTER * float(squares.mean().clamp_min(torch.finfo(torch.float32).tiny))


def stored_atoms(dictionary: Tensor, refreshed: bool, normalize_atoms: bool) -> Tensor:
    """The dictionary as the solver keeps it: the refreshed path gathers a few atoms at a time and upcasts them
    then (exactly), so bf16 rows stay bf16 (half a float32 copy); the other paths multiply by every atom."""
    return dictionary if refreshed and not normalize_atoms else dictionary.to(torch.float32)


def batch_omp(targets: Tensor, dictionary: Tensor, k: int, *, normalize_atoms: bool = OMPConfig.normalize_atoms,
              candidates: int | None = OMPConfig.candidates, gram: Tensor | None = None,
              refresh: int = OMPConfig.refresh, refresh_pool: int = OMPConfig.refresh_pool,
              ranking: Tensor | None = None, workspace: dict[str, Tensor] | None = None,
              floor: float | None = None) -> OMPResult:
    """k-sparse OMP codes of ``targets`` (B, D) over the rows of ``dictionary`` (N, D), in float32.

    Work happens on ``targets.device``, for the whole batch at once (``omp_batches`` splits large B).
    The Gram is used when ``gram`` is given or when the (N, N) Gram fits ``gram_fits`` (at most 1 GiB and
    half of free memory, i.e. N <= 16k anchors)
    (then it is built here). Which path runs:

    * ``candidates`` None (or >= N), with a Gram: Batch-OMP, exact. Each step costs t * N per target
      whatever D is; memory ~4 * k * N bytes per target.
    * ``candidates`` None, no Gram fits, ``refresh`` > 1 (OMPConfig's default 8): residual OMP that
      correlates with every atom only every ``refresh`` steps and picks among each target's
      ``refresh_pool`` best atoms in between (see ``pursue_refreshed``): k/refresh GEMMs instead of k;
      on real embeddings (46k anchors, k=64) its mean relative residual is within 3% of exact OMP's.
    * ``candidates`` None, no Gram fits, ``refresh`` 1: residual OMP, exact. Each step correlates the residual with
      every atom, one GEMM of N * D per target as in mergekit, with Cholesky updates instead of a refit.
    * ``candidates=M`` < N: exact Batch-OMP inside each target's M atoms of largest |initial correlation|.
      Cheaper per step but approximate: on real embeddings, whose shared mean direction dominates the
      initial ranking, it leaves a far larger residual (bench/bench_omp_solver.py measures it).

    ``gram`` is the Gram of the selection atoms (unit rows when ``normalize_atoms``); pass it to reuse
    one Gram across batches. ``ranking``: the refreshed path's full-correlation operand (``ranking_matrix`` of
    the selection atoms, maybe in a lower precision: ``fast_selection_dtype``); None builds it in float32.
    ``workspace``: buffers kept from an earlier batch, reused (see ``buffer``). ``floor``: ``pivot_floor`` of the
    dictionary, computed here when None.
    Ties go to the lowest atom index.
    """
    _check(targets, dictionary, k, candidates, gram)
    if refresh < 1 or refresh_pool < 1:
        raise ValueError(f"refresh={refresh} and refresh_pool={refresh_pool} must be at least 1")
    device = targets.device
    x = targets.to(torch.float32)  # (B, D)
    n_atoms = dictionary.shape[0]
    pool_size = candidates if candidates is not None and candidates < n_atoms else None
    fits = gram is None and gram_fits(n_atoms, device)
    refreshed = gram is None and not fits and pool_size is None and refresh > 1
    dictionary = stored_atoms(dictionary.to(device), refreshed, normalize_atoms)  # (N, D)
    atoms, scale = selection_atoms(dictionary, normalize_atoms)
    floor = pivot_floor(dictionary, normalize_atoms) if floor is None else floor
    if fits:
        gram = atoms @ atoms.T  # (N, N)
    if refreshed:
        ranking = ranking_matrix(atoms, torch.float32) if ranking is None else ranking.to(device)
        indices, gamma = pursue_refreshed(x, atoms, k, floor, refresh, refresh_pool, ranking, workspace)
    elif gram is None and pool_size is None:
        indices, gamma = pursue_residual(x, atoms, k, floor)
    else:
        gram = None if gram is None else gram.to(device=device, dtype=torch.float32)
        indices, gamma = pursue_gram(x, atoms, k, floor, gram, pool_size)
    chosen = buffer(workspace, "chosen", (*indices.shape, atoms.shape[1]), x)  # (B, k, D)
    gather(atoms, indices.flatten(), chosen.view(-1, atoms.shape[1]), workspace)
    residual = (x - torch.bmm(gamma.unsqueeze(1), chosen).squeeze(1)).norm(dim=1)  # (B,)
    # A least-squares code never leaves more than the target itself; more (or NaN) means the updates overflowed.
    broken = ~(residual <= x.norm(dim=1) * (1 + 1e-3))
    if broken.any():
        gamma[broken] = _min_norm_codes(x[broken], atoms[indices[broken]].float())
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
    (n_atoms, dim), total = dictionary.shape, targets.shape[0]
    if gram is None and gram_fits(n_atoms, run_on):
        atoms, _ = selection_atoms(dictionary.to(device=run_on, dtype=torch.float32), normalize_atoms)
        gram = atoms @ atoms.T  # (N, N)
        del atoms
    searched = min(candidates or n_atoms, n_atoms)
    exact_without_gram = gram is None and searched == n_atoms
    dictionary = stored_atoms(dictionary.to(run_on), exact_without_gram and refresh > 1, normalize_atoms)  # (N, D)
    floor = pivot_floor(dictionary, normalize_atoms)
    ranking = None  # (D, N'), built once for every batch
    if exact_without_gram and refresh > 1:
        ranking = ranking_matrix(selection_atoms(dictionary, normalize_atoms)[0], select_dtype)
        rows = None if normalize_atoms else ranked_rows(ranking)
        dictionary = dictionary if rows is None else rows  # the float32 rows ranked: no second copy of the anchors
    # Working set per target in floats: ~3 vectors over N, the chosen atoms, and on the Batch-OMP
    # paths the chosen atoms' Gram rows over the atoms searched.
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
                         ranking=ranking, workspace=workspace, floor=floor)
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


def _min_norm_codes(x: Tensor, chosen: Tensor) -> Tensor:
    """Least-squares codes (B, k) of x (B, D) over each row's chosen atoms (B, k, D) by a pseudo-inverse (dropping
    directions below _PINV_RTOL of the largest), for rows whose Cholesky updates overflowed: a target that is
    (nearly) one atom with a near duplicate in the dictionary (bench/bench_audit.py, duplicate) leaves later pivots
    at the jitter floor once its residual is ~0, and the coefficients grow past float32."""
    return (torch.linalg.pinv(chosen.transpose(1, 2), rtol=_PINV_RTOL) @ x.unsqueeze(-1)).squeeze(-1)
