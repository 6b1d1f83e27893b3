"""Time tokensurgeon's OMP solver against straightforward mergekit-style OMP, at equal k.

Baselines (written here, not imported): k steps of |residual @ atoms^T| over all N unnormalised atoms,
then either a fresh least-squares fit on the atoms chosen so far (``lstsq``) or, as mergekit itself
does, an incremental Gram-Schmidt basis (``gram-schmidt``). Ours: exact Batch-OMP with the Gram,
exact residual OMP and omp_batches' default when no Gram fits, and candidate pre-selection. The Gram
is built once and timed apart: a transplant builds it once for all of its 10k-210k targets.

Data are random anisotropic "embeddings" by default, or real ones with --embeddings (anchors and
targets are disjoint random rows). The relative residual ||x - approx|| / ||x|| is averaged over the
first targets that every solver ran on, and over the first --slow-targets for all but lstsq: on real
embeddings near-ties make greedy paths diverge, so a few targets are a noisy sample. CPU seconds
count every thread, and are steadier than wall time on a shared machine.

    python bench/bench_omp_solver.py                 # about 2 minutes on 2 idle CPU cores
    python bench/bench_omp_solver.py --embeddings EMBEDDINGS.safetensors   # e.g. the zoo's
        ~/.cache/tokensurgeon/models/gemma3-270m/model-00001-of-00003.safetensors (D=640)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from tokensurgeon.methods._shared import sparse_coding
from tokensurgeon.methods._shared.sparse_coding import omp_batches, selection_atoms


def random_embeddings(rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, dim): a 1/sqrt(i) spectrum in a random basis around a shared mean.

    The mean is half as long as a typical centred row, so rows have cosine ~0.2 on average, as in
    Gemma3-270M's embeddings (SmolLM2-135M's are nearer 0.45).
    """
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=generator)).Q  # (D, D)
    spectrum = torch.arange(1, dim + 1, dtype=torch.float32).rsqrt()  # (D,)
    mean = torch.randn(dim, generator=generator)  # (D,)
    mean *= 0.5 * spectrum.norm() / mean.norm()
    return mean + (torch.randn(rows, dim, generator=generator) * spectrum) @ basis


def real_embeddings(path: Path, tensor: str, rows: int, generator: torch.Generator) -> torch.Tensor:
    """``rows`` distinct random rows of one tensor in a safetensors file, as float32."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        matrix = handle.get_tensor(tensor)
    if rows > matrix.shape[0]:
        raise SystemExit(f"{tensor} has {matrix.shape[0]} rows; --atoms plus --targets asks for {rows}")
    return matrix[torch.randperm(matrix.shape[0], generator=generator)[:rows]].float()


def lstsq_omp(targets: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Residual norms (B,) of OMP that refits all coefficients by least squares at every step."""
    chosen = torch.zeros(targets.shape[0], k, dtype=torch.long)  # (B, k)
    residual = targets
    for step in range(k):
        scores = (residual @ atoms.T).abs().scatter_(1, chosen[:, :step], -1.0)  # (B, N)
        chosen[:, step] = scores.argmax(dim=1)
        selected = atoms[chosen[:, :step + 1]].transpose(1, 2)  # (B, D, t)
        coefficients = torch.linalg.lstsq(selected, targets.unsqueeze(-1)).solution  # (B, t, 1)
        residual = targets - (selected @ coefficients).squeeze(-1)  # (B, D)
    return residual.norm(dim=1)


