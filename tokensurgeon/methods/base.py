"""The interface every initialisation method implements.

A method receives the aligned vocabularies and the embedding matrices (float32 on the chosen
device, or the stored dtype for ``upcasts_rows`` methods) and returns rows for the donor tokens that
have no base counterpart, in the order of ``ctx.new_ids``. It never reads a checkpoint, writes the
output, prints, or touches copied rows: copying, padding, dtype and writing are the caller's job, so
every method gets them right for free. The only files a method reads are the ones its options or
the context name (--corpus text, word vectors, a trained network) and its own caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..runtime.memory import gathered
from ..runtime.progress import Tick
from ..vocab import Vocabulary
from ..vocab.alignment import Alignment


@dataclass
class InitContext:
    """Everything a method may use. Matrices are float32 on ``device``, except for a method whose class
    sets ``upcasts_rows = True``: it gets the base (and donor) matrices in the checkpoint's own dtype
    (half the memory for bf16), upcasts the rows it gathers (``mean_rows`` and ``base_mean`` do) and
    may return its rows in that dtype (they are stored in it anyway).

    Attributes:
        base_embed: (V_base, d) the base model's input embeddings.
        base_head: (V_base, d) the base output head when untied, else None.
        donor_embed: (V_donor, d_donor) the donor model's input embeddings, when the donor is a model.
        donor_head: (V_donor, d_donor) the donor's untied output head, when it has one.
        tokenizers: the TokenizerPair (pair.py); ``base_tokenizer``/``donor_tokenizer`` load from it on first
            use, so a method that never re-tokenizes never holds a tokenizer in memory.
        base_path: the base checkpoint directory (methods that run or train against the base model).
        corpus: the user's text files (--corpus), for methods that learn from text.
        base_means: ``base_mean`` of base_embed ("embed") and base_head ("head"), where the caller already has it
            or once it was asked for.
    """

    alignment: Alignment
    base_vocab: Vocabulary
    donor_vocab: Vocabulary
    base_embed: torch.Tensor
    base_head: torch.Tensor | None
    donor_embed: torch.Tensor | None
    donor_head: torch.Tensor | None
    device: torch.device
    seed: int = 0
    progress: Tick | None = None
    tokenizers: Any = None
    base_path: Path | None = None
    corpus: tuple[Path, ...] = ()
    base_means: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def base_tokenizer(self) -> Any:
        return None if self.tokenizers is None else self.tokenizers.base_tokenizer

    @property
    def donor_tokenizer(self) -> Any:
        return None if self.tokenizers is None else self.tokenizers.donor_tokenizer

    @property
    def new_ids(self) -> list[int]:
        return self.alignment.new_ids

    @property
    def untied(self) -> bool:
        return self.base_head is not None

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from ``seed``: the same draws on every device."""
        return torch.Generator(device="cpu").manual_seed(self.seed)

    def defined_base_ids(self) -> list[int]:
        """Base ids the tokenizer defines: statistics over rows leave padding rows out."""
        rows = self.base_embed.shape[0]
        return [i for i in self.base_vocab.defined_ids() if i < rows]

    def base_mean(self, matrix: torch.Tensor) -> torch.Tensor:
        """The mean of the matrix's defined rows; base_embed's and base_head's are computed once."""
        role = "embed" if matrix is self.base_embed else "head" if matrix is self.base_head else None
        if role is None:
            return mean_rows(matrix, self.defined_base_ids())
        if role not in self.base_means:
            self.base_means[role] = mean_rows(matrix, self.defined_base_ids())
        return self.base_means[role]


