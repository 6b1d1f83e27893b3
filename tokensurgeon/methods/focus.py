"""FOCUS (Dobler & de Melo, arXiv 2305.14481): a new token is a sparse convex mix of shared tokens.

Each new donor token is compared, by cosine in an auxiliary space (_shared/similarity.py: the donor model's
embeddings, or fastText trained on --corpus), with the tokens both vocabularies share; sparsemax
of those similarities picks a handful of them, and the same weights mix their base rows. Unlike
the original, no token ever gets a random row: tokens without an auxiliary vector, and tokens
that are not valid UTF-8 on their own (rarely trained, easily mis-placed), get the subword mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ._shared.similarity import auxiliary_space, fasttext_params, most_similar
from ..errors import MethodError
from ._shared.sparsemax import sparsemax
from .base import InitContext, InitMethod, InitResult, Provenance
from ._shared.mixing import assemble, mixable, shared_anchors
from ._shared.pieces import piece_provenance

def sparse_mix(targets: torch.Tensor, anchors: torch.Tensor, top_k: int, device: torch.device,
               temperature: float = 1.0) -> list[tuple[list[int], list[float]]]:
    """Sparsemax of cosine similarity to the anchors, per target: (anchor positions, weights).

    Args:
        targets: (M, d) unit vectors; anchors: (N, d) unit vectors.
        top_k: candidates per target (``auxiliary.most_similar``); sparsemax over them equals sparsemax
            over all N unless all k get weight.
        temperature: similarities are divided by it; below 1 makes the mix sparser (FOCUS: 1).
    """
    result = []
    for candidates, similarity in most_similar(targets, anchors, top_k, device):
        weights = sparsemax(similarity / temperature)
        # support first, in anchor order: unused candidates sort past every anchor position
        keys = torch.where(weights > 0, candidates, len(anchors))
        keys, order = keys.sort(dim=1)
        weights = weights.gather(1, order)
        sizes = (keys < len(anchors)).sum(dim=1).tolist()
        for row_indices, row_weights, size in zip(keys.tolist(), weights.tolist(), sizes):
            result.append((row_indices[:size], row_weights[:size]))
    return result


class FocusMethod(InitMethod):
    name: ClassVar[str] = "focus"
    summary: ClassVar[str] = ("sparsemax mix of shared tokens, by similarity in the donor model or fastText "
                              "on --corpus (FOCUS)")
    needs_donor_embeddings: ClassVar[bool] = False
    inputs: ClassVar[str] = "a donor model or --corpus"
    uses_donor_embeddings: ClassVar[bool] = True  # its similarity space when the donor is a model
    upcasts_rows: ClassVar[bool] = True  # only gathered rows are upcast

    def __init__(self, top_k: int = 64, temperature: float = 0.1, **aux_options: Any) -> None:
        if int(top_k) < 1 or not float(temperature) > 0:
            raise MethodError(f"focus: top_k must be at least 1 and temperature positive, got {top_k}, {temperature}")
        self.top_k, self.temperature = int(top_k), float(temperature)
        self.params = fasttext_params("focus", aux_options)

    def initialise(self, ctx: InitContext) -> InitResult:
        space = auxiliary_space(ctx, "focus", self.params)
        anchor_raws, anchor_base = shared_anchors(ctx)
        anchor_vectors, anchor_found, _ = space.vectors_for(anchor_raws)
        anchor_base = [b for b, ok in zip(anchor_base, anchor_found.tolist()) if ok]
        if not anchor_base:
            raise MethodError("focus: no shared token has an auxiliary vector; the corpus is too small or "
                              "in another language")
        anchor_vectors = anchor_vectors[anchor_found]
        vectors, found, seen = space.vectors_for([ctx.donor_vocab.canonical[i] for i in ctx.new_ids])
        positions = mixable(ctx, found)
        mixes = sparse_mix(vectors[positions], anchor_vectors, self.top_k, ctx.device, self.temperature)
        mixed = {p: ([anchor_base[a] for a in anchors], weights) for p, (anchors, weights) in zip(positions, mixes)}
        embed = assemble(ctx, ctx.base_embed, mixed)
        head = assemble(ctx, ctx.base_head, mixed) if ctx.untied else None
        provenance = [
            Provenance("focus" if seen[p] else "focus-ngrams", *mixed[p]) if p in mixed else piece_provenance(ctx.alignment.decompositions.get(i, ()))
            for p, i in enumerate(ctx.new_ids)
        ]
        return InitResult(embed, head, provenance, {"auxiliary": space.kind, **space.info})
