"""Can an inverted file (IVF) rank OMP's atoms instead of a full correlation? Recall of its pools, on real rows.

The refreshed OMP solver (docs/methods/omp.md) multiplies each target's residual by every anchor to take the
64 atoms of largest |correlation| as its pool; at draft scale those full products are most of the solve. An
IVF, the usual approximate maximum-inner-product search, clusters the atoms once and multiplies a residual only
by the atoms of the few clusters whose centroids score highest. Here the clusters are sign-symmetric spherical
k-means of the unit atoms (an atom and its negative rank alike under |correlation|), a cluster's score is
|residual . centroid| times its longest atom, and the pool is the top 64 among the atoms searched.

Printed per number of clusters, OMP step and clusters probed: the share of atoms searched, the recall of the
exact top-64 pool, and how often the exact best atom (the one OMP picks next) is in first place. Residuals at
step s come from s steps of exact OMP.

    python bench/bench_omp_ivf.py --embeddings \\
        ~/.cache/tokensurgeon/models/gemma3-270m/model-00001-of-00003.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench_omp_solver import real_embeddings
from tokensurgeon.methods._shared.sparse_coding import omp_batches

POOL = 64  # the solver's refresh_pool


def spherical_kmeans(units: torch.Tensor, clusters: int, iterations: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit centroids (C, D) and each unit row's cluster (N,), a row and its negative counted alike."""
    generator = torch.Generator().manual_seed(seed)
    centroids = units[torch.randperm(units.shape[0], generator=generator)[:clusters]].clone()
    for _ in range(iterations):
        cosines = units @ centroids.T  # (N, C)
        assign = cosines.abs().argmax(dim=1)
        sign = cosines.gather(1, assign[:, None]).sign()  # (N, 1)
        centroids = torch.zeros_like(centroids).index_add_(0, assign, units * sign)
        centroids /= centroids.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return centroids, assign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="safetensors file with real embeddings")
    parser.add_argument("--tensor", default="model.embed_tokens.weight")
    parser.add_argument("--atoms", type=int, default=46080)
    parser.add_argument("--targets", type=int, default=1024)
    parser.add_argument("--clusters", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 8, 24, 56])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(args.seed)
    rows = real_embeddings(args.embeddings, args.tensor, args.atoms + args.targets, generator)
    atoms, targets = rows[:args.atoms].contiguous(), rows[args.atoms:].contiguous()  # (N, D), (B, D)
    norms = atoms.norm(dim=1)
    residuals = {}
    for step in args.steps:
        if step == 0:
            residuals[step] = targets
            continue
        code = omp_batches(targets, atoms, step, device="cpu", refresh=1)
        residuals[step] = targets - torch.einsum("bk,bkd->bd", code.coefficients, atoms[code.indices])
    print(f"N={args.atoms} D={atoms.shape[1]} targets={args.targets}, exact top-{POOL} pools against IVF pools")
    print(f"{'clusters':>8} {'step':>5} {'probed':>7} {'searched':>9} {'recall':>7} {'best first':>10}")
    units = atoms / norms[:, None].clamp_min(1e-12)
    files = {}  # clusters -> (centroids (C, D), each atom's cluster (N,), each cluster's longest atom (C,))
    for clusters in args.clusters:
        centroids, assign = spherical_kmeans(units, clusters, 10, args.seed)
        files[clusters] = centroids, assign, torch.zeros(clusters).scatter_reduce(0, assign, norms, "amax")
    for step, residual in residuals.items():
        exact = (residual @ atoms.T).abs()  # (B, N), once per step for every inverted file
        truth = exact.topk(POOL, dim=1).indices
        for clusters, (centroids, assign, longest) in files.items():
            scores = (residual @ centroids.T).abs() * longest  # (B, C)
            for probed in (clusters // 32, clusters // 16, clusters // 8):
                allowed = torch.zeros(len(residual), clusters, dtype=torch.bool)
                allowed.scatter_(1, scores.topk(probed, dim=1).indices, True)
                searched = allowed[:, assign]  # (B, N)
                pool = exact.masked_fill(~searched, -1.0).topk(POOL, dim=1).indices
                hits = (pool.unsqueeze(2) == truth.unsqueeze(1)).any(dim=2).float().mean()
                first = (pool[:, 0] == truth[:, 0]).float().mean()
                print(f"{clusters:>8} {step:>5} {probed:>7} {searched.float().mean():>9.3f} {hits:>7.3f} "
                      f"{first:>10.3f}")


if __name__ == "__main__":
    main()