def gather_rows(matrix: torch.Tensor, ids: list[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    """matrix[ids] in ``dtype`` (default: at least float32), read in row order (``checkpoint.gathered``): no
    stored-dtype copy of all the rows beside the float32 one, and at most one block of a mapped matrix resident."""
    out = torch.empty(len(ids), matrix.shape[1], dtype=dtype or torch.promote_types(matrix.dtype, torch.float32),
                      device=matrix.device)
    for positions, rows in gathered(matrix, ids):
        out[positions] = rows.to(out.dtype)
    return out


def weighted_rows(matrix: torch.Tensor, sources: list[list[int]] | torch.Tensor,
                  weights: list[list[float]] | torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Per row, the weighted sum of ``matrix`` rows (float32): (len(sources), d).

    A block of rows at a time, as a sparse (block, used rows) matrix times the rows it uses (read in row
    order, upcast only those): no (entries, d) gathered copy, which mixes of many rows (focus's sparsemax,
    omp's k=64 codes) would make huge. ``sources``/``weights`` are ragged lists, or (n, k) tensors for
    fixed-size codes: 200k OMP codes as Python lists would take ~1 GB.
    """
    rows = torch.zeros(len(sources), matrix.shape[1], dtype=torch.float32, device=matrix.device)
    for start in range(0, len(sources), block):
        groups, scales = sources[start:start + block], weights[start:start + block]
        if isinstance(groups, torch.Tensor):
            flat, values = groups.flatten().long().cpu(), scales.flatten().float().cpu()
            counts = torch.full((len(groups),), groups.shape[1], dtype=torch.long)
        else:
            flat = torch.tensor([i for group in groups for i in group], dtype=torch.long)
            values = torch.tensor([w for group in scales for w in group], dtype=torch.float32)
            counts = torch.tensor([len(group) for group in groups], dtype=torch.long)
        if not len(flat):
            continue
        used, column = flat.unique(return_inverse=True)
        owner = torch.repeat_interleave(counts)
        mix = torch.sparse_coo_tensor(torch.stack([owner, column]), values, size=(len(groups), len(used)),
                                      check_invariants=True).coalesce()  # repeats add up
        used_rows = gather_rows(matrix, used.tolist()).float()
        rows[start:start + len(groups)] = torch.sparse.mm(mix.to(matrix.device), used_rows)
    return rows


def mean_rows(matrix: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Mean of the given rows in (at least) float32, a block at a time: no full-size temporary copy."""
    total = torch.zeros(matrix.shape[1], dtype=torch.promote_types(matrix.dtype, torch.float32),
                        device=matrix.device)
    for _, rows in gathered(matrix, ids):
        total += rows.to(total.dtype).sum(dim=0)
    return total / max(len(ids), 1)


FALLBACK_PATH = "fallback-mean"  # a token the base vocabulary cannot spell: the mean row


@dataclass
class Provenance:
    """How one new row was made: the path taken and the base (or anchor) ids it mixes.

    residual: for a method that approximates a target (omp: the donor row), how much of it was left
    unexplained, relative to the target's norm; the report lists the worst tokens. sources and weights are
    lists, or 1-D arrays where a method makes very many (omp: rows of one code array).
    """

    path: str
    sources: Sequence[int] = field(default_factory=list)
    weights: Sequence[float] = field(default_factory=list)
    residual: float | None = None


@dataclass
class InitResult:
    """Rows for ``ctx.new_ids``: embed (n_new, d), head (n_new, d) when untied, one provenance each.

    float32, or the base matrices' dtype for a method with ``upcasts_rows`` (see InitContext).
    ``info``: what the report should record about the run (e.g. the trained artefact a method used).
    """

    embed: torch.Tensor
    head: torch.Tensor | None
    provenance: list[Provenance]
    info: dict[str, Any] = field(default_factory=dict)


class InitMethod:
    """A named initialisation method; its constructor takes its options as keywords. Every method
    subclasses this, sets ``name`` and ``summary``, and overrides the flags it needs.

    Flags:
        needs_donor_embeddings: the method cannot run from a donor tokenizer alone.
        uses_donor_embeddings: it works from a donor tokenizer alone but gets the donor model's
            embeddings when the donor is a model.
        upcasts_rows: it gets the matrices in the checkpoint's dtype and upcasts only the rows it
            gathers (see InitContext).
        inputs: what it needs beyond base and donor tokenizer, as ``methods`` lists it (a method that
            needs the donor's embeddings needs a donor model).
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_donor_embeddings: ClassVar[bool] = False
    uses_donor_embeddings: ClassVar[bool] = False
    upcasts_rows: ClassVar[bool] = False
    inputs: ClassVar[str] = "-"

    @classmethod
    def needs(cls) -> str:
        """What the method needs beyond the base checkpoint and the donor tokenizer."""
        return "a donor model" if cls.needs_donor_embeddings else cls.inputs

    def initialise(self, ctx: InitContext) -> InitResult:
        raise NotImplementedError
