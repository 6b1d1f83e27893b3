"""Auxiliary spaces: vectors for token strings in which cosine similarity means "similar token".

FOCUS and TokenAdapt compare a new donor token with base-vocabulary tokens in such a space. It is
the donor model's input embeddings when the donor is a model; otherwise static fastText vectors
trained (gensim) on the user's corpus tokenized with the donor tokenizer.

Small corpora are the normal case, so the fastText space is built to cover the whole vocabulary,
not just the tokens the corpus happens to contain: every token is a "word" spelled by its
canonical bytes (GPT-2's printable byte alphabet, so partial UTF-8 and every tokenizer scheme
spell alike), min_count is 1, and a token the corpus never shows gets the mean of its character
n-grams that the corpus did show. Only n-grams seen in training are used (unseen hash buckets
hold random initial values); a token with too few seen n-grams has no vector, and the caller
falls back to the subword mean.

Trained vectors are cached under ``~/.cache/tokensurgeon/aux/<sha256>`` keyed by the corpus
bytes, the donor tokenizer and the training parameters; training is single-threaded and seeded,
so a cached and a fresh run give the same vectors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ...errors import MethodError
from ...runtime.cache import cache_root
from ...runtime.matmul import fast_selection_dtype
from ...runtime.outdir import atomic_directory
from ...vocab import Vocabulary, gpt2_byte_decoder

_CACHE_FORMAT = 1


@dataclass(frozen=True)
class FastTextParams:
    """Training parameters of the corpus space (gensim FastText; skip-gram suits small corpora).

    The defaults were chosen on pair P2 (docs/methods/focus.md): a 32-wide space, 3 negatives and 5
    epochs at twice gensim's learning rate scored as well as 100 wide, 5 negatives and 10 epochs, in
    a quarter of the training time (one worker: deterministic, but one core).

    Attributes:
        min_ngram_share: a token outside the training vocabulary needs at least this share of its
            character n-grams seen in training to get a vector.
    """

    dim: int = 32
    epochs: int = 5
    min_count: int = 1
    min_n: int = 3
    max_n: int = 6
    window: int = 5
    negative: int = 3
    sample: float = 1e-3
    alpha: float = 0.05
    skipgram: bool = True
    buckets: int = 500_000
    min_ngram_share: float = 0.5


@dataclass
class AuxiliarySpace:
    """A lookup from canonical token bytes to unit vectors.

    ``vectors_for`` returns (n, d) unit rows and an (n,) bool mask of the tokens that have a
    meaningful vector (rows without one are zero), plus (n,) bool "seen" for tokens the space
    learned directly (donor model rows, or corpus tokens) as opposed to from n-grams.
    """

    kind: str
    vectors_for: Callable[[list[bytes | None]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    info: dict[str, Any]


def most_similar(targets: torch.Tensor, candidates: torch.Tensor, k: int, device: str | torch.device,
                 block: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, cosine) of each target's k most similar candidates, both (b, k), a block of targets at a time.

    targets (M, d) and candidates (N, d) are unit rows. Where bf16 multiplies faster than float32
    (``fast_selection_dtype``: ~5x on AMX CPUs, slower on some AVX512-BF16 ones) a bf16 product picks a margin of
    candidates and float32 re-ranks them, so the k found and their similarities are float32's unless
    bf16 rounding pushes a true top-k candidate below the margin (k + 32). Blocks are small so the
    (block, N) similarities stay in cache while topk reads them: 256 rows against 40k candidates ran
    1.7x faster than 1024 on a 32 MB-L3 CPU.
    """
    device = torch.device(device)
    candidates = candidates.to(device=device, dtype=torch.float32)
    ranking = candidates.to(fast_selection_dtype(device))
    k = min(k, len(candidates))
    margin = min(len(candidates), k + 32)
    for start in range(0, len(targets), block):
        rows = targets[start:start + block].to(device=device, dtype=torch.float32)  # (b, d)
        pooled = (rows.to(ranking.dtype) @ ranking.T).topk(margin, dim=1).indices  # (b, margin)
        exact = torch.bmm(candidates[pooled], rows.unsqueeze(-1)).squeeze(-1)  # (b, margin), float32
        values, order = exact.topk(k, dim=1)
        yield pooled.gather(1, order), values


def token_word(raw: bytes) -> str:
    """A token's bytes as one printable word (GPT-2's byte alphabet): the unit fastText learns."""
    return "".join(_byte_encoder()[b] for b in raw)


@lru_cache(maxsize=1)
def _byte_encoder() -> dict[int, str]:
    return {b: char for char, b in gpt2_byte_decoder().items()}


def _unit(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)


