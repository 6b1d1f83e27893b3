"""Hypernetwork (Zero-Shot Tokenizer Transfer): a small transformer trained on the base vocabulary
predicts each new token's rows from its base pieces (see methods/_shared/hypernetwork.py).

With ``--hypernet DIR`` a network from `tokensurgeon hypernet train` is used; without, one is
trained on the spot (warm-up, plus the LM stage when ``--corpus`` is given) and cached under
``~/.cache/tokensurgeon/hypernet`` for the next donor on the same base. Tokens the network cannot
read (no decomposition, or more pieces than it takes) get subword-mean rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch

from ..config import HypernetConfig
from ..errors import MethodError
from ._shared.hypernet_store import cached_or_trained, load_hypernet
from ._shared.hypernetwork import predict
from .base import InitContext, InitMethod, InitResult, Provenance
from ._shared.pieces import piece_means, piece_provenance


class HypernetMethod(InitMethod):
    name: ClassVar[str] = "hypernet"
    summary: ClassVar[str] = ("a small transformer maps a token's base pieces to its rows, trained on the base "
                              "vocabulary (+ --corpus LM stage) (Zero-Shot Tokenizer Transfer)")
    needs_donor_embeddings: ClassVar[bool] = False

    def __init__(self, hypernet: str | None = None, **training) -> None:
        """``hypernet``: a trained network's directory; other options are HypernetConfig fields (steps, lm_steps...)."""
        fields = {f.name for f in dataclasses.fields(HypernetConfig)}
        unknown = sorted(set(training) - fields)
        if unknown:
            raise MethodError(f"hypernet: unknown options {unknown}; choose from hypernet, {', '.join(sorted(fields))}")
        if hypernet is not None and training:
            raise MethodError("hypernet: training options do not apply to a given --hypernet directory")
        self.path = Path(hypernet) if hypernet is not None else None
        self.config = HypernetConfig(**training)

    def initialise(self, ctx: InitContext) -> InitResult:
        matrices = [ctx.base_embed] + ([ctx.base_head] if ctx.untied else [])
        if self.path is not None:
            trained, where, cache_warning = load_hypernet(self.path, matrices), self.path, None
        else:
            config = dataclasses.replace(self.config, seed=self.config.seed + ctx.seed)
            trained, where, cache_warning = cached_or_trained(
                matrices, ctx.base_vocab, config, base_path=ctx.base_path, tokenizer=ctx.base_tokenizer,
                corpus=ctx.corpus, progress=(lambda _phase, done, total: ctx.progress(done, total)) if ctx.progress else None)
        net = trained.net
        pieces = [ctx.alignment.decompositions.get(i, ()) for i in ctx.new_ids]
        readable = [row for row, group in enumerate(pieces) if 0 < len(group) <= net.max_pieces]
        rows = [piece_means(m, pieces, ctx.base_mean(m)).float() for m in matrices]
        if readable:
            predicted = predict(net, matrices, [pieces[r] for r in readable])
            index = torch.tensor(readable, device=rows[0].device)
            for k, matrix_rows in enumerate(rows):
                matrix_rows[index] = predicted[:, k]
        readable_set = set(readable)
        provenance = [Provenance("hypernet", list(group)) if row in readable_set
                      else piece_provenance(group)
                      for row, group in enumerate(pieces)]
        info = {"hypernet": str(where), "heldout_error": trained.record["training"].get("heldout_error"),
                    "heldout_error_subword_mean": trained.record["training"].get("heldout_error_subword_mean")}
        if cache_warning:
            info["cache_warning"] = cache_warning
        return InitResult(rows[0], rows[1] if ctx.untied else None, provenance, info=info)
