"""Issue 20 item 7: the transplant audit's catch rate on planted rows and its false positives on P1 and P2.

Plants rows in a copy of the P1 donor (SmolLM2-135M, whose embedding the OMP method fits) and transplants
Gemma3-270M <- that donor; the output's report.json carries the audit. Two kinds of planted new token:

- ``cancel`` (arXiv 2601.00065's breaker tokens): two anchors (shared tokens, rare ones) get donor rows
  of twice the ordinary norm that are nearly collinear (5 degrees apart), in two of the donor's
  lowest-variance directions, where no other anchor reaches; the planted token's donor row is their
  difference scaled to an ordinary norm. OMP fits it exactly with two large coefficients of opposite sign,
  which cancel in the donor space and do not in the base space.
- ``repoint``: a rare anchor's donor row is set to the mean of four frequent anchors' rows, and the planted
  token's donor row to that: a plausible donor row, fitted by one coefficient of 1, whose base row is
  the repointed anchor's own ordinary base row: right norm, wrong meaning.
- ``duplicate``: as repoint, but the anchor's donor row is one frequent anchor's row x1.02 (so OMP picks it
  first): two nearly collinear anchors.

Usage: OMP_NUM_THREADS=1 python bench/bench_audit.py --work /tmp/bench_audit [--method omp] [--per-kind 10]
Prints one JSON object: planted ids per kind, caught per kind, the clean rows flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MODELS = Path(os.environ.get("TOKENSURGEON_MODELS", "/root/.cache/tokensurgeon/models"))
GEMMA3, SMOLLM2 = MODELS / "gemma3-270m", MODELS / "smollm2-135m"
EMBED = "model.embed_tokens.weight"


def plant_rows(embed: torch.Tensor, alignment, vocab, per_kind: int) -> dict[str, list[int]]:
    """Plant per_kind rows of each kind into the donor embedding (float, in place); return their ids per kind.
    tests/evaluation/test_audit.py runs it on the real P1 pair too."""
    from tokensurgeon.methods._shared.pieces import is_partial_utf8

    anchors = [i for i, kind in enumerate(alignment.match) if kind in ("exact", "bytes")]
    sources = {}
    for i in anchors:
        sources.setdefault(alignment.source[i], []).append(i)
    single = [i for i in anchors if len(sources[alignment.source[i]]) == 1 and i < embed.shape[0]]
    rare = sorted(single)[-4 * per_kind:]  # the highest donor ids: rare tokens (cancel 2, repoint 1, duplicate 1)
    ordinary = [i for i in alignment.new_ids if alignment.match[i] == "new" and vocab.canonical[i]
                and not is_partial_utf8(vocab.canonical[i]) and alignment.decompositions.get(i)]
    targets = ordinary[:: len(ordinary) // (3 * per_kind)][: 3 * per_kind]
    norm = embed[anchors].norm(dim=1).median()
    centred = embed[anchors] - embed[anchors].mean(dim=0)
    directions = torch.linalg.svd(centred, full_matrices=False).Vh.flip(0)  # lowest variance first
    angle = torch.tensor(5.0).deg2rad()
    planted: dict[str, list[int]] = {"cancel": [], "repoint": [], "duplicate": []}
    for j in range(per_kind):
        token, p, q = targets[j], rare[2 * j], rare[2 * j + 1]
        v, w = directions[2 * j], directions[2 * j + 1]
        embed[p] = 2 * norm * v
        embed[q] = 2 * norm * (v * angle.cos() + w * angle.sin())
        embed[token] = norm * (embed[q] - embed[p]) / (embed[q] - embed[p]).norm()
        planted["cancel"].append(token)
    benign = sorted(single)[100:100 + 4 * per_kind]  # frequent tokens: ordinary donor rows
    for j in range(per_kind):
        token, p = targets[per_kind + j], rare[2 * per_kind + j]
        embed[p] = embed[benign[4 * j:4 * j + 4]].mean(dim=0)
        embed[token] = embed[p]
        planted["repoint"].append(token)
        token, p = targets[2 * per_kind + j], rare[3 * per_kind + j]
        embed[p] = 1.02 * embed[benign[j]]
        embed[token] = embed[p]
        planted["duplicate"].append(token)
    return planted


def plant(donor_dir: Path, out_dir: Path, per_kind: int) -> dict[str, list[int]]:
    """Write a planted copy of donor_dir into out_dir; return the planted donor ids per kind."""
    from tokensurgeon.vocab.pair import load_pair

    pair = load_pair(GEMMA3, donor_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in donor_dir.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, out_dir / item.name)
    tensors = load_file(donor_dir / "model.safetensors")
    embed = tensors[EMBED].float()
    planted = plant_rows(embed, pair.alignment, pair.donor_vocab, per_kind)
    tensors[EMBED] = embed.to(tensors[EMBED].dtype)
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_audit"))
    parser.add_argument("--method", default="omp")
    parser.add_argument("--per-kind", type=int, default=10)
    args = parser.parse_args()
    from tokensurgeon.config import TransplantConfig
    from tokensurgeon.pipeline.transplant import transplant

    donor = args.work / "smollm2-planted"
    planted = plant(SMOLLM2, donor, args.per_kind)
    out = args.work / f"p1-planted-{args.method}"
    report = transplant(TransplantConfig(base=GEMMA3, donor=donor, out=out, method=args.method, force=True))
    flagged = {token["id"]: token for token in report.audit["tokens"]}
    every = {i for ids in planted.values() for i in ids}
    print(json.dumps({
        "method": args.method, "checked": report.audit["checked"], "counts": report.audit["counts"],
        "limits": report.audit["limits"], "flagged": report.audit["flagged"],
        "caught": {kind: sum(i in flagged for i in ids) for kind, ids in planted.items()},
        "planted": {kind: {i: flagged.get(i, {}).get("reasons", []) for i in ids} for kind, ids in planted.items()},
        "planted_scores": {i: flagged[i]["scores"] for i in every if i in flagged},
        "clean_flagged": [token for i, token in flagged.items() if i not in every],
    }, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