def gram_schmidt_omp(targets: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Residual norms (B,) of OMP that projects onto an orthonormal basis grown one atom per step."""
    batch, dim = targets.shape
    basis = targets.new_zeros(batch, k, dim)  # (B, k, D), orthonormal rows
    chosen = torch.zeros(batch, k, dtype=torch.long)  # (B, k)
    residual = targets
    for step in range(k):
        scores = (residual @ atoms.T).abs().scatter_(1, chosen[:, :step], -1.0)  # (B, N)
        chosen[:, step] = scores.argmax(dim=1)
        direction = atoms[chosen[:, step]]  # (B, D)
        for _ in range(2):  # twice, so the basis stays orthogonal in float32
            overlap = torch.bmm(basis[:, :step], direction.unsqueeze(-1))  # (B, t, 1)
            direction = direction - (basis[:, :step] * overlap).sum(dim=1)
        basis[:, step] = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        residual = residual - (residual * basis[:, step]).sum(dim=1, keepdim=True) * basis[:, step]
    return residual.norm(dim=1)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, float]:
    """fn's output, wall seconds, and CPU seconds of this process (steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_shape(args: argparse.Namespace, dim: int) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    rows = args.atoms + args.targets
    data = (real_embeddings(args.embeddings, args.tensor, rows, generator) if args.embeddings
            else random_embeddings(rows, dim, generator))
    dictionary, targets = data[:args.atoms].contiguous(), data[args.atoms:].contiguous()  # (N, D), (B, D)
    dim = dictionary.shape[1]
    atoms, _ = selection_atoms(dictionary, True)
    gram, gram_s, _ = timed(lambda: atoms @ atoms.T)  # (N, N)
    del atoms
    counts = {"exact": args.targets, "candidates": args.targets, "residual": min(args.slow_targets, args.targets),
              "refreshed": args.targets,
              "gram-schmidt": min(args.slow_targets, args.targets), "lstsq": min(args.lstsq_targets, args.targets)}
    runs: dict[str, tuple[torch.Tensor, float, float]] = {}
    runs["exact"] = timed(lambda: omp_batches(targets, dictionary, args.k, device="cpu", normalize_atoms=True, gram=gram).residual_norm)
    runs["candidates"] = timed(lambda: omp_batches(targets, dictionary, args.k, device="cpu", normalize_atoms=True, gram=gram,
                                                   candidates=args.candidates).residual_norm)
    del gram
    with mock.patch.object(sparse_coding, "gram_fits", return_value=False):
        runs["residual"] = timed(lambda: omp_batches(targets[:counts["residual"]], dictionary, args.k,
                                                     device="cpu", refresh=1).residual_norm)
        runs["refreshed"] = timed(lambda: omp_batches(targets[:counts["refreshed"]], dictionary, args.k,
                                                      device="cpu").residual_norm)
    runs["gram-schmidt"] = timed(lambda: gram_schmidt_omp(targets[:counts["gram-schmidt"]], dictionary, args.k))
    runs["lstsq"] = timed(lambda: lstsq_omp(targets[:counts["lstsq"]], dictionary, args.k))
    few, many = counts["lstsq"], min(count for name, count in counts.items() if name != "lstsq")
    norms = targets[:many].norm(dim=1)
    print(f"\nN={args.atoms} D={dim} k={args.k}: Gram (N, N) built once in {gram_s:.1f}s")
    labels = {"exact": "batch_omp exact (Gram)", "candidates": f"batch_omp candidates={args.candidates}",
              "residual": "batch_omp exact (no Gram)", "refreshed": "omp_batches default (no Gram)",
              "gram-schmidt": "mergekit-style Gram-Schmidt", "lstsq": "mergekit-style lstsq"}
    print(f"  {'solver':<32} {'s/1000 wall':>11} {'s/1000 CPU':>11} {'ran':>5}  "
          f"{f'rel. residual, first {few}':>25} {f'first {many}':>10}")
    for name, (residual, wall, cpu) in runs.items():
        relative = residual[:many] / norms[:len(residual)]
        wide = f"{relative[:many].mean():10.5f}" if len(residual) >= many else f"{'':10}"
        print(f"  {labels[name]:<32} {1000 * wall / counts[name]:11.2f} {1000 * cpu / counts[name]:11.2f} "
              f"{counts[name]:>5}  {relative[:few].mean():25.5f} {wide}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atoms", type=int, default=30000, help="N anchors")
    parser.add_argument("--dims", type=int, nargs="+", default=[640, 576], help="D values (random data only)")
    parser.add_argument("--targets", type=int, default=512, help="B targets for batch_omp's Gram paths")
    parser.add_argument("--slow-targets", type=int, default=128, help="targets for the GEMM-per-step solvers")
    parser.add_argument("--lstsq-targets", type=int, default=8, help="targets for the lstsq baseline")
    parser.add_argument("-k", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=4096, help="M for candidate pre-selection")
    parser.add_argument("--embeddings", type=Path, help="safetensors file with real embeddings")
    parser.add_argument("--tensor", default="model.embed_tokens.weight", help="tensor name in --embeddings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for dim in args.dims[:1] if args.embeddings else args.dims:
        run_shape(args, dim)


if __name__ == "__main__":
    main()
