"""WECHSEL (Minixhofer et al., NAACL 2022): cross-lingual transfer through aligned static word vectors.

For a donor tokenizer of another language. The user brings word vectors in which the two languages
share one space: one file covering both (``vectors=``, e.g. MUSE or fastText aligned vectors), or one
file per language (``source_vectors=`` for the base's language, ``target_vectors=`` for the donor's)
that a bilingual dictionary (``dictionary=``, lines "target_word source_word") aligns by orthogonal
Procrustes, as WECHSEL does. A new token, read as a word, is a softmax(similarity / temperature)-
weighted mix of its top-k nearest base tokens in that space. Tokens that are no word of the
vectors (most sub-word pieces, with plain word vectors) get the subword mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from ..errors import MethodError
from .base import InitContext, InitMethod, InitResult, Provenance
from ._shared.mixing import assemble
from ._shared.pieces import piece_provenance
from ._shared.similarity import nearest


def read_word_vectors(path: Path) -> dict[str, torch.Tensor]:
    """Word vectors in word2vec text format (an optional "count dim" header line, then "word v1 v2 ...")."""
    path = Path(path)
    if not path.is_file():
        raise MethodError(f"wechsel: vectors file {path} does not exist")
    vectors: dict[str, torch.Tensor] = {}
    dim = None
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.rstrip().split(" ")
        if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            continue
        try:
            values = torch.tensor([float(v) for v in parts[1:]])
        except ValueError as exc:
            raise MethodError(f"wechsel: {path}:{number}: not 'word v1 v2 ...' ({exc})") from exc
        if dim is None:
            dim = len(values)
        if len(values) != dim or dim == 0:
            raise MethodError(f"wechsel: {path}:{number}: {len(values)} values where earlier lines have {dim}")
        vectors.setdefault(parts[0], values)
    if not vectors:
        raise MethodError(f"wechsel: {path} holds no vectors")
    return vectors


def procrustes(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor], dictionary: Path
               ) -> dict[str, torch.Tensor]:
    """Rotate the target space onto the source space with the orthogonal map that best fits the dictionary."""
    pairs = []
    for line in Path(dictionary).read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in target and words[1] in source:
            pairs.append(words)
    if len(pairs) < 2:
        raise MethodError(f"wechsel: {dictionary} has fewer than 2 'target source' pairs found in both vectors files")
    x = torch.stack([target[t] for t, _ in pairs]).double()
    y = torch.stack([source[s] for _, s in pairs]).double()
    if x.shape[1] != y.shape[1]:
        raise MethodError(f"wechsel: the vectors files differ in dimension ({x.shape[1]} and {y.shape[1]})")
    u, _, vh = torch.linalg.svd(x.T @ y)
    rotation = (u @ vh).float()
    return {word: vector @ rotation for word, vector in target.items()}


def token_text(raw: bytes | None) -> str | None:
    """A token as a word: its text without the leading space; None for partial UTF-8 or blank tokens."""
    try:
        text = raw.decode("utf-8").strip() if raw else ""
    except UnicodeDecodeError:
        return None
    return text or None


def lookup(vectors: dict[str, torch.Tensor], raws: list[bytes | None], dim: int) -> tuple[torch.Tensor, list[bool]]:
    """(n, dim) unit rows for the tokens found as words (exactly, else lower-cased), and which were found."""
    rows, found = torch.zeros(len(raws), dim), []
    for position, raw in enumerate(raws):
        text = token_text(raw)
        vector = vectors.get(text, vectors.get(text.lower())) if text else None
        found.append(vector is not None)
        if vector is not None:
            rows[position] = vector / vector.norm().clamp(min=1e-12)
    return rows, found


class WechselMethod(InitMethod):
    name: ClassVar[str] = "wechsel"
    summary: ClassVar[str] = ("softmax mix of the nearest base tokens in aligned word vectors (WECHSEL; "
                              "needs vectors=FILE, or source_vectors/target_vectors[/dictionary])")
    needs_donor_embeddings: ClassVar[bool] = False
    inputs: ClassVar[str] = "--option vectors=FILE (or source_vectors, target_vectors)"
    upcasts_rows: ClassVar[bool] = True  # only gathered rows are upcast

    def __init__(self, vectors: str | None = None, source_vectors: str | None = None,
                 target_vectors: str | None = None, dictionary: str | None = None, top_k: int = 10,
                 temperature: float = 0.1) -> None:
        if not vectors and not (source_vectors and target_vectors):
            raise MethodError("wechsel needs aligned word vectors: --option vectors=FILE, or "
                              "--option source_vectors=FILE --option target_vectors=FILE [--option dictionary=FILE]")
        if int(top_k) < 1 or not float(temperature) > 0:
            raise MethodError("wechsel: top_k must be at least 1 and temperature positive")
        self.vectors, self.source_vectors, self.target_vectors = vectors, source_vectors, target_vectors
        self.dictionary, self.top_k, self.temperature = dictionary, int(top_k), float(temperature)

    def spaces(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(source space, target space): one aligned file serves as both."""
        if self.vectors:
            shared = read_word_vectors(Path(self.vectors))
            return shared, shared
        source, target = read_word_vectors(Path(self.source_vectors)), read_word_vectors(Path(self.target_vectors))
        return source, procrustes(target, source, Path(self.dictionary)) if self.dictionary else target

    def initialise(self, ctx: InitContext) -> InitResult:
        source, target = self.spaces()
        dim = len(next(iter(source.values())))
        if len(next(iter(target.values()))) != dim:
            raise MethodError("wechsel: source and target vectors differ in dimension")
        base_ids = [i for i in ctx.defined_base_ids() if ctx.base_vocab.canonical[i]]
        base_rows, base_found = lookup(source, [ctx.base_vocab.canonical[i] for i in base_ids], dim)
        candidates = [b for b, ok in zip(base_ids, base_found) if ok]
        if not candidates:
            raise MethodError("wechsel: no base token is a word of the source vectors; wrong language or file?")
        new_rows, new_found = lookup(target, [ctx.donor_vocab.canonical[i] for i in ctx.new_ids], dim)
        positions = [p for p, ok in enumerate(new_found) if ok]
        picks = nearest(new_rows[positions], base_rows[torch.tensor(base_found)], self.top_k, self.temperature,
                        ctx.device)
        mixed = {p: ([candidates[c] for c in near], weights) for p, (near, weights) in zip(positions, picks)}
        embed = assemble(ctx, ctx.base_embed, mixed)
        head = assemble(ctx, ctx.base_head, mixed) if ctx.untied else None
        provenance = [Provenance("wechsel", *mixed[p]) if p in mixed else piece_provenance(ctx.alignment.decompositions.get(i, ()))
                      for p, i in enumerate(ctx.new_ids)]
        return InitResult(embed, head, provenance, {"aligned_words": len(target), "new_tokens_with_vectors":
                                                    len(positions)})