def donor_model_space(donor_vocab: Vocabulary, donor_embed: torch.Tensor) -> AuxiliarySpace:
    """The donor model's own input embeddings, looked up by canonical bytes."""
    lookup = donor_vocab.bytes_to_id()
    unit = _unit(donor_embed.float())

    def vectors_for(raws: list[bytes | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = [lookup.get(raw, -1) if raw is not None else -1 for raw in raws]
        found = torch.tensor([0 <= i < unit.shape[0] for i in ids], dtype=torch.bool)
        rows = torch.zeros(len(ids), unit.shape[1], device=unit.device)
        rows[found.to(unit.device)] = unit[[i for i in ids if 0 <= i < unit.shape[0]]]
        return rows.cpu(), found, found.clone()

    return AuxiliarySpace("donor-model", vectors_for, {"dim": unit.shape[1]})


# ==== corpus space (fastText) ====

def corpus_space(corpus: tuple[Path, ...], donor_tokenizer: Any, donor_vocab: Vocabulary, *,
                 params: FastTextParams = FastTextParams(), seed: int = 0, cache_dir: Path | None = None,
                 ) -> AuxiliarySpace:
    """fastText vectors trained on ``corpus`` tokenized by the donor tokenizer (cached)."""
    model = load_or_train(corpus, donor_tokenizer, donor_vocab, params=params, seed=seed, cache_dir=cache_dir)
    return AuxiliarySpace("fasttext", lambda raws: model.vectors_for(raws, params.min_ngram_share),
                          {"dim": params.dim, "corpus_words": len(model.words), "cache": str(model.path)})


class StaticVectors:
    """A trained fastText model reduced to what lookups need: word vectors and the seen n-gram buckets."""

    def __init__(self, path: Path, words: list[str], word_vectors: torch.Tensor, bucket_ids: torch.Tensor,
                 bucket_vectors: torch.Tensor, params: FastTextParams) -> None:
        self.path, self.words, self.params = path, words, params
        self.word_index = {word: i for i, word in enumerate(words)}
        self.word_vectors = _unit(word_vectors.float())
        self.bucket_row = {int(b): i for i, b in enumerate(bucket_ids.tolist())}
        self.bucket_vectors = bucket_vectors.float()

    def vectors_for(self, raws: list[bytes | None], min_share: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from gensim.models.fasttext import ft_ngram_hashes

        seen_at, seen_rows = [], []  # tokens the corpus holds: their trained word vectors
        owners, buckets = [], []  # other tokens: their seen n-gram buckets, averaged below
        for position, raw in enumerate(raws):
            if not raw:
                continue
            word = token_word(raw)
            index = self.word_index.get(word)
            if index is not None:
                seen_at.append(position)
                seen_rows.append(index)
                continue
            hashes = ft_ngram_hashes(word, self.params.min_n, self.params.max_n, self.params.buckets)
            known = [row for row in map(self.bucket_row.get, hashes) if row is not None]
            if known and len(known) >= min_share * len(hashes):
                owners += [position] * len(known)
                buckets += known
        rows = torch.zeros(len(raws), self.params.dim)
        for start in range(0, len(owners), 1 << 16):  # (entries, dim) gathers stay ~25 MB
            rows.index_add_(0, torch.tensor(owners[start:start + (1 << 16)], dtype=torch.long),
                            self.bucket_vectors[buckets[start:start + (1 << 16)]])
        found = torch.zeros(len(raws), dtype=torch.bool)
        found[owners] = True
        rows[found] = _unit(rows[found])  # the n-gram mean, up to a scale that cosine ignores
        seen = torch.zeros(len(raws), dtype=torch.bool)
        seen[seen_at] = True
        rows[seen_at] = self.word_vectors[seen_rows]
        return rows, found | seen, seen


def cache_key(corpus: tuple[Path, ...], donor_tokenizer: Any, params: FastTextParams, seed: int) -> str:
    """sha256 over the corpus bytes, the donor tokenizer.json, the parameters and the seed."""
    digest = hashlib.sha256()
    for path in corpus:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    digest.update(donor_tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(json.dumps({"params": asdict(params), "seed": seed, "format": _CACHE_FORMAT},
                             sort_keys=True).encode())
    return digest.hexdigest()


def default_aux_cache() -> Path:
    return cache_root() / "aux"


def load_or_train(corpus: tuple[Path, ...], donor_tokenizer: Any, donor_vocab: Vocabulary, *,
                  params: FastTextParams, seed: int, cache_dir: Path | None = None) -> StaticVectors:
    """The cached vectors for this corpus, tokenizer and parameters; trains and caches them when missing."""
    from safetensors.torch import load_file, save_file

    if not corpus:
        raise MethodError("no corpus to train auxiliary vectors on; pass --corpus FILE (text in the donor's language)")
    path = (cache_dir or default_aux_cache()) / cache_key(corpus, donor_tokenizer, params, seed)
    if not (path / "vectors.safetensors").is_file():
        sentences = tokenize_corpus(corpus, donor_tokenizer, donor_vocab)
        words, word_vectors, bucket_ids, bucket_vectors = train_fasttext(sentences, params, seed)
        with atomic_directory(path) as staging:
            save_file({"word_vectors": word_vectors, "bucket_ids": bucket_ids, "bucket_vectors": bucket_vectors},
                      staging / "vectors.safetensors")
            (staging / "words.json").write_text(json.dumps({"words": words, "params": asdict(params)}))
    tensors = load_file(path / "vectors.safetensors")
    words = json.loads((path / "words.json").read_text(encoding="utf-8"))["words"]
    return StaticVectors(path, words, tensors["word_vectors"], tensors["bucket_ids"], tensors["bucket_vectors"],
                         params)


def tokenize_corpus(corpus: tuple[Path, ...], donor_tokenizer: Any, donor_vocab: Vocabulary) -> list[list[str]]:
    """One sentence per non-empty line, each a list of token words; special tokens left out."""
    lines = [line for path in corpus for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
             if line.strip()]
    encoded = donor_tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False)
    words = {}  # token id -> its word ("" for special tokens), spelled once per id
    sentences = []
    for encoding in encoded:
        sentence = []
        for token_id in encoding.ids:
            word = words.get(token_id)
            if word is None:
                raw = donor_vocab.canonical[token_id] if token_id < donor_vocab.size else None
                word = words[token_id] = token_word(raw) if raw else ""
            if word:
                sentence.append(word)
        if sentence:
            sentences.append(sentence)
    if not sentences:
        raise MethodError(f"the corpus ({', '.join(str(p) for p in corpus)}) holds no text to train on")
    return sentences


def train_fasttext(sentences: list[list[str]], params: FastTextParams, seed: int
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train gensim FastText (one worker: deterministic); keep only the n-gram buckets training touched."""
    from gensim.models import FastText
    from gensim.models.fasttext import ft_ngram_hashes

    model = FastText(vector_size=params.dim, window=params.window, min_count=params.min_count,
                     min_n=params.min_n, max_n=params.max_n, sg=int(params.skipgram), epochs=params.epochs,
                     negative=params.negative, sample=params.sample, alpha=params.alpha, bucket=params.buckets,
                     workers=1, seed=seed)
    model.build_vocab(corpus_iterable=sentences)
    model.train(corpus_iterable=sentences, total_examples=model.corpus_count, epochs=model.epochs)
    words = list(model.wv.index_to_key)
    touched = sorted({h for word in words for h in ft_ngram_hashes(word, params.min_n, params.max_n, params.buckets)})
    bucket_ids = torch.tensor(touched, dtype=torch.long)
    bucket_vectors = torch.from_numpy(model.wv.vectors_ngrams[touched].copy()).float()
    return words, torch.from_numpy(model.wv.vectors.copy()).float(), bucket_ids, bucket_vectors


def auxiliary_space(ctx: Any, method: str, params: FastTextParams) -> AuxiliarySpace:
    """The donor model's embeddings when the donor is a model, else fastText on the corpus.

    Raises:
        MethodError: neither a donor model nor a corpus was given.
    """
    if ctx.donor_embed is not None:
        return donor_model_space(ctx.donor_vocab, ctx.donor_embed)
    if not ctx.corpus or ctx.donor_tokenizer is None:
        raise MethodError(f"{method} needs --corpus FILE (text in the donor's language) or a donor model "
                          "to build its auxiliary space")
    return corpus_space(ctx.corpus, ctx.donor_tokenizer, ctx.donor_vocab, params=params, seed=ctx.seed)


def fasttext_params(method: str, options: dict[str, Any]) -> FastTextParams:
    """FastTextParams from a method's ``--option`` values; unknown keys raise MethodError."""
    try:
        params = FastTextParams(**options)
    except TypeError as exc:
        known = ", ".join(FastTextParams.__dataclass_fields__)
        raise MethodError(f"{method}: unknown option among {sorted(options)}; auxiliary-space options are {known}"
                          ) from exc
    if min(params.dim, params.epochs, params.min_count, params.negative) < 1 or not params.alpha > 0 \
            or not 0 <= params.min_ngram_share <= 1 or not 0 <= params.sample < 1:
        raise MethodError(f"{method}: dim, epochs, min_count and negative must be at least 1, alpha positive, "
                          "min_ngram_share in [0, 1] and sample in [0, 1)")
    return params


def nearest(targets: torch.Tensor, candidates: torch.Tensor, k: int, temperature: float, device: torch.device
            ) -> list[tuple[list[int], list[float]]]:
    """Top-k candidates by cosine per target (``auxiliary.most_similar``), weighted by
    softmax(similarity / temperature)."""
    result = []
    for indices, values in most_similar(targets, candidates, k, device):
        result += list(zip(indices.tolist(), torch.softmax(values / temperature, dim=1).tolist()))
    return result
