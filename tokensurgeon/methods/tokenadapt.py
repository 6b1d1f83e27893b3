"""TokenAdapt (arXiv 2505.09738): a local estimate from the token's pieces, blended with a global one.

Local: the base rows of the token's decomposition under the base tokenizer, weighted by softmax
of (cosine of piece and token in the auxiliary space + the piece's share of the token's bytes),
so the pieces that carry the token's meaning and most of its bytes count most. Global: the top-k
base-vocabulary tokens nearest to the token in the auxiliary space, softmax-weighted by
similarity. The row is ``(1 - global_weight) * local + global_weight * global`` (the paper: 0.3).
The auxiliary space is FOCUS's (_shared/similarity.py), not an external embedding service. Tokens without
an auxiliary vector, or not valid UTF-8 on their own, get the plain subword mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ._shared.similarity import auxiliary_space, fasttext_params, nearest
from ..errors import MethodError
from .base import InitContext, InitMethod, InitResult, Provenance
from ._shared.mixing import assemble, mixable
from ._shared.pieces import piece_provenance

def local_weights(token: torch.Tensor, pieces: torch.Tensor, piece_found: torch.Tensor, piece_bytes: list[int],
                  temperature: float) -> list[float]:
    """Softmax over pieces of (cosine to the token + byte share); a piece without a vector scores 0 similarity.

    Args:
        token: (d,) unit vector; pieces: (P, d) unit rows (zero where ``piece_found`` is False).
    """
    similarity = (pieces @ token) * piece_found.float()
    share = torch.tensor(piece_bytes, dtype=torch.float32) / max(sum(piece_bytes), 1)
    return torch.softmax((similarity + share) / temperature, dim=0).tolist()


class TokenAdaptMethod(InitMethod):
    name: ClassVar[str] = "tokenadapt"
    summary: ClassVar[str] = ("similarity- and length-weighted pieces blended with nearest base tokens in an "
                              "auxiliary space (TokenAdapt)")
    needs_donor_embeddings: ClassVar[bool] = False
    inputs: ClassVar[str] = "a donor model or --corpus"
    uses_donor_embeddings: ClassVar[bool] = True  # its similarity space when the donor is a model
    upcasts_rows: ClassVar[bool] = True  # only gathered rows are upcast

    def __init__(self, global_weight: float = 0.3, top_k: int = 3, temperature: float = 1.0,
                 global_temperature: float = 0.1, **aux_options: Any) -> None:
        if not 0 <= float(global_weight) <= 1 or int(top_k) < 1 or not float(temperature) > 0 \
                or not float(global_temperature) > 0:
            raise MethodError("tokenadapt: global_weight must be in [0, 1], top_k at least 1 and temperatures positive")
        self.global_weight, self.top_k = float(global_weight), int(top_k)
        self.temperature, self.global_temperature = float(temperature), float(global_temperature)
        self.params = fasttext_params("tokenadapt", aux_options)

    def initialise(self, ctx: InitContext) -> InitResult:
        space = auxiliary_space(ctx, "tokenadapt", self.params)
        base_ids = [i for i in ctx.defined_base_ids() if ctx.base_vocab.canonical[i]]
        base_vectors, base_found, _ = space.vectors_for([ctx.base_vocab.canonical[i] for i in base_ids])
        candidates = [b for b, ok in zip(base_ids, base_found.tolist()) if ok]
        if not candidates:
            raise MethodError("tokenadapt: no base token has an auxiliary vector; the corpus is too small or "
                              "in another language")
        vectors, found, _ = space.vectors_for([ctx.donor_vocab.canonical[i] for i in ctx.new_ids])
        new_ids = ctx.new_ids
        positions = [p for p in mixable(ctx, found) if ctx.alignment.decompositions.get(new_ids[p])]
        globals_ = nearest(vectors[positions], base_vectors[base_found], self.top_k, self.global_temperature,
                           ctx.device)
        piece_lists = [ctx.alignment.decompositions[new_ids[p]] for p in positions]
        unique_pieces = sorted({i for pieces in piece_lists for i in pieces})
        piece_vectors, piece_found, _ = space.vectors_for([ctx.base_vocab.canonical[i] for i in unique_pieces])
        row_of = {piece: row for row, piece in enumerate(unique_pieces)}
        mixed = {}
        for p, pieces, (near, near_weights) in zip(positions, piece_lists, globals_):
            rows = [row_of[i] for i in pieces]
            local = local_weights(vectors[p], piece_vectors[rows], piece_found[rows],
                                  [len(ctx.base_vocab.canonical[i] or b"") for i in pieces], self.temperature)
            sources = list(pieces) + [candidates[c] for c in near]
            weights = [(1 - self.global_weight) * w for w in local] + [self.global_weight * w for w in near_weights]
            mixed[p] = (sources, weights)
        embed = assemble(ctx, ctx.base_embed, mixed)
        head = assemble(ctx, ctx.base_head, mixed) if ctx.untied else None
        provenance = [Provenance("tokenadapt", *mixed[p]) if p in mixed else piece_provenance(ctx.alignment.decompositions.get(i, ()))
                      for p, i in enumerate(new_ids)]
        return InitResult(embed, head, provenance, {"auxiliary": space.kind, **space.info})
